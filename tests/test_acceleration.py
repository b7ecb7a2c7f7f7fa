"""Transformer acceleration's decisions off CUDA (the GPU side is measured by the benchmarks)."""

import torch

from framepack.acceleration import accelerate


def test_acceleration_off_cuda_keeps_the_default_attention_and_compiles_only_when_asked(tiny_models):
    applied = accelerate(tiny_models.transformers["original"], torch.device("cpu"))
    assert applied.attention == "native" and not applied.compiled
    assert applied.notes == ["not on CUDA: default attention"]
