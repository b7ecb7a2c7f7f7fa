"""Memory mode choice: detected from GPU size, overridable, logged with its reason."""

import pytest
import torch

from framepack.memory import choose_memory_plan

CUDA = torch.device("cuda")


@pytest.mark.parametrize(
    ("total_gib", "override", "mode", "resident"),
    [
        (139.8, "auto", "high", 2),  # H200: both transformers stay on the GPU
        (79.2, "auto", "high", 1),  # H100 80 GB: one transformer at a time
        (47.5, "auto", "low", 1),
        (23.6, "auto", "low", 1),
        (5.8, "auto", "low", 1),
        (79.2, "low", "low", 1),
        (23.6, "high", "high", 1),
    ],
)
def test_choice(total_gib, override, mode, resident):
    plan = choose_memory_plan(CUDA, total_gib, override)
    assert (plan.mode, plan.resident_variants) == (mode, resident)
    assert f"{total_gib:.0f} GiB" in plan.reason
    if override != "auto":
        assert "forced by FRAMEPACK_MEMORY_MODE" in plan.reason


def test_cpu_has_no_gpu_mode():
    assert choose_memory_plan(torch.device("cpu"), None, "low").mode == "cpu"


def test_bad_override_is_rejected():
    with pytest.raises(ValueError, match="FRAMEPACK_MEMORY_MODE must be one of auto, high, low"):
        choose_memory_plan(CUDA, 80.0, "medium")
