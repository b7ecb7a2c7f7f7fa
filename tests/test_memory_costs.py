"""The GPU memory cost model: the sizes the engine plans with, from the measured constants."""

import pytest

from framepack.runtime.decoding import background_decode_fits
from framepack.runtime.memory_costs import (
    COSTS,
    GIB,
    background_decode_bytes,
    decode_bytes,
    decode_tiling,
    mid_block_mask_bytes,
    working_set_bytes,
)


def test_decode_memory_by_tiling():
    # The measured peaks with the margin; tiles do not grow with the frame, whole frames grow with its area.
    assert decode_bytes((256, 192), 544, 704) == int(2.84 * GIB * 1.15) == decode_bytes((256, 192), 832, 1920)
    assert decode_bytes(None, 544, 704) == int(16.3 * GIB * 1.15)
    assert decode_bytes(None, 272, 352) == pytest.approx(decode_bytes(None, 544, 704) / 4, rel=1e-6)
    peaks = [decode_bytes(tiling, 544, 704) for tiling in COSTS.decode_peak_544x704_gib]
    assert peaks == sorted(peaks, reverse=True)  # fastest first, each smaller than the one before


@pytest.mark.parametrize(
    ("room_gib", "size", "tiling"),
    [
        (40, (544, 704), None),  # 48 GiB GPU: whole frames
        (19, (544, 704), None),
        (18, (544, 704), (256, 192)),  # just short of a whole-frame decode
        (5.9, (544, 704), (256, 192)),  # 12 and 24 GiB GPUs
        (4.0, (544, 704), (256, 192)),  # 6 GiB
        (2.0, (544, 704), (192, 144)),  # 4 GiB
        (1.0, (544, 704), (128, 96)),
        (0.1, (544, 704), (128, 96)),  # nothing fits: the least the decode runs in
        (6.0, (208, 480), None),  # a small request's whole frames fit where a 640 one's do not
    ],
)
def test_the_decode_takes_the_fastest_tiling_that_fits(room_gib, size, tiling):
    assert decode_tiling(int(room_gib * GIB), *size) == tiling


def test_the_working_set_scales_with_the_request_size():
    widest_640 = working_set_bytes(416, 960, 9)
    assert widest_640 == COSTS.working_set_640_gib * GIB  # measured at this size
    assert working_set_bytes(544, 704, 9) < widest_640  # a narrower bucket of the same family
    assert widest_640 / 2 < working_set_bytes(208, 480, 9) < widest_640  # the fixed part stays
    assert working_set_bytes(832, 1920, 9) > 2.5 * widest_640  # four times the tokens
    assert working_set_bytes(416, 960, 18) > widest_640


def test_a_background_decode_needs_room_for_the_decode_and_the_sampling():
    needed = background_decode_bytes(544, 704)
    assert needed == int((20.8 + 4.0) * GIB * 1.15)  # the measured decode and sampling, with the margin
    assert background_decode_bytes(272, 352) == pytest.approx(needed / 4, rel=1e-6)  # scales with the area
    assert background_decode_fits(needed, 544, 704)
    assert not background_decode_fits(needed - 1, 544, 704)
    # An 80 GB H100 in high-VRAM mode has about 37 GiB left beside the models; 1080p-sized frames do not fit.
    assert background_decode_fits(37 * GIB, 544, 704)
    assert not background_decode_fits(37 * GIB, 1088, 1920)
    # At large sizes the mid-block's dense mask, quadratic in the tokens, outgrows the activations.
    assert mid_block_mask_bytes(544, 704) < COSTS.background_decode_544x704_gib * GIB
    area = 1536 * 1536 / (544 * 704)
    linear = (COSTS.background_decode_544x704_gib + COSTS.background_sampling_544x704_gib) * GIB * area * 1.15
    assert background_decode_bytes(1536, 1536) > linear
    assert background_decode_bytes(1536, 1536) == int(
        (mid_block_mask_bytes(1536, 1536) + COSTS.background_sampling_544x704_gib * GIB * area) * 1.15
    )
