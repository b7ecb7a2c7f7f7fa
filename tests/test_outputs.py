"""The MP4 of a generation: F1's frames are encoded while later sections sample, into the same file."""

from __future__ import annotations

import pytest
import torch
from helpers.requests import tiny_request

from benchmarks.measure import read_mp4_frames
from framepack.core.progress import ProgressReporter
from framepack.core.request import build_request
from framepack.core.video import read_mp4_metadata
from framepack.runtime.outputs import open_mp4
from framepack.runtime.pipeline import GenerationOptions, generate

# 4 sections of 3 latents at 48x32, 2 steps.
REQUEST = tiny_request()


def _quiet() -> ProgressReporter:
    return ProgressReporter(4, 2, write=lambda line: None)


@pytest.mark.parametrize("background", [False, True])
def test_f1_hands_over_final_frames_while_later_sections_sample(tiny_models, background):
    request = build_request({**REQUEST, "model_variant": "f1"})
    progress = _quiet()
    handed: list[tuple[int, torch.Tensor]] = []
    result = generate(
        request,
        tiny_models,
        progress=progress,
        options=GenerationOptions(
            background_decode=background, on_frames=lambda frames: handed.append((progress.steps_done, frames))
        ),
    )
    streamed = torch.cat([frames for _, frames in handed])
    assert torch.equal(streamed, result.frames[: streamed.shape[0]])
    # The first section decodes 13 frames, later ones 12 more each; the last 9 wait for a next section.
    assert streamed.shape[0] == 13 + 3 * 12 - 9 and result.frames.shape[0] == 13 + 3 * 12
    assert handed[0][0] < 4 * 2  # the first frames went to the encoder before the last section's steps ended


def test_original_frames_are_final_only_at_the_end(tiny_models):
    handed: list[torch.Tensor] = []
    generate(build_request(REQUEST), tiny_models, progress=_quiet(), options=GenerationOptions(on_frames=handed.append))
    assert handed == []


@pytest.mark.parametrize("variant", ["f1", "original"])
def test_streamed_mp4_is_the_file_written_at_the_end(tiny_engine, tmp_path, variant):
    request = build_request({**REQUEST, "model_variant": variant})
    progress = _quiet()
    result = tiny_engine.generate(request, tmp_path / "streamed.mp4", progress)
    with open_mp4(request, tmp_path / "at_the_end.mp4") as video:
        video.write(result.frames)
    assert (tmp_path / "streamed.mp4").read_bytes() == (tmp_path / "at_the_end.mp4").read_bytes()
    frames, fps = read_mp4_frames(tmp_path / "streamed.mp4")
    assert frames.shape == result.frames.shape and fps == 30
    assert read_mp4_metadata(tmp_path / "streamed.mp4")["frames"] == result.frames.shape[0]
    assert "mp4" in progress.timings


def test_a_failed_generation_leaves_no_mp4(tiny_engine, tmp_path):
    class Cancelled(BaseException):
        pass

    def cancel_in_third_section(line: str) -> None:
        if line.startswith("section 3/4, step 1/"):
            raise Cancelled()

    request = build_request({**REQUEST, "model_variant": "f1"})
    with pytest.raises(Cancelled):
        tiny_engine.generate(request, tmp_path / "video.mp4", ProgressReporter(4, 2, write=cancel_in_third_section))
    assert list(tmp_path.iterdir()) == []
