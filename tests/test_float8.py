"""FP8 mode: row-wise e4m3 layers through the real torch._scaled_mm (it runs on the CPU too), on the tiny model."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers.models import peft_lora, section_and_text

from benchmarks.measure import relative_l2
from framepack.models import all_blocks, lora
from framepack.models.float8 import (
    FP8_DTYPE,
    FP8_MAX,
    Float8Linear,
    float8_unsupported_reason,
    quantize_rows,
    quantize_transformer_blocks,
)
from framepack.runtime.acceleration import accelerate
from framepack.runtime.transformer import PackedTransformer


def test_quantize_rows_scales_each_row_to_the_e4m3_range():
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(0)) * torch.tensor([1e-3, 1, 10, 100, 0])[:, None]
    quantized, scale = quantize_rows(x)
    assert quantized.dtype == FP8_DTYPE and scale.shape == (5, 1) and scale.dtype == torch.float32
    # Every non-zero row uses the whole range; the zero row stays zero instead of dividing by zero.
    assert torch.equal(quantized.float().abs().amax(dim=1)[:4], torch.full((4,), FP8_MAX))
    assert torch.equal(quantized[4].float(), torch.zeros(64))
    # e4m3 keeps 3 mantissa bits: each element is within 2^-4 of its value relative to its row's maximum.
    error = (quantized.float() * scale - x).abs()
    assert (error <= x.abs() * 2**-4 + scale * 2**-9 + 1e-12).all()


@pytest.mark.parametrize("bias", [True, False])
def test_float8_linear_matches_the_linear_up_to_fp8_rounding(bias):
    generator = torch.Generator().manual_seed(1)
    linear = torch.nn.Linear(96, 48, bias=bias).requires_grad_(False)
    with torch.no_grad():
        linear.weight.normal_(0, 96**-0.5, generator=generator)
        if bias:
            linear.bias.normal_(0, 1, generator=generator)
    x = torch.randn(2, 37, 96, generator=generator)
    layer = Float8Linear(linear)
    out = layer(x)
    assert out.shape == (2, 37, 48) and out.dtype == torch.float32
    assert layer.weight.dtype == FP8_DTYPE and layer.weight_scale.shape == (1, 48)
    error = relative_l2(out, linear(x))
    assert 1e-3 < error < 5e-2  # quantized (not a copy of the float layer), within e4m3's few percent


def test_blocks_switch_to_fp8_except_the_adaln_layers(tiny_models):
    model = copy.deepcopy(tiny_models.transformers["original"])
    replaced = quantize_transformer_blocks(model)
    # 12 token-wise layers per double block, 5 per single block (tiny model: 2 of each).
    assert replaced == 12 * len(model.transformer_blocks) + 5 * len(model.single_transformer_blocks)
    for block in all_blocks(model):
        remaining = [name for name, m in block.named_modules() if isinstance(m, torch.nn.Linear)]
        assert remaining and all(name.split(".")[0].startswith("norm") for name in remaining)
    assert quantize_transformer_blocks(model) == 0  # idempotent
    assert isinstance(model.context_embedder.token_refiner.refiner_blocks[0].attn.to_q, torch.nn.Linear)


def test_fp8_forward_stays_close_to_the_float_forward(tiny_models):
    base = tiny_models.transformers["original"]
    model = copy.deepcopy(base)
    quantize_transformer_blocks(model)
    inputs, text, latents = section_and_text(base, torch.Generator().manual_seed(4))
    timestep, guidance = torch.tensor([700.0]), torch.tensor([10000.0])

    def velocity(m):
        runner = PackedTransformer(m)
        return runner.velocity(latents, timestep, guidance, text, runner.prepare_section(inputs, 8, 12))

    reference, fp8 = velocity(base), velocity(model)
    assert 1e-4 < relative_l2(fp8, reference) < 5e-2


def test_lora_merges_into_fp8_layers_and_restores_them_exactly(tiny_models):
    model = copy.deepcopy(tiny_models.transformers["original"])
    quantize_transformer_blocks(model)
    inputs, text, latents = section_and_text(model, torch.Generator().manual_seed(5))
    runner = PackedTransformer(model)
    prepared = runner.prepare_section(inputs, 8, 12)
    run = lambda: runner.velocity(latents, torch.tensor([700.0]), torch.tensor([10000.0]), text, prepared)  # noqa
    before, weights = run(), {k: v.clone() for k, v in model.state_dict().items()}
    layers = lora.convert_lora(peft_lora(model), model, "lora_weights")
    with lora.merged_loras(model, [(layers, 1.0)], torch.device("cpu")):
        changed = run()
        layer = layers[0]
        fp8 = model.get_submodule(layer.module)
        assert isinstance(fp8, Float8Linear)
        # The dequantised weight carries the update, up to e4m3 rounding of the sum.
        base = weights[f"{layer.module}.weight"].float() * weights[f"{layer.module}.weight_scale"].t()
        merged = fp8.weight.float() * fp8.weight_scale.t()
        assert relative_l2(merged - base, layer.factor * layer.up @ layer.down) < 0.1
    assert relative_l2(changed, before) > 1e-3
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert torch.equal(run(), before)


def test_fp8_is_refused_off_cuda_with_a_reason(tiny_models):
    model = copy.deepcopy(tiny_models.transformers["original"])
    applied = accelerate(model, torch.device("cpu"), float8=True)
    assert applied.float8_layers == 0 and "FP8 mode needs a CUDA GPU" in applied.notes[0]
    assert isinstance(model.transformer_blocks[0].attn.to_q, torch.nn.Linear)
    assert "NVIDIA GPU" in float8_unsupported_reason(torch.device("cpu"))
