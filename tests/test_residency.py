"""The residency policy: what stays on the GPU for a budget, as a pure function of sizes."""

import pytest

from framepack.residency import (
    BACKGROUND_DECODE_BYTES,
    GIB,
    WORKING_SET_640_BYTES,
    ModelSizes,
    plan_residency,
    refit,
    working_set_bytes,
)

# The real model's proportions, in GiB: 20 dual-stream blocks of 0.56, 40 single-stream blocks of 0.36, 0.8 of
# other transformer modules, a 0.46 VAE and 16.6 of encoders.
SIZES = ModelSizes(
    blocks=tuple(int(0.56 * GIB) for _ in range(20)) + tuple(int(0.36 * GIB) for _ in range(40)),
    transformer_other=int(0.8 * GIB),
    vae=int(0.46 * GIB),
    encoders=int(16.6 * GIB),
)
WORKING = 4 * GIB


def test_below_the_minimum_every_block_streams():
    plan = plan_residency(4 * GIB, SIZES, WORKING)
    assert plan.resident_blocks == 0 and not plan.background_decode and not plan.encoders_resident
    assert plan.streamed_bytes_per_forward == sum(SIZES.blocks)


def test_room_for_a_background_decode_comes_before_blocks():
    minimum = SIZES.transformer_other + WORKING + 2 * max(SIZES.blocks)
    short = plan_residency(minimum + BACKGROUND_DECODE_BYTES - 1, SIZES, WORKING)
    assert not short.background_decode and short.resident_blocks > 0  # the room goes to blocks instead
    enough = plan_residency(minimum + BACKGROUND_DECODE_BYTES, SIZES, WORKING)
    assert enough.background_decode and enough.resident_blocks == 0


def test_a_budget_holds_the_first_blocks_that_fit_beside_the_working_set_the_decode_and_two_slots():
    plan = plan_residency(12 * GIB, SIZES, WORKING)
    assert plan.background_decode and not plan.encoders_resident
    room = 12 * GIB - SIZES.transformer_other - WORKING - 2 * max(SIZES.blocks) - BACKGROUND_DECODE_BYTES
    held = sum(SIZES.blocks[: plan.resident_blocks])
    assert held <= room < held + SIZES.blocks[plan.resident_blocks]
    assert plan.streamed_bytes_per_forward == sum(SIZES.blocks) - held


def test_more_budget_never_holds_less_once_the_decode_has_its_room():
    plans = [plan_residency(gib * GIB, SIZES, WORKING) for gib in range(2, 64)]
    assert [plan.background_decode for plan in plans] == sorted(plan.background_decode for plan in plans)
    with_decode = [plan for plan in plans if plan.background_decode]
    held = [plan.resident_blocks for plan in with_decode]
    assert held == sorted(held) and held[0] == 0 and held[-1] == len(SIZES.blocks)
    streamed = [plan.streamed_bytes_per_forward for plan in with_decode]
    assert streamed == sorted(streamed, reverse=True) and streamed[-1] == 0


def test_when_every_block_fits_the_encoders_follow():
    blocks = sum(SIZES.blocks) + SIZES.transformer_other + WORKING + BACKGROUND_DECODE_BYTES
    only_blocks = plan_residency(blocks, SIZES, WORKING)
    assert only_blocks.all_blocks_resident and only_blocks.background_decode and not only_blocks.encoders_resident
    everything = plan_residency(blocks + SIZES.encoders, SIZES, WORKING)
    assert everything.encoders_resident


def test_a_larger_working_set_holds_fewer_blocks():
    small, large = (plan_residency(16 * GIB, SIZES, working * GIB) for working in (2, 8))
    assert large.resident_blocks < small.resident_blocks


@pytest.mark.parametrize("gib", [6, 24])
def test_the_decision_is_logged_in_numbers(gib):
    line = plan_residency(gib * GIB, SIZES, WORKING).describe()
    assert f"budget {gib:.1f} GiB" in line and "/60 transformer blocks resident" in line
    assert "GiB streamed per forward" in line


def test_the_working_set_scales_with_the_request_size():
    widest_640 = working_set_bytes(416, 960, 9)
    assert widest_640 == WORKING_SET_640_BYTES
    assert working_set_bytes(544, 704, 9) < widest_640  # a narrower bucket of the same family
    assert WORKING_SET_640_BYTES / 2 < working_set_bytes(208, 480, 9) < widest_640  # the fixed part stays
    assert working_set_bytes(832, 1920, 9) > 2.5 * widest_640  # four times the tokens
    assert working_set_bytes(416, 960, 18) > widest_640


def test_a_request_is_refitted_within_the_budget_with_the_encoders_where_they_are():
    exact = sum(SIZES.blocks) + SIZES.transformer_other + WORKING + BACKGROUND_DECODE_BYTES + SIZES.encoders
    everything = plan_residency(exact, SIZES, WORKING)
    assert everything.all_blocks_resident and everything.encoders_resident
    assert refit(everything, SIZES, WORKING) == everything
    larger = refit(everything, SIZES, 2 * WORKING)
    assert larger.encoders_resident and larger.budget == everything.budget
    assert larger.resident_blocks < len(SIZES.blocks)
    partial = plan_residency(16 * GIB, SIZES, WORKING)
    assert refit(partial, SIZES, WORKING) == partial
    assert refit(partial, SIZES, WORKING // 2).resident_blocks > partial.resident_blocks
    assert not refit(partial, SIZES, 3 * WORKING).background_decode  # no room left for it
