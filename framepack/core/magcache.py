"""MagCache: skip the transformer's block stack on steps where its residual is predicted to barely change.

The block stack's residual r_t (its output minus its input, over the history and noisy tokens) changes in
magnitude by a ratio that is nearly the same for every prompt and image: ||r_t|| / ||r_{t-1}||, averaged over the
tokens, was calibrated once per variant at 25 steps. Walking that table, MagCache accumulates the ratios since
the last computed step and the error |1 - accumulated ratio|; while the error stays within the threshold, at most
`max_skips` steps in a row, and the step's own ratio within `RATIO_LIMIT` of 1, the step reuses the last computed
residual instead of running the stack. The first `retention_ratio` of the steps always run.

The decision reads only the table and the settings, never the tensors, so the skip schedule (`skipped_calls`) is
known before sampling, and the speed-up measured on random weights is the one real weights get.

Exact to the reference implementation, MagCache4FramePack (Zehong-Ma/MagCache@4ae8813,
`magcache_demo_gradio.py` and `magcache_demo_gradio_f1.py`; docs/ALGORITHM.md §5.2):
- the tables below are its calibrated ratios, index 0 a placeholder for the first step;
- other step counts take the nearest table entry, rounding half to even (`step_ratios`);
- its counter counts forward calls, not steps, and starts again every section and after `steps` calls. With
  real CFG (cfg_scale > 1) the positive and negative calls therefore share one state and advance it twice per
  step, so the schedule wraps halfway through the section and a skipped call may reuse the other branch's
  residual. That is what FramePack's MagCache users run (FramePack-Studio does the same), so it is kept;
  `TeaCacheState`, by contrast, gives each branch its own state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

# Calibrated ||r_t|| / ||r_{t-1}|| at 25 steps, step 0 a placeholder (MagCache4FramePack's `mag_ratios`).
CALIBRATED_RATIOS: dict[str, tuple[float, ...]] = {
    "original": (1.0, 1.26562, 1.23438, 1.03125, 1.02344, 1.03906, 1.01562, 1.03906, 1.05469, 1.02344, 1.03906,
                 0.99609, 1.03125, 1.02344, 1.01562, 1.02344, 1.00781, 1.04688, 0.98828, 1.0, 1.00781, 0.98828,
                 0.94141, 0.94141, 0.78906),
    "f1": (1.0, 1.25781, 1.08594, 1.02344, 1.00781, 1.02344, 1.00781, 1.02344, 1.05469, 0.99609, 1.03906, 1.00781,
           1.01562, 1.00781, 1.02344, 1.01562, 0.98047, 1.05469, 0.98047, 0.96875, 1.03125, 0.97266, 0.9375,
           0.96484, 0.78516),
}  # fmt: skip
# A step whose own ratio is further than this from 1 always runs (fixed in the reference, not a setting).
RATIO_LIMIT = 0.06


@dataclass(frozen=True)
class MagCacheSettings:
    """The reference's settings; the defaults are its demo's (threshold 0.1, K 3, retention 0.2).

    Args:
        threshold: largest accumulated error |1 - product of ratios| summed since the last computed step.
        max_skips: most steps skipped in a row (the reference's K).
        retention_ratio: the first int(retention_ratio * steps) steps always run.
        ratios: a calibrated table to use instead of the variant's (read like it, at any step count).
    """

    threshold: float = 0.1
    max_skips: int = 3
    retention_ratio: float = 0.2
    ratios: tuple[float, ...] | None = None  # a table of one's own (`MagCacheCalibration.table`), else the variant's


def step_ratios(table: tuple[float, ...], steps: int) -> tuple[float, ...]:
    """The table at `steps` entries: entry j is table[round(j * (len - 1) / (steps - 1))], halves to even.

    Python's `round` rounds halves to even as the reference's `np.round` does (17 steps: 4.5 -> 4, 7.5 -> 8).
    One step takes the table's last entry.
    """
    if steps == len(table):
        return table
    if steps == 1:
        return (table[-1],)
    scale = (len(table) - 1) / (steps - 1)
    return tuple(table[round(j * scale)] for j in range(steps))


@dataclass
class MagCacheState:
    """MagCache for one section: the decision per forward call, and the residual to reuse.

    Args:
        ratios: one magnitude ratio per step (`step_ratios` of the variant's table).
        settings: threshold, K and retention ratio.
    """

    ratios: tuple[float, ...]
    settings: MagCacheSettings = MagCacheSettings()
    calls: int = 0
    accumulated_ratio: float = 1.0
    accumulated_error: float = 0.0
    accumulated_steps: int = 0
    previous_residual: torch.Tensor | None = None
    reads_modulated_input: ClassVar[bool] = False  # the decision needs no tensor

    @classmethod
    def for_variant(cls, variant: str, steps: int, settings: MagCacheSettings) -> MagCacheState:
        return cls(step_ratios(settings.ratios or CALIBRATED_RATIOS[variant], steps), settings)

    def should_compute(self, modulated: torch.Tensor | None = None) -> bool:
        """Decide for this call whether to run the block stack, advancing the state as the reference does."""
        steps, settings = len(self.ratios), self.settings
        if self.calls == 0:
            self._restart()
        compute = True
        if self.calls >= 1 and self.calls >= int(settings.retention_ratio * steps):
            ratio = self.ratios[self.calls]
            self.accumulated_ratio *= ratio
            self.accumulated_error += abs(1 - self.accumulated_ratio)
            self.accumulated_steps += 1
            compute = not (
                self.accumulated_error <= settings.threshold
                and self.accumulated_steps <= settings.max_skips
                and abs(1 - ratio) <= RATIO_LIMIT
            )
            if compute:
                self._restart()
        self.calls = (self.calls + 1) % steps
        return compute

    def _restart(self) -> None:
        self.accumulated_ratio, self.accumulated_error, self.accumulated_steps = 1.0, 0.0, 0


def skipped_calls(variant: str, steps: int, settings: MagCacheSettings, calls: int | None = None) -> list[int]:
    """The forward calls of one section (0-based; `calls` defaults to `steps`, twice that with real CFG) that
    MagCache skips."""
    state = MagCacheState.for_variant(variant, steps, settings)
    return [call for call in range(steps if calls is None else calls) if not state.should_compute()]


@dataclass
class MagCacheCalibration:
    """The reference's calibration forward as a step cache: every call runs the block stack, and from the second
    call of a section on, its residual r_t is compared with the previous call's r_{t-1}.

    Per call it records, rounded to 5 decimals as the reference prints them: the mean over tokens of
    ||r_t|| / ||r_{t-1}|| (norms over the channels; the table's entry), that ratio's standard deviation, and the
    mean cosine distance 1 - cos(r_t, r_{t-1}). `sections` holds one list of (ratio, std, cosine distance) per
    section; `table` turns them into a table for `step_ratios`.

    Args:
        steps: calls per section (steps, or twice that with real CFG).
    """

    steps: int
    sections: list[list[tuple[float, float, float]]] = field(default_factory=list)
    calls: int = 0
    reads_modulated_input: ClassVar[bool] = False
    _residual: torch.Tensor | None = None

    def should_compute(self, modulated: torch.Tensor | None = None) -> bool:
        if self.calls == 0:
            self.sections.append([])
            self._residual = None
        self.calls = (self.calls + 1) % self.steps
        return True

    @property
    def previous_residual(self) -> torch.Tensor | None:
        return self._residual

    @previous_residual.setter
    def previous_residual(self, residual: torch.Tensor) -> None:
        """Set by the transformer after each computed call: record its statistics against the previous one."""
        if self._residual is not None:
            ratio = residual.norm(dim=-1) / self._residual.norm(dim=-1)
            cosine = torch.nn.functional.cosine_similarity(residual, self._residual, dim=-1, eps=1e-8)
            stats = (ratio.mean().item(), ratio.std().item(), (1 - cosine).mean().item())
            self.sections[-1].append(tuple(round(value, 5) for value in stats))
        self._residual = residual

    def table(self) -> tuple[float, ...]:
        """A table like `CALIBRATED_RATIOS`': 1.0 for the first step, then each step's ratio averaged over the
        sections (the reference prints one section's list; FramePack-Studio keeps the last section's)."""
        complete = [section for section in self.sections if len(section) == self.steps - 1]
        if not complete:
            raise ValueError("no section was sampled to its end")
        means = [sum(section[i][0] for section in complete) / len(complete) for i in range(self.steps - 1)]
        return (1.0, *(round(mean, 5) for mean in means))
