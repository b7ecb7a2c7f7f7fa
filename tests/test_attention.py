"""The blocks' joint-attention processor with a pluggable kernel, and the FA4 kernel's fallbacks."""

import copy

import pytest
import torch
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0
from helpers.models import sdpa_attention, section_and_text
from torch._subclasses.fake_tensor import FakeTensorMode

from framepack.models import all_blocks
from framepack.models.attention import (
    JointAttnProcessor,
    flash_attention4,
    flash_attention4_unavailable,
)
from framepack.runtime.acceleration import (
    FLASH_ATTENTION_4,
    Acceleration,
    attention_unavailable,
    block_attention_modules,
    set_block_attention,
)
from framepack.runtime.transformer import PackedTransformer


def _velocity(model, seed: int) -> torch.Tensor:
    inputs, text, latents = section_and_text(model, torch.Generator().manual_seed(seed))
    packed = PackedTransformer(model)
    prepared = packed.prepare_section(inputs, latents.shape[3], latents.shape[4])
    with torch.no_grad():
        return packed.velocity(latents, torch.tensor([700.0]), torch.tensor([10000.0]), text, prepared)


@pytest.mark.parametrize("variant", ["original", "f1"])
def test_joint_processor_matches_diffusers_processor_in_every_block(tiny_models, variant):
    """Dual- and single-stream blocks, RoPE on the video tokens only, context split: the staged forward is
    bit-identical with our processor (given SDPA as its kernel) and with diffusers' own."""
    model = tiny_models.transformers[variant]
    expected = _velocity(model, seed=3)
    attentions = block_attention_modules(model)
    assert {type(attention.processor) for attention in attentions} == {HunyuanVideoAttnProcessor2_0}
    try:
        for attention in attentions:
            attention.processor = JointAttnProcessor(sdpa_attention)
        actual = _velocity(model, seed=3)
    finally:
        set_block_attention(model, None)
    assert torch.equal(actual, expected)
    assert {type(attention.processor) for attention in attentions} == {HunyuanVideoAttnProcessor2_0}
    assert torch.equal(_velocity(model, seed=3), expected)


def test_joint_processor_refuses_an_attention_mask(tiny_models):
    attention = block_attention_modules(tiny_models.transformers["original"])[0]
    hidden = torch.randn(1, 6, attention.to_q.in_features)
    context = torch.randn(1, 4, attention.add_q_proj.in_features)
    with pytest.raises(ValueError, match="no attention mask"):
        JointAttnProcessor(sdpa_attention)(attention, hidden, context, attention_mask=torch.ones(1, 10, dtype=bool))


def test_flash_attention4_has_a_shape_function_for_the_compiler():
    with FakeTensorMode():
        query = torch.empty(2, 300, 24, 128, dtype=torch.bfloat16)
        key = torch.empty(2, 280, 24, 128, dtype=torch.bfloat16)
        value = torch.empty(2, 280, 24, 64, dtype=torch.bfloat16)
        out = flash_attention4(query, key, value)
    assert out.shape == (2, 300, 24, 64) and out.dtype == torch.bfloat16 and out.is_contiguous()


def test_flash_attention4_falls_back_off_a_supported_gpu():
    assert flash_attention4_unavailable(torch.device("cpu")) == "FlashAttention 4 needs a CUDA GPU"
    assert (
        attention_unavailable(FLASH_ATTENTION_4, torch.device("cpu"), torch.float32)
        == "FlashAttention 4 needs a CUDA GPU"
    )


def test_set_block_attention_installs_and_removes_the_fa4_processor(tiny_models):
    model = tiny_models.transformers["f1"]
    try:
        set_block_attention(model, FLASH_ATTENTION_4)
        processors = [attention.processor for attention in block_attention_modules(model)]
        assert all(isinstance(p, JointAttnProcessor) and p.kernel is flash_attention4 for p in processors)
        set_block_attention(model, "_native_cudnn")
        processors = [attention.processor for attention in block_attention_modules(model)]
        assert all(
            type(p) is HunyuanVideoAttnProcessor2_0 and p._attention_backend == "_native_cudnn" for p in processors
        )
    finally:
        set_block_attention(model, None)


def test_joint_processor_traces_as_one_graph_per_block(tiny_models):
    """On the GPU the blocks compile with fullgraph=True; a graph break would make them silently run eagerly."""
    model = copy.deepcopy(tiny_models.transformers["original"])
    expected = _velocity(model, seed=6)
    for attention in block_attention_modules(model):
        attention.processor = JointAttnProcessor(sdpa_attention)
    torch._dynamo.reset()
    try:
        for block in all_blocks(model):
            block.compile(fullgraph=True, backend="eager")
        assert torch.equal(_velocity(model, seed=6), expected)
    finally:
        torch._dynamo.reset()


def test_acceleration_summary_names_skipped_kernels():
    applied = Acceleration(
        attention="_native_cudnn",
        compiled=True,
        notes=["attention flash_attention_4 skipped: flash-attn-4 is not installed"],
    )
    assert applied.summary() == (
        "attention _native_cudnn, compiled True, FP8 layers 0; "
        "attention flash_attention_4 skipped: flash-attn-4 is not installed"
    )
