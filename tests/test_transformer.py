"""The staged transformer forward against diffusers' stock forward, and the full-size architecture."""

import json

import pytest
import torch
from diffusers import HunyuanVideoFramepackTransformer3DModel
from helpers.models import section_and_text
from helpers.paths import FIXTURES

from benchmarks.random_models import FULL_TRANSFORMER
from benchmarks.reference import StockTransformer
from framepack.core.teacache import TeaCacheState
from framepack.runtime.transformer import PackedTransformer


@pytest.mark.parametrize("variant", ["original", "f1"])
def test_staged_forward_is_bit_identical_to_stock_forward(tiny_models, variant):
    model = tiny_models.transformers[variant]
    generator = torch.Generator().manual_seed(0)
    inputs, text, latents = section_and_text(model, generator)
    packed = PackedTransformer(model)
    prepared = packed.prepare_section(inputs, latents.shape[3], latents.shape[4])
    guidance = torch.tensor([10000.0])
    for sigma in (1.0, 0.6, 0.2):
        timestep = torch.tensor([sigma * 1000])
        expected = StockTransformer(model).velocity(latents, timestep, guidance, text, inputs)
        actual = packed.velocity(latents, timestep, guidance, text, prepared)
        assert actual.dtype == torch.float32
        assert torch.equal(actual, expected)


def test_teacache_skip_reuses_the_last_residual(tiny_models):
    model = tiny_models.transformers["original"]
    inputs, text, latents = section_and_text(model, torch.Generator().manual_seed(1))
    packed = PackedTransformer(model)
    prepared = packed.prepare_section(inputs, latents.shape[3], latents.shape[4])
    guidance, timestep = torch.tensor([10000.0]), torch.tensor([500.0])
    state = TeaCacheState(num_steps=3, threshold=1e9)
    computed = packed.velocity(latents, timestep, guidance, text, prepared, state)
    # Step 2 of 3 with an unreachable threshold skips; with the same input the cached residual is exact.
    skipped = packed.velocity(latents, timestep, guidance, text, prepared, state)
    assert torch.allclose(skipped, computed, atol=1e-6)
    assert state.calls == 2 and state.accumulated > 0


def test_full_size_architecture_matches_the_real_checkpoint():
    manifest = json.loads((FIXTURES / "transformer_keys.json").read_text())
    config = {k: v for k, v in manifest["config"].items() if not k.startswith("_")}
    assert FULL_TRANSFORMER == config  # what the benchmarks build is the released architecture
    with torch.device("meta"):
        model = HunyuanVideoFramepackTransformer3DModel(**config)
    actual = {name: list(t.shape) for name, t in model.state_dict().items()}
    assert actual == manifest["tensors"]
    assert sum(t.numel() for t in model.state_dict().values()) == manifest["num_parameters"]
