"""The step cache a request chose (none, TeaCache or MagCache), and its state for each CFG branch of a section.

A step cache decides, before each forward, whether the transformer's block stack runs or the last computed
residual is reused (`runtime/transformer.py`). TeaCache decides from the modulated input of the first block
(`core/teacache.py`); MagCache from a calibrated table alone (`core/magcache.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from .magcache import MagCacheSettings, MagCacheState
from .teacache import DEFAULT_THRESHOLD, TeaCacheState

STEP_CACHES = ("none", "teacache", "magcache")
BRANCHES = ("positive", "negative")


class StepCache(Protocol):
    """What the transformer asks of a step cache."""

    previous_residual: torch.Tensor | None
    reads_modulated_input: bool  # should_compute needs the first block's modulated input

    def should_compute(self, modulated: torch.Tensor | None) -> bool: ...


@dataclass(frozen=True)
class StepCacheSettings:
    """Which step cache samples a request, and its settings.

    Args:
        kind: one of `STEP_CACHES`.
        teacache_threshold: TeaCache's accumulated-distance threshold (higher skips more).
        magcache: MagCache's threshold, K and retention ratio.
    """

    kind: str = "none"
    teacache_threshold: float = DEFAULT_THRESHOLD
    magcache: MagCacheSettings = field(default_factory=MagCacheSettings)

    def branch_states(self, variant: str, steps: int) -> dict[str, StepCache | None]:
        """A fresh state per CFG branch for one section: TeaCache's are separate, MagCache's one is shared (as in
        its reference), none is None."""
        if self.kind == "teacache":
            return {branch: TeaCacheState(num_steps=steps, threshold=self.teacache_threshold) for branch in BRANCHES}
        if self.kind == "magcache":
            shared = MagCacheState.for_variant(variant, steps, self.magcache)
            return dict.fromkeys(BRANCHES, shared)
        return dict.fromkeys(BRANCHES)
