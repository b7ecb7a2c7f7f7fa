"""The latent preview: a least-squares map from latent channels to RGB, fitted on the start image."""

import torch

from framepack.serving.previews import fit_latent_to_rgb, latent_preview


def test_the_fitted_map_recovers_a_linear_relation_and_tiles_the_frames():
    generator = torch.Generator().manual_seed(0)
    latent = torch.randn(1, 16, 1, 6, 10, generator=generator)
    truth = torch.randn(17, 3, generator=generator) * 0.1
    rgb = latent[0, :, 0].permute(1, 2, 0) @ truth[:-1] + truth[-1]  # (6, 10, 3) in about [-1, 1]
    image = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    image = image.repeat_interleave(8, 0).repeat_interleave(8, 1)  # the 8x larger picture the latent encodes
    projection = fit_latent_to_rgb(latent, image)
    assert projection.shape == (17, 3)
    assert torch.allclose(projection, truth, atol=2e-2)

    frames = torch.cat([latent, latent * 0], dim=2)  # two frames
    picture = latent_preview(frames, projection)
    assert picture.shape == (6, 20, 3) and picture.dtype == torch.uint8
    assert (picture[:, :10].int() - image[::8, ::8].int()).abs().max() <= 6  # the first frame, as the image
