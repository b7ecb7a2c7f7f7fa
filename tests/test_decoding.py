"""Section decoding: in the background it overlaps the next section's sampling and gives the same video."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from helpers.requests import tiny_request

from framepack.core.progress import ProgressReporter
from framepack.core.request import build_request
from framepack.runtime import decoding
from framepack.runtime.decoding import background_decode_plan
from framepack.runtime.pipeline import GenerationOptions, generate

# 4 sections of 3 latents at 48x32, 2 steps: fast on the tiny weights.
REQUEST = tiny_request()
SECTIONS, STEPS = 4, 2


def _progress(lines: list[str] | None = None, on_write=None) -> ProgressReporter:
    def write(line: str) -> None:
        if lines is not None:
            lines.append(line)
        if on_write is not None:
            on_write(line)

    return ProgressReporter(SECTIONS, STEPS, write=write)


def _decode_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("framepack-decode")]


def test_a_vae_off_the_gpu_decodes_in_line(tiny_models):
    background, how = background_decode_plan(tiny_models.vae, 64, 96)
    assert not background and how == "after each section (the VAE is not resident on a GPU)"


@pytest.mark.parametrize("variant", ["original", "f1"])
def test_background_decode_gives_the_same_video(tiny_models, variant):
    request = build_request({**REQUEST, "model_variant": variant})
    lines: list[str] = []
    in_line = generate(request, tiny_models, progress=_progress(lines))
    assert "VAE decode: after each section (the VAE is not resident on a GPU)" in lines
    background = generate(request, tiny_models, progress=_progress(), options=GenerationOptions(background_decode=True))
    assert torch.equal(background.frames, in_line.frames)
    assert torch.equal(background.video_latents, in_line.video_latents)
    assert background.frames.shape[0] == in_line.frames.shape[0] > 0
    assert "decode_in_background" in background.timings and "decode_in_background" not in in_line.timings
    assert not _decode_threads()


def test_a_section_decodes_while_the_next_one_samples(tiny_models, monkeypatch):
    progress = _progress()
    real_decode = decoding.vae_decode
    decodes: list[dict] = []

    def decode_waiting_for_sampling(latents, vae, tiles=None):
        # Hold the decode until the main thread has finished a step of the next section (at most 60 s).
        started_at = progress.steps_done
        record = {"thread": threading.current_thread().name, "overlapped": False}
        decodes.append(record)
        if len(decodes) < SECTIONS:
            deadline = time.monotonic() + 60
            while progress.steps_done == started_at and time.monotonic() < deadline:
                time.sleep(0.01)
            record["overlapped"] = progress.steps_done > started_at
        return real_decode(latents, vae, tiles)

    monkeypatch.setattr(decoding, "vae_decode", decode_waiting_for_sampling)
    result = generate(
        build_request(REQUEST), tiny_models, progress=progress, options=GenerationOptions(background_decode=True)
    )
    assert [d["overlapped"] for d in decodes] == [True] * (SECTIONS - 1) + [False]
    assert all(d["thread"].startswith("framepack-decode") for d in decodes)
    assert result.frames.shape[0] == 4 * (SECTIONS * 3 + 1) - 3


def test_a_failed_background_decode_fails_the_generation(tiny_models, monkeypatch):
    def broken_decode(latents, vae, tiles=None):
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr(decoding, "vae_decode", broken_decode)
    lines: list[str] = []
    with pytest.raises(RuntimeError, match="decoder exploded"):
        generate(
            build_request(REQUEST),
            tiny_models,
            progress=_progress(lines),
            options=GenerationOptions(background_decode=True),
        )
    # It surfaces when the next section is handed over, not after sampling every section.
    assert not any(line.startswith("section 3/") for line in lines)
    assert not _decode_threads()


class Cancelled(BaseException):
    """Like Cog's CancelationException: a BaseException raised in the prediction's thread."""


def test_cancelling_waits_for_the_decode_in_flight(tiny_models, monkeypatch):
    real_decode = decoding.vae_decode
    finished: list[int] = []

    def slow_decode(latents, vae, tiles=None):
        time.sleep(0.5)  # still running when the cancellation arrives
        pixels = real_decode(latents, vae, tiles)
        finished.append(latents.shape[2])
        return pixels

    def cancel_in_second_section(line: str) -> None:
        if line.startswith("section 2/4, step 1/"):
            raise Cancelled()

    monkeypatch.setattr(decoding, "vae_decode", slow_decode)
    with pytest.raises(Cancelled):
        generate(
            build_request(REQUEST),
            tiny_models,
            progress=_progress(on_write=cancel_in_second_section),
            options=GenerationOptions(background_decode=True),
        )
    assert len(finished) == 1  # the first section's decode ran to its end before generate returned
    assert not _decode_threads()


@pytest.mark.parametrize(
    "variant, background, tile_line",
    [
        ("original", True, "VAE decode: 13 tiles decoded (3 ahead of their section), 6 reused"),
        ("original", False, "VAE decode: 13 tiles decoded (0 ahead of their section), 3 reused"),
        ("f1", True, "VAE decode: 14 tiles decoded (2 ahead of their section), 4 reused"),
    ],
)
def test_shared_tiles_are_decoded_once_and_the_video_is_the_same(tiny_models, variant, background, tile_line):
    # A window of 9, the default: a multiple of the VAE's tile stride of 3, so whole tiles recur.
    request = build_request(
        {**REQUEST, "model_variant": variant, "latent_window_size": 9, "total_video_length_seconds": 3.6}
    )
    reference = generate(
        request,
        tiny_models,
        progress=_progress(),
        options=GenerationOptions(background_decode=False, reuse_decoded_tiles=False),
    )
    lines: list[str] = []
    ours = generate(
        request, tiny_models, progress=_progress(lines), options=GenerationOptions(background_decode=background)
    )
    assert torch.equal(ours.frames, reference.frames)
    assert ours.frames.shape[0] == 4 * (3 * 9 + 1) - 3
    # Decoding each of the 3 sections whole takes 3 + 6 + 7 tiles (original) or 4 + 6 + 6 (F1).
    assert tile_line in lines
