"""TeaCache: skip the transformer's block stack when its modulated input barely changed (docs/ALGORITHM.md §5.1).

The decision looks at the AdaLN-modulated input of the first dual-stream block. Its relative L1 change is
mapped through a polynomial fitted for HunyuanVideo and accumulated; the block stack runs when the sum reaches
the threshold (and always on the first and last step), otherwise the last computed residual is reused.

Unlike the reference, which shares one state between the positive and negative CFG calls (so its counter
advances twice per step and the branches' residuals get mixed), each CFG branch owns a `TeaCacheState`.
With cfg_scale = 1 the two are identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

DEFAULT_THRESHOLD = 0.15
# HunyuanVideo TeaCache fit, highest power first (the reference evaluates it with np.poly1d in float64).
RESCALE_COEFFICIENTS = (733.226126, -401.131952, 67.5869174, -3.14987800, 0.0961237896)


def rescale_distance(relative_l1: float) -> float:
    """The fitted polynomial P(r), evaluated by Horner's rule in float64 like np.polyval."""
    value = 0.0
    for coefficient in RESCALE_COEFFICIENTS:
        value = value * relative_l1 + coefficient
    return value


def relative_l1(current: torch.Tensor, previous: torch.Tensor) -> float:
    """mean|current - previous| / mean|previous| in the tensors' dtype, pulled to the host."""
    return ((current - previous).abs().mean() / previous.abs().mean()).item()


@dataclass
class TeaCacheState:
    """TeaCache state of one CFG branch for one section (reset every section)."""

    num_steps: int
    threshold: float = DEFAULT_THRESHOLD
    calls: int = 0
    accumulated: float = 0.0
    previous_modulated: torch.Tensor | None = None
    previous_residual: torch.Tensor | None = None
    reads_modulated_input: ClassVar[bool] = True

    def should_compute(self, modulated: torch.Tensor) -> bool:
        """Decide for this step whether to run the block stack; updates the state as the reference does."""
        if self.calls == 0 or self.calls == self.num_steps - 1 or self.previous_residual is None:
            compute = True
            self.accumulated = 0.0
        else:
            self.accumulated += rescale_distance(relative_l1(modulated, self.previous_modulated))
            compute = self.accumulated >= self.threshold
            if compute:
                self.accumulated = 0.0
        self.previous_modulated = modulated
        self.calls = (self.calls + 1) % self.num_steps
        return compute
