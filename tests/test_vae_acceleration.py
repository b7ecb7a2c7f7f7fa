"""The VAE's copy-based causal padding is bit-identical; its compiled GroupNorm stays within float32 noise."""

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import relative_l2
from torch._dynamo.utils import counters

from framepack import vae_acceleration
from framepack.pipeline import vae_decode
from framepack.vae_acceleration import accelerate_vae, replicate_pad


@pytest.mark.parametrize("pad", [(1, 1, 1, 1, 2, 0), (0, 0, 0, 0, 2, 0), (0, 0, 0, 0, 0, 0), (2, 1, 0, 3, 1, 1)])
def test_replicate_pad_equals_f_pad(pad):
    x = torch.randn(2, 3, 5, 6, 7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(replicate_pad(x, pad), F.pad(x, pad, mode="replicate"))


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
    graphs_before = counters["stats"]["unique_graphs"]
    for frames in (3, 2):  # a second section length reuses the dynamic-shape graph
        latents = _decode_latents(stock)[:, :, :frames]
        expected = vae_decode(latents, stock)
        actual = vae_decode(latents, fast)
        assert actual.shape == expected.shape
        assert relative_l2(actual, expected) < 1e-5
    assert counters["stats"]["unique_graphs"] > graphs_before  # the compiled graph ran, not an eager fallback
