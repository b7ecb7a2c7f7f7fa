"""Memory mode choice: detected from GPU size, overridable, logged with its reason."""

import pytest
import torch

from framepack.runtime.memory import choose_memory_plan
from framepack.runtime.memory_costs import COSTS

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


@pytest.mark.parametrize(
    ("total_gib", "override", "mode", "budget"),
    [
        (23.6, "auto", "low", 22.1),  # automatic: the GPU's memory less what is reserved
        (5.8, "auto", "low", 4.3),
        (79.2, "low", "low", None),  # forced low streams everything
        (139.8, "12", "low", 12.0),
        (139.8, "6.5", "low", 6.5),
        (139.8, "64", "high", None),  # a budget that holds everything is high-VRAM mode
    ],
)
def test_budget(total_gib, override, mode, budget):
    plan = choose_memory_plan(CUDA, total_gib, override)
    assert plan.mode == mode
    assert plan.budget_gib == pytest.approx(budget) if budget is not None else plan.budget_gib is None


def test_automatic_budget_counts_the_free_memory_at_setup():
    plan = choose_memory_plan(CUDA, 23.6, "auto", free_gib=20.0)
    assert plan.budget_gib == pytest.approx(20.0 - COSTS.reserved_gib)
    assert "20.0 GiB free" in plan.reason
    assert choose_memory_plan(CUDA, 5.8, "auto", free_gib=1.0).budget_gib == 0.0  # too little: everything streams


@pytest.mark.parametrize("override", ["0", "-4", "nan", "inf", "24GB"])
def test_bad_budget_is_rejected(override):
    with pytest.raises(ValueError, match="or a budget in GiB"):
        choose_memory_plan(CUDA, 80.0, override)
