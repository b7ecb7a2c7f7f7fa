"""The residency policy: what stays on the GPU for a budget, as a pure function of sizes."""

import pytest

from framepack.residency import (
    GIB,
    WORKING_SET_640_BYTES,
    ModelSizes,
    blocks_for_working_set,
    plan_residency,
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
    assert plan.resident_blocks == 0 and not plan.vae_resident and not plan.encoders_resident
    assert plan.streamed_bytes_per_forward == sum(SIZES.blocks)


def test_a_budget_holds_the_first_blocks_that_fit_beside_the_working_set_and_two_slots():
    plan = plan_residency(12 * GIB, SIZES, WORKING)
    room = 12 * GIB - SIZES.transformer_other - WORKING - 2 * max(SIZES.blocks)
    held = sum(SIZES.blocks[: plan.resident_blocks])
    assert held <= room < held + SIZES.blocks[plan.resident_blocks]
    assert plan.streamed_bytes_per_forward == sum(SIZES.blocks) - held
    assert not plan.vae_resident  # not before every block is resident


def test_more_budget_never_holds_less():
    plans = [plan_residency(gib * GIB, SIZES, WORKING) for gib in range(2, 64)]
    held = [plan.resident_blocks for plan in plans]
    assert held == sorted(held) and held[0] == 0 and held[-1] == len(SIZES.blocks)
    streamed = [plan.streamed_bytes_per_forward for plan in plans]
    assert streamed == sorted(streamed, reverse=True) and streamed[-1] == 0


def test_when_every_block_fits_the_vae_then_the_encoders_follow():
    blocks = sum(SIZES.blocks) + SIZES.transformer_other + WORKING
    only_blocks = plan_residency(blocks, SIZES, WORKING)
    assert only_blocks.all_blocks_resident and not only_blocks.vae_resident
    with_vae = plan_residency(blocks + SIZES.vae, SIZES, WORKING)
    assert with_vae.vae_resident and not with_vae.encoders_resident
    everything = plan_residency(blocks + SIZES.vae + SIZES.encoders, SIZES, WORKING)
    assert everything.vae_resident and everything.encoders_resident


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


def test_a_request_keeps_the_setup_placement_of_the_vae_and_encoders():
    setup = plan_residency(48 * GIB, SIZES, WORKING)
    assert setup.all_blocks_resident and setup.vae_resident
    assert blocks_for_working_set(setup, SIZES, WORKING) == len(SIZES.blocks)
    assert blocks_for_working_set(setup, SIZES, 3 * WORKING) < len(SIZES.blocks)  # a larger request
    partial = plan_residency(16 * GIB, SIZES, WORKING)
    assert blocks_for_working_set(partial, SIZES, WORKING) == partial.resident_blocks
    assert blocks_for_working_set(partial, SIZES, WORKING // 2) > partial.resident_blocks
