"""The residency policy: what stays on the GPU for a budget, as a pure function of sizes."""

import pytest

from framepack.runtime.memory_costs import GIB, WIDEST_640, decode_bytes, decode_tiling
from framepack.runtime.residency import ModelSizes, blocks_for_working_set, decode_room, plan_residency

# The real model's proportions, in GiB: 20 dual-stream blocks of 0.56, 40 single-stream blocks of 0.36, 0.8 of
# other transformer modules, a 0.46 VAE and 16.6 of encoders (15.2 of them the Llama and CLIP).
SIZES = ModelSizes(
    blocks=tuple(int(0.56 * GIB) for _ in range(20)) + tuple(int(0.36 * GIB) for _ in range(40)),
    transformer_other=int(0.8 * GIB),
    vae=int(0.46 * GIB),
    encoders=int(16.6 * GIB),
    encoders_at_once=int(15.2 * GIB),
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


def test_when_every_block_fits_the_vae_then_whole_frame_decodes_then_the_encoders_follow():
    blocks = sum(SIZES.blocks) + SIZES.transformer_other + WORKING
    only_blocks = plan_residency(blocks, SIZES, WORKING)
    assert only_blocks.all_blocks_resident and not only_blocks.vae_resident
    with_vae = plan_residency(blocks + SIZES.vae, SIZES, WORKING)
    assert with_vae.vae_resident and not with_vae.encoders_resident
    whole_frames = decode_bytes(None, *WIDEST_640) - WORKING
    # Room for the encoders but not also for whole-frame decodes: the decodes come first (once per section).
    no_room_left = plan_residency(blocks + SIZES.vae + SIZES.encoders, SIZES, WORKING)
    assert not no_room_left.encoders_resident and no_room_left.encoders_visit
    everything = plan_residency(blocks + SIZES.vae + whole_frames + SIZES.encoders, SIZES, WORKING)
    assert everything.vae_resident and everything.encoders_resident and not everything.encoders_visit


@pytest.mark.parametrize(
    ("budget_gib", "visit"),
    [(4.5, False), (10.5, False), (22.5, False), (40, False), (46.5, True)],  # 6 to 48 GiB GPUs
)
def test_encoders_visit_whole_where_the_largest_fits_beside_the_held_blocks(budget_gib, visit):
    plan = plan_residency(int(budget_gib * GIB), SIZES, WORKING)
    held = sum(SIZES.blocks[: plan.resident_blocks]) + (SIZES.vae if plan.vae_resident else 0)
    assert plan.encoders_visit == visit == (SIZES.encoders_at_once <= plan.budget - held)
    assert ("on the GPU whole while called" in plan.describe()) == visit


def test_the_decode_has_the_budget_less_what_stays_on_the_gpu():
    plan = plan_residency(int(46.5 * GIB), SIZES, WORKING)
    held = plan.resident_blocks
    expected = plan.budget - sum(SIZES.blocks[:held]) - SIZES.vae
    assert decode_room(plan, SIZES, held) == expected
    assert decode_room(plan, SIZES, held - 10) > expected  # fewer blocks held, more room
    assert decode_tiling(decode_room(plan, SIZES, held), 544, 704) is None


def test_a_larger_working_set_holds_fewer_blocks():
    small, large = (plan_residency(16 * GIB, SIZES, working * GIB) for working in (2, 8))
    assert large.resident_blocks < small.resident_blocks


@pytest.mark.parametrize("gib", [6, 24])
def test_the_decision_is_logged_in_numbers(gib):
    line = plan_residency(gib * GIB, SIZES, WORKING).describe()
    assert f"budget {gib:.1f} GiB" in line and "/60 transformer blocks resident" in line
    assert "GiB streamed per forward" in line


def test_a_request_keeps_the_setup_placement_of_the_vae_and_encoders():
    setup = plan_residency(48 * GIB, SIZES, WORKING)
    assert setup.all_blocks_resident and setup.vae_resident
    assert blocks_for_working_set(setup, SIZES, WORKING) == len(SIZES.blocks)
    assert blocks_for_working_set(setup, SIZES, 6 * WORKING) < len(SIZES.blocks)  # a larger request
    partial = plan_residency(16 * GIB, SIZES, WORKING)
    assert blocks_for_working_set(partial, SIZES, WORKING) == partial.resident_blocks
    assert blocks_for_working_set(partial, SIZES, WORKING // 2) > partial.resident_blocks
