"""TeaCache rule (docs/ALGORITHM.md §5)."""

import numpy as np
import pytest
import torch

from framepack.core.teacache import RESCALE_COEFFICIENTS, TeaCacheState, rescale_distance


@pytest.mark.parametrize("r", [0.0, 0.01, 0.05, 0.1, 0.3])
def test_rescale_matches_numpy_poly1d(r):
    assert rescale_distance(r) == np.poly1d(RESCALE_COEFFICIENTS)(r)


def test_first_and_last_steps_always_compute():
    state = TeaCacheState(num_steps=4, threshold=1e9)
    base = torch.ones(1, 8, 4)
    decisions = []
    for _ in range(4):
        decisions.append(state.should_compute(base))
        state.previous_residual = torch.zeros_like(base)
    assert decisions == [True, False, False, True]
    assert state.calls == 0  # wraps for the next section


def test_large_changes_compute_small_changes_skip():
    state = TeaCacheState(num_steps=10)
    state.should_compute(torch.ones(1, 8, 4))
    state.previous_residual = torch.zeros(1, 8, 4)
    # rel L1 of 0.5 maps to P(0.5) ~ 19 >> 0.15: compute.
    assert state.should_compute(torch.full((1, 8, 4), 1.5))
    # An identical input adds P(0) ~ 0.096 < 0.15: skip, then the sum reaches 0.19: compute.
    assert not state.should_compute(torch.full((1, 8, 4), 1.5))
    assert state.should_compute(torch.full((1, 8, 4), 1.5))
