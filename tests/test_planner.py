"""Section planner against docs/ALGORITHM.md §6."""

import pytest

from framepack.core import planner


@pytest.mark.parametrize(
    ("seconds", "lws", "sections"),
    [(5.0, 9, 4), (3.0, 9, 2), (0.1, 9, 1), (60.0, 9, 50), (1.2, 3, 3), (1.6, 2, 6), (3.6, 9, 3)],
)
def test_section_count_uses_python_round(seconds, lws, sections):
    # 3 s -> round(2.5) = 2 (banker's rounding); at least one section.
    assert planner.section_count(seconds, lws) == sections


@pytest.mark.parametrize(
    ("sections", "paddings"),
    [(1, [0]), (2, [1, 0]), (4, [3, 2, 1, 0]), (5, [3, 2, 2, 1, 0]), (6, [3, 2, 2, 2, 1, 0])],
)
def test_latent_paddings(sections, paddings):
    assert planner.latent_paddings(sections) == paddings


def test_frame_counts_of_default_request():
    # 5 s at lws 9: 4 sections, 37 latents, 145 frames (4.83 s).
    assert planner.total_latent_frames(4, 9) == 37
    assert planner.pixel_frames(37) == 145
    assert planner.overlap_frames(9) == 33


def test_original_index_layout_first_section():
    first = planner.inverted_sections(4, 9)[0]
    assert first.latent_padding == 3 and not first.is_last and first.video_index == 3
    # indices split [1, 27, 9, 1, 2, 16]: pre 0, blank 1..27, latent 28..36, post 37, 2x 38-39, 4x 40..55
    assert first.latent_indices == tuple(range(28, 37))
    assert first.clean_latent_indices == (0, 37)
    assert first.clean_latent_2x_indices == (38, 39)
    assert first.clean_latent_4x_indices == tuple(range(40, 56))
    assert first.decode_latents is None


def test_original_last_section_decodes_window_pair_plus_start():
    sections = planner.inverted_sections(4, 9)
    assert [s.latent_padding for s in sections] == [3, 2, 1, 0]
    assert [s.decode_latents for s in sections] == [None, 18, 18, 19]
    last = sections[-1]
    assert last.is_last and last.video_index == 0
    assert last.latent_indices == tuple(range(1, 10)) and last.clean_latent_indices == (0, 10)


def test_original_continuation_puts_the_videos_latents_before_the_start_latent():
    plain, continued = planner.inverted_sections(4, 9), planner.inverted_sections(4, 9, start_latents=3)
    for before, after in zip(plain, continued):
        # The start group holds time indices 0, 1, 2; everything after it moves by 2.
        assert after.clean_latent_indices == (0, 1, 2, before.clean_latent_indices[1] + 2)
        assert after.latent_indices == tuple(index + 2 for index in before.latent_indices)
        assert after.clean_latent_4x_indices == tuple(index + 2 for index in before.clean_latent_4x_indices)
        assert (after.latent_padding, after.decode_latents) == (before.latent_padding, before.decode_latents)
    assert continued[-1].latent_indices == (3, 4, 5, 6, 7, 8, 9, 10, 11)  # the last section follows the video


def test_f1_index_layout():
    sections = planner.forward_sections(3, 9)
    for i, section in enumerate(sections):
        assert section.video_index == i and section.latent_padding is None
        # split [1, 16, 2, 1, 9]: start 0, 4x 1..16, 2x 17-18, 1x 19, noisy 20..28
        assert section.clean_latent_indices == (0, 19)
        assert section.clean_latent_4x_indices == tuple(range(1, 17))
        assert section.clean_latent_2x_indices == (17, 18)
        assert section.latent_indices == tuple(range(20, 29))
    assert [s.decode_latents for s in sections] == [None, 18, 18]
    assert sections[-1].is_last and not sections[0].is_last
