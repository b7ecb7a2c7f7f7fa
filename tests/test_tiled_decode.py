"""The VAE decoded tile by tile: bit-identical to `vae.decode`, with shared and known tiles decoded once."""

from __future__ import annotations

import copy

import pytest
import torch

from framepack.runtime.tiled_decode import TemporalTiling, TileDecoder, cross_fade, tile_spans

DEFAULT_TILING = TemporalTiling(tile_latents=5, stride_latents=3, blend_frames=4, stride_frames=12)


def _latents(frames: int, seed: int = 0) -> torch.Tensor:
    """Latents of 32x48 frames: small, since the decode is most of these tests' time."""
    return torch.randn(1, 16, frames, 4, 6, generator=torch.Generator().manual_seed(seed))


def _stock_decode(vae, latents: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return vae.decode(latents / vae.config.scaling_factor).sample


def test_tiling_is_read_from_the_vae(tiny_models):
    vae = copy.copy(tiny_models.vae)  # a shallow copy: its own flags, the same weights
    assert TemporalTiling.of(vae) == DEFAULT_TILING
    vae.use_framewise_decoding = False
    assert TemporalTiling.of(vae) is None


def test_tile_spans_follow_the_framewise_grid():
    assert tile_spans(18, DEFAULT_TILING) == [(0, 5), (3, 8), (6, 11), (9, 14), (12, 17), (15, 18)]
    assert tile_spans(19, DEFAULT_TILING)[-2:] == [(15, 19), (18, 19)]
    assert tile_spans(9, DEFAULT_TILING) == [(0, 5), (3, 8), (6, 9)]
    assert tile_spans(4, DEFAULT_TILING) == [(0, 4)]  # four latents or fewer decode in one piece
    assert tile_spans(18, None) == [(0, 18)]


def test_cross_fade_rounds_like_diffusers(tiny_models):
    generator = torch.Generator().manual_seed(3)
    previous, current = (torch.randn(1, 3, 9, 4, 5, generator=generator).half() for _ in range(2))
    for frames in (4, 3):  # 3 frames: weights 1/3 and 2/3, which float16 cannot hold exactly
        expected = tiny_models.vae.blend_t(previous.clone(), current.clone(), frames)
        assert torch.equal(cross_fade(previous, current, frames), expected)
    assert torch.equal(cross_fade(previous, current[:, :, :0], 4), current[:, :, :0])


@pytest.mark.parametrize("spatial_tiles", [False, True])
def test_tile_by_tile_decode_equals_vae_decode(tiny_models, spatial_tiles):
    vae = copy.copy(tiny_models.vae)
    if spatial_tiles:  # 16-pixel tiles, so the 32x48 frames are decoded in spatial tiles too
        vae.enable_tiling(
            tile_sample_min_height=16,
            tile_sample_min_width=16,
            tile_sample_stride_height=8,
            tile_sample_stride_width=8,
        )
    for frames in (4, 5, 19, 20):  # one piece; the shortest tiled; a 1-latent last tile; a 2-latent one
        latents = _latents(frames, seed=frames)
        tiles = TileDecoder(vae)
        pixels = tiles.decode(latents)
        assert pixels.shape[2] == 4 * frames - 3
        assert torch.equal(pixels, _stock_decode(vae, latents)), frames
        assert tiles.decoded == len(tile_spans(frames, tiles.tiling)) and tiles.reused == 0


def test_tiles_shared_with_the_previous_window_are_not_decoded_again(tiny_models):
    first, second = _latents(9, seed=1), _latents(9, seed=2)
    tiles = TileDecoder(tiny_models.vae)
    tiles.decode(first)
    window = torch.cat([second, first], dim=2)  # the original variant's next window: new latents first
    pixels = tiles.decode(window)
    assert torch.equal(pixels, _stock_decode(tiny_models.vae, window))
    # Tiles at 9, 12 and 15 hold first[0:5], first[3:8] and first[6:9]: the first window's three tiles.
    assert (tiles.decoded, tiles.reused) == (3 + 3, 3)


def test_known_tiles_of_the_next_window_are_decoded_ahead(tiny_models):
    previous, new = _latents(9, seed=3), _latents(10, seed=4)  # the last window: start latent + 9 new latents
    tiles = TileDecoder(tiny_models.vae)
    tiles.prefetch(19, 10, previous)
    assert tiles.prefetched == tiles.decoded == 3  # tiles (12, 17), (15, 19) and (18, 19)
    window = torch.cat([new, previous], dim=2)
    assert torch.equal(tiles.decode(window), _stock_decode(tiny_models.vae, window))
    assert (tiles.decoded, tiles.reused) == (3 + 4, 3)
    tiles.prefetch(19, 10, previous)  # kept from the decode: nothing to decode again
    assert tiles.decoded == 7
    tiles.clear()
    assert tiles.decode(window) is not None and tiles.reused == 3
