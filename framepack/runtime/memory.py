"""The memory mode: high VRAM (every model resident on the GPU), low VRAM (weights stream from host memory within
a budget) or the CPU, as a pure function of the GPU's memory and an override
(`FRAMEPACK_MEMORY_MODE=auto|high|low|<GiB>`, `config.EngineConfig.memory_mode`), and the size a request plans
with. `auto` below the high-VRAM threshold budgets the GPU's free memory at setup less a reserve
(`memory_costs.py` holds both); `low` streams everything, the least memory the engine runs in. `placement.py`
applies the plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config import ENV, MEMORY_MODES, memory_budget_gib
from ..core.planner import bucket_table
from .memory_costs import COSTS

if TYPE_CHECKING:
    import torch

MEMORY_MODE_ENV = ENV["memory_mode"]


@dataclass(frozen=True)
class MemoryPlan:
    """mode: "cpu", "high" or "low"; resident_variants: how many transformers may stay on the GPU at once;
    budget_gib (low mode): the GPU memory to fill with resident weights (`residency.py`), None to stream all."""

    mode: str
    reason: str
    resident_variants: int = 1
    budget_gib: float | None = None


def choose_memory_plan(
    device: torch.device, total_gib: float | None, override: str = "auto", free_gib: float | None = None
) -> MemoryPlan:
    """Pick the memory mode for a device with `total_gib` of memory, `free_gib` of it free (None on the CPU;
    free defaults to the total)."""
    budget = memory_budget_gib(override)
    if override not in MEMORY_MODES and budget is None:
        raise ValueError(
            f"{MEMORY_MODE_ENV} must be one of {', '.join(MEMORY_MODES)} or a budget in GiB, got {override!r}"
        )
    if device.type != "cuda":
        return MemoryPlan("cpu", "no GPU: everything runs on the CPU", resident_variants=2)
    both = 2 if total_gib is not None and total_gib >= COSTS.both_variants_min_gib else 1
    if budget is not None:
        if budget >= COSTS.high_vram_min_gib:
            return MemoryPlan(
                "high", f"budget {budget:g} GiB >= {COSTS.high_vram_min_gib:.0f} GiB: all models resident"
            )
        return MemoryPlan("low", f"budget {budget:g} GiB from {MEMORY_MODE_ENV}", budget_gib=budget)
    if override != "auto":
        return MemoryPlan(
            override,
            f"forced by {MEMORY_MODE_ENV}={override} (GPU has {total_gib:.0f} GiB)",
            both if override == "high" else 1,
        )
    if total_gib >= COSTS.high_vram_min_gib:
        return MemoryPlan(
            "high", f"GPU has {total_gib:.0f} GiB >= {COSTS.high_vram_min_gib:.0f} GiB: all models resident", both
        )
    free = total_gib if free_gib is None else min(free_gib, total_gib)
    budget = max(free - COSTS.reserved_gib, 0.0)
    return MemoryPlan(
        "low",
        f"GPU has {total_gib:.0f} GiB < {COSTS.high_vram_min_gib:.0f} GiB: budget {budget:.1f} GiB "
        f"({free:.1f} GiB free less {COSTS.reserved_gib} GiB reserved), the rest streams",
        budget_gib=budget,
    )


def request_size(request) -> tuple[int, int, int]:
    """(height, width, latent window) a request plans with: its own size, or its family's largest bucket (the
    bucket itself depends on the image's shape, known only once it is read)."""
    if request.width and request.height:
        return request.height, request.width, request.latent_window_size
    height, width = max(bucket_table(request.resolution), key=lambda bucket: bucket[0] * bucket[1])
    return height, width, request.latent_window_size
