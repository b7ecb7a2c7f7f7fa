"""MagCache's table, interpolation and skip decision, against the reference's schedules (MagCache4FramePack)."""

import pytest
import torch
from helpers.requests import tiny_request

from framepack.core.magcache import CALIBRATED_RATIOS, MagCacheSettings, MagCacheState, skipped_calls, step_ratios
from framepack.core.request import build_request
from framepack.core.step_cache import StepCacheSettings
from framepack.runtime.pipeline import generate

DEFAULTS = MagCacheSettings()  # the reference demo's: threshold 0.1, K 3, retention 0.2


def table_indices(steps: int) -> list[int]:
    """Which entry of a 25-entry table each of `steps` steps takes."""
    return [int(i) for i in step_ratios(tuple(float(i) for i in range(25)), steps)]


def test_other_step_counts_take_the_nearest_entry_rounding_halves_to_even():
    assert table_indices(25) == list(range(25))
    assert table_indices(1) == [24]  # one step: the last entry
    assert table_indices(10) == [0, 3, 5, 8, 11, 13, 16, 19, 21, 24]
    # 17 steps: 1.5 -> 2, 4.5 -> 4, 7.5 -> 8 (np.round's halves to even, not up)
    assert table_indices(17) == [0, 2, 3, 4, 6, 8, 9, 10, 12, 14, 15, 16, 18, 20, 21, 22, 24]
    assert table_indices(50)[:6] == [0, 0, 1, 1, 2, 2] and table_indices(50)[-1] == 24


@pytest.mark.parametrize(
    ("variant", "settings", "skipped"),
    [
        ("original", DEFAULTS, [5, 6, 8, 10, 11, 13, 14, 16, 17, 19, 20, 21, 23]),
        ("f1", DEFAULTS, [5, 6, 8, 10, 11, 13, 14, 15, 17, 18, 19, 21, 23]),
        ("original", MagCacheSettings(0.1, 2, 0.2), [5, 6, 8, 10, 11, 13, 14, 16, 17, 19, 20, 22]),
        ("original", MagCacheSettings(0.15, 4, 0.2), [5, 6, 8, 9, 11, 12, 13, 15, 16, 17, 19, 20, 21, 22]),
        ("f1", MagCacheSettings(0.15, 4, 0.2), [5, 6, 7, 9, 10, 11, 12, 14, 15, 16, 18, 19, 20, 21, 23]),
        ("f1", MagCacheSettings(0.1, 2, 0.25), [6, 7, 9, 10, 12, 13, 15, 16, 18, 19, 21, 23]),
    ],
)
def test_the_schedule_at_25_steps_is_the_references(variant, settings, skipped):
    assert skipped_calls(variant, 25, settings) == skipped


def test_the_first_steps_and_large_ratio_steps_always_run():
    ratios = CALIBRATED_RATIOS["original"]
    for settings in (DEFAULTS, MagCacheSettings(1.0, 10, 0.0)):
        skipped = skipped_calls("original", 25, settings)
        assert 0 not in skipped and 24 not in skipped  # the first call; the last step's ratio 0.789 is off by > 0.06
        assert all(abs(1 - ratios[call]) <= 0.06 for call in skipped)
    assert min(skipped_calls("original", 25, MagCacheSettings(1.0, 10, 0.6))) == 15  # int(0.6 * 25)
    # No error allowed: only a step whose ratio is exactly 1 (the 19th) is skipped; the comparisons are not strict.
    assert skipped_calls("original", 25, MagCacheSettings(0.0, 3, 0.2)) == [19] and ratios[19] == 1.0


def test_with_real_cfg_both_branches_share_one_counter_that_wraps_as_the_references_does():
    # 25 steps, two calls each: the counter restarts after 25 calls, halfway through the section.
    skipped = skipped_calls("original", 25, DEFAULTS, calls=50)
    assert skipped[:13] == skipped_calls("original", 25, DEFAULTS)
    assert skipped[13:] == [30, 31, 33, 35, 36, 38, 39, 41, 42, 44, 45, 46, 48]
    states = StepCacheSettings("magcache").branch_states("original", 25)
    assert states["positive"] is states["negative"]


def test_a_state_reuses_the_last_computed_residual_and_restarts_each_section():
    state = MagCacheState.for_variant("original", 25, DEFAULTS)
    decisions = [state.should_compute() for _ in range(25)]
    assert decisions == [call not in skipped_calls("original", 25, DEFAULTS) for call in range(25)]
    assert state.calls == 0  # a new section starts the table again
    assert [state.should_compute() for _ in range(25)] == decisions
    assert not MagCacheState.reads_modulated_input  # the decision needs no tensor, so no block weights are fetched


def test_teacache_gets_one_state_per_branch_and_its_threshold():
    states = StepCacheSettings("teacache", teacache_threshold=0.25).branch_states("f1", 10)
    assert states["positive"] is not states["negative"] and states["positive"].threshold == 0.25
    assert StepCacheSettings("none").branch_states("original", 10) == {"positive": None, "negative": None}


@pytest.mark.parametrize(("variant", "cfg_scale"), [("original", 1.0), ("f1", 1.0), ("original", 2.0)])
def test_a_generation_runs_the_block_stack_only_where_the_schedule_says(
    tiny_models, block_stack_runs, variant, cfg_scale
):
    inputs = tiny_request(model_variant=variant, steps=25, total_video_length_seconds=0.8, cfg_scale=cfg_scale)
    request = build_request({**inputs, "step_cache": "magcache"})
    result = generate(request, tiny_models)
    calls = 25 if cfg_scale == 1.0 else 50  # with real CFG each step calls the transformer twice
    runs = calls - len(skipped_calls(variant, 25, DEFAULTS, calls))
    assert block_stack_runs == [runs] * request.num_sections and runs in (12, 24)
    exact = generate(build_request(inputs), tiny_models)
    assert torch.isfinite(result.video_latents).all() and not torch.equal(result.video_latents, exact.video_latents)
