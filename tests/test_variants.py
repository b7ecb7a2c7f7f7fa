"""The direction of generation of each variant: history layout, joining sections, decode windows."""

import pytest
import torch

from framepack.core.variants import VARIANTS, variant_named

ORIGINAL, F1 = VARIANTS["original"], VARIANTS["f1"]


def test_plans_come_in_generation_order():
    assert [s.video_index for s in ORIGINAL.plan_sections(4, 9)] == [3, 2, 1, 0]
    assert [s.video_index for s in F1.plan_sections(3, 9)] == [0, 1, 2]
    assert ORIGINAL.prepends and not F1.prepends


def test_decode_windows_start_with_the_history_known_before_sampling():
    original = ORIGINAL.plan_sections(4, 9)
    # New latents first (the start latent joins the last section's), then the previous section's 9.
    assert [ORIGINAL.known_decode_history(s, 9) for s in original] == [None, (9, 9), (9, 9), (10, 9)]
    assert [F1.known_decode_history(s, 7) for s in F1.plan_sections(3, 7)] == [None, (0, 7), (0, 7)]


def test_history_slices_point_at_newest_latents():
    history = torch.arange(25).view(1, 1, 25, 1, 1)
    one, two, four = ORIGINAL.context_slices()
    assert history[:, :, one].flatten().tolist() == [0]
    assert history[:, :, two].flatten().tolist() == [1, 2]
    assert history[:, :, four].flatten().tolist() == list(range(3, 19))
    one, two, four = F1.context_slices()
    assert history[:, :, one].flatten().tolist() == [24]
    assert history[:, :, two].flatten().tolist() == [22, 23]
    assert history[:, :, four].flatten().tolist() == list(range(6, 22))


def _frames(*values):
    return torch.tensor(values, dtype=torch.float32).view(1, 1, -1, 1, 1)


@pytest.mark.parametrize(("variant", "video"), [(ORIGINAL, [-1, 4, 5, 2, 3]), (F1, [-1, 2, 3, 4, 5])])
def test_sections_join_the_history_in_video_order(variant, video):
    """Two sections of two latents ([2, 3] then [4, 5]) after the start latent (-1), three zero frames."""
    start, empty = _frames(-1), torch.zeros(1, 1, 3, 1, 1)
    sections = variant.plan_sections(2, 2)
    history, generated = variant.start_history(empty, start)
    for section, latents in zip(sections, (_frames(2, 3), _frames(4, 5))):
        history, added = variant.add_section(history, latents, section, start)
        generated += added
    assert generated == 5
    assert variant.newest(history, generated).flatten().tolist() == video
    assert history.shape[2] == 8  # the zero frames stay, at the far end from the newest


def test_unknown_variant_is_rejected():
    with pytest.raises(ValueError, match="unknown model variant 'f2'"):
        variant_named("f2")


def test_a_continued_videos_latents_go_where_each_variant_looks_back():
    context, anchor, last_frame = _frames(1, 2, 3), _frames(9), _frames(4)
    forward = F1.continuation_slots(context, anchor, last_frame)
    assert torch.equal(forward.start_latent, anchor) and forward.start_context is None
    history, video_latents = F1.start_history(torch.zeros(1, 1, 19, 1, 1), forward.history_seed)
    one, two, _ = F1.context_slices()
    assert history[:, :, one].flatten().tolist() == [3] and history[:, :, two].flatten().tolist() == [1, 2]
    assert video_latents == 1  # the video's last latent: decoded with the first section, its frame left out
    inverted = ORIGINAL.continuation_slots(context, anchor, last_frame)  # the last frame alone starts it
    assert inverted.start_latent.flatten().tolist() == [4] and inverted.start_context.flatten().tolist() == [1, 2]
    assert ORIGINAL.continuation_slots(_frames(3), anchor, last_frame).start_context is None
    assert (ORIGINAL.default_video_context, F1.default_video_context) == (1, 19)
    with pytest.raises(ValueError, match="f1's start group is one latent"):
        F1.plan_sections(2, 9, start_latents=3)
