"""Transformer acceleration's decisions off CUDA (the GPU side is measured by the benchmarks)."""

import torch

from framepack.config import ATTENTION_CHOICES
from framepack.models.attention import JointAttnProcessor, sage_attention
from framepack.runtime.acceleration import (
    ATTENTION_PREFERENCE,
    SAGE_ATTENTION,
    Acceleration,
    _choose_attention,
    accelerate,
    attention_unavailable,
    block_attention_modules,
    set_block_attention,
)


def test_acceleration_off_cuda_keeps_the_default_attention_and_compiles_only_when_asked(tiny_models):
    applied = accelerate(tiny_models.transformers["original"], torch.device("cpu"))
    assert applied.attention == "native" and not applied.compiled
    assert applied.notes == ["not on CUDA: default attention"]


def test_sage_is_a_choice_but_never_automatic():
    assert set(ATTENTION_PREFERENCE) < set(ATTENTION_CHOICES) and SAGE_ATTENTION in ATTENTION_CHOICES
    assert SAGE_ATTENTION not in ATTENTION_PREFERENCE


def test_a_kernel_that_fails_its_probe_falls_back_to_the_automatic_choice_and_says_why(tiny_models):
    model = tiny_models.transformers["f1"]
    assert attention_unavailable(SAGE_ATTENTION, torch.device("cpu"), torch.float32) == "SageAttention needs a CUDA GPU"
    result = Acceleration()
    try:
        _choose_attention(model, torch.device("cpu"), SAGE_ATTENTION, result)
        assert result.notes[0] == "attention sage skipped: SageAttention needs a CUDA GPU"
        # The preference is then tried in order; on the CPU only SDPA's own choices can pass the probe.
        assert result.attention in ATTENTION_PREFERENCE[1:]
        assert all(note.startswith("attention ") for note in result.notes)
    finally:
        set_block_attention(model, None)  # back to diffusers' processor for the other tests


def test_sage_runs_behind_our_processor(tiny_models):
    model = tiny_models.transformers["f1"]
    set_block_attention(model, SAGE_ATTENTION)
    try:
        processors = {type(a.processor) for a in block_attention_modules(model)}
        kernels = {a.processor.kernel for a in block_attention_modules(model)}
        assert processors == {JointAttnProcessor} and kernels == {sage_attention}
    finally:
        set_block_attention(model, None)
