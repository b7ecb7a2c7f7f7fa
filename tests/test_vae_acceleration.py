"""The VAE's copy-based causal padding is bit-identical; its compiled GroupNorm stays within float32 noise."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

from benchmarks.measure import relative_l2
from framepack.runtime import vae_acceleration
from framepack.runtime.decoding import vae_decode
from framepack.runtime.vae_acceleration import (
    accelerate_vae,
    group_norm_scale_shift,
    replicate_pad,
    upsample_replicate_pad,
)


@pytest.mark.parametrize("pad", [(1, 1, 1, 1, 2, 0), (0, 0, 0, 0, 2, 0), (0, 0, 0, 0, 0, 0), (2, 1, 0, 3, 1, 1)])
def test_replicate_pad_equals_f_pad(pad):
    x = torch.randn(2, 3, 5, 6, 7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(replicate_pad(x, pad), F.pad(x, pad, mode="replicate"))


@pytest.mark.parametrize("factors", [(2, 2, 2), (1, 2, 2), (2, 3, 1)])
@pytest.mark.parametrize("frames", [1, 4])
def test_one_pass_upsampling_equals_the_upsampler(factors, frames):
    from diffusers.models.autoencoders.autoencoder_kl_hunyuan_video import HunyuanVideoUpsampleCausal3D

    upsampler = HunyuanVideoUpsampleCausal3D(3, upsample_factor=tuple(float(f) for f in factors)).eval()
    x = torch.randn(2, 3, frames, 5, 6, generator=torch.Generator().manual_seed(frames))
    pad = upsampler.conv.time_causal_padding
    with torch.no_grad():
        captured = []
        upsampler.conv.conv.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
        expected = upsampler(x)
        assert torch.equal(upsample_replicate_pad(x, factors, pad), captured[0])
        accelerate_vae(torch.nn.Sequential(upsampler))
        assert torch.equal(upsampler(x), expected)
    assert expected.shape[2:] == (1 + (frames - 1) * factors[0], 5 * factors[1], 6 * factors[2])


@pytest.mark.parametrize("shape", [(2, 8, 3, 5, 7), (1, 8, 30)])
def test_group_norm_scale_shift_equals_f_group_norm(shape):
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(shape, generator=generator, dtype=torch.float64) * 3 + 1
    weight, bias = torch.rand(8, generator=generator) + 0.5, torch.randn(8, generator=generator)
    expected = F.group_norm(x, 4, weight.double(), bias.double(), 1e-6)
    assert relative_l2(group_norm_scale_shift(x.float(), 4, weight, bias, 1e-6), expected) < 1e-6
    # A transposed view (the mid-block attention's norm) and a half-precision input, rounded once at the end.
    view = x.float().transpose(1, 2).contiguous().transpose(1, 2)
    assert relative_l2(group_norm_scale_shift(view, 4, weight, bias, 1e-6), expected) < 1e-6
    half = group_norm_scale_shift(x.half(), 4, weight.half(), bias.half(), 1e-6)
    assert half.dtype == torch.float16
    assert (
        relative_l2(half, F.group_norm(x.half().double(), 4, weight.half().double(), bias.half().double(), 1e-6)) < 1e-3
    )


def _decode_latents(vae) -> torch.Tensor:
    return torch.randn(1, vae.config.latent_channels, 3, 8, 12, generator=torch.Generator().manual_seed(1))


def test_accelerated_vae_decodes_and_encodes_bit_identically(tiny_models, monkeypatch):
    stock = tiny_models.vae
    fast = copy.deepcopy(stock)
    notes = accelerate_vae(fast)
    assert notes[0].startswith("copy-based causal padding on") and " on 0 " not in notes[0]
    latents = _decode_latents(stock)
    assert torch.equal(vae_decode(latents, fast), vae_decode(latents, stock))
    pixels = torch.rand(1, 3, 1, 64, 96, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        assert torch.equal(fast.encode(pixels).latent_dist.mean, stock.encode(pixels).latent_dist.mean)
    # Decoding really goes through replicate_pad: zero edges instead of replicated ones change the pixels.
    monkeypatch.setattr(vae_acceleration, "replicate_pad", lambda x, pad: F.pad(x, pad))
    assert not torch.equal(vae_decode(latents, fast), vae_decode(latents, stock))


def test_compiled_group_norm_matches_eager(tiny_models):
    stock = tiny_models.vae
    fast = copy.deepcopy(stock)
    notes = accelerate_vae(fast, compile_norms=True)
    assert "decoder GroupNorms compiled" in notes[-1]
    torch._dynamo.reset()  # compiled-mode tests may have built this graph already; it must be built here
    graphs_before = counters["stats"]["unique_graphs"]
    for frames in (3, 2):  # a second section length reuses the dynamic-shape graph
        latents = _decode_latents(stock)[:, :, :frames]
        expected = vae_decode(latents, stock)
        actual = vae_decode(latents, fast)
        assert actual.shape == expected.shape
        assert relative_l2(actual, expected) < 1e-5
    assert counters["stats"]["unique_graphs"] > graphs_before  # the compiled graph ran, not an eager fallback
