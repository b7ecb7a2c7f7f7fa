"""Continuing a video: its frames on the 30 fps grid, its last latents as context for either variant, its own
frames copied into the output, and every bad input refused before any model loads."""

from __future__ import annotations

import hashlib
import re
import subprocess

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from helpers.media import write_test_video
from helpers.paths import START_IMAGE
from helpers.requests import TINY_HEIGHT, TINY_WIDTH, predict_args, tiny_request

from benchmarks.measure import read_mp4_frames
from framepack.core import continuation
from framepack.core.progress import ProgressReporter
from framepack.core.request import build_request
from framepack.core.video import read_mp4_metadata
from framepack.errors import InvalidInput
from framepack.runtime import conditioning
from framepack.runtime.pipeline import GenerationOptions, TensorRecorder

CLIP_FRAMES = 21  # at most 6 latents of context: 1 + (21 - 1) / 4
# 3 sections of 3 latents at 48x32, 2 steps: 12 new frames per section.
# A continuation's request: no start image (the video gives it), 3 sections.
SMALL = {k: v for k, v in tiny_request(seed=4, total_video_length_seconds=1.2).items() if k != "input_image"}
NEW_FRAMES = 3 * 12


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 120x80 H.264 clip of 21 frames at 30 fps (CRF 16, so its frames are not the ones written)."""
    return write_test_video(tmp_path_factory.mktemp("clip") / "clip.mp4", frames=CLIP_FRAMES)


def continue_clip(engine, clip, output, **inputs):
    """Generate a continuation of `clip` into `output` on `engine`; returns the result and the recorded tensors."""
    request = build_request({**SMALL, "input_video": clip, **inputs})
    recorder = TensorRecorder(True)
    progress = ProgressReporter(request.num_sections, request.steps, write=lambda line: None)
    result = engine.generate(request, output, progress, GenerationOptions(record=recorder))
    return result, recorder.tensors


def encode_last_frames(clip, latents: int, vae, width: int = TINY_WIDTH, height: int = TINY_HEIGHT) -> torch.Tensor:
    """The VAE encoding (posterior mean, scaled) of the clip's last 4 (latents - 1) + 1 frames at the bucket."""
    decoded = read_mp4_frames(clip)[0].numpy()[-(4 * (latents - 1) + 1) :]
    cropped = np.stack([conditioning.resize_and_center_crop(frame, width, height) for frame in decoded])
    pixels = (torch.from_numpy(cropped).float() / 127.5 - 1).permute(3, 0, 1, 2)[None].contiguous()
    return vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor


def test_frames_land_on_the_30fps_grid():
    assert continuation.grid_slots([i / 30 for i in range(5)]) == [1, 1, 1, 1, 1]
    # 24 fps: slots 0, 1.25, 2.5, 3.75, 5 round to 0, 1, 3, 4, 5, so the second frame shows twice.
    assert continuation.grid_slots([i / 24 for i in range(5)]) == [1, 2, 1, 1, 1]
    # 60 fps: every other frame; a later frame takes a slot two frames share.
    assert continuation.grid_slots([i / 60 for i in range(5)]) == [1, 0, 1, 0, 1]
    assert list(continuation.on_grid(zip([i / 24 for i in range(5)], "abcde"))) == list("abbcde")
    assert list(continuation.on_grid(zip([0.5, 0.5 + 1 / 60, 0.5 + 2 / 60], "abc"))) == ["a", "c"]
    assert list(continuation.on_grid([])) == [] and continuation.grid_slots([]) == []


def test_a_rotated_video_is_read_upright(clip, tmp_path):
    rotated = tmp_path / "rotated.mp4"
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    tag = [ffmpeg, "-loglevel", "error", "-display_rotation", "90", "-i", str(clip), "-c", "copy", str(rotated)]
    subprocess.run(tag, check=True)
    probe = continuation.probe_video(rotated)
    assert (probe.width, probe.height, probe.rotation, probe.frames) == (80, 120, 1, CLIP_FRAMES)
    # ffmpeg's own player turns it upright the same way (its autorotation is on by default).
    upright = subprocess.run(
        [ffmpeg, "-loglevel", "error", "-i", str(rotated), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        check=True,
        capture_output=True,
    ).stdout
    expected = np.frombuffer(upright, np.uint8).reshape(CLIP_FRAMES, 120, 80, 3)
    ours = continuation.read_last_frames(rotated, probe, CLIP_FRAMES, lambda frame: frame)
    assert np.abs(ours.astype(int) - expected).max() <= 2  # the same samples; RGB conversions may round apart
    planar = np.stack(list(continuation.yuv420p_frames(rotated, probe)))
    assert planar.shape == (CLIP_FRAMES, 180, 80)
    straight = np.stack(list(continuation.yuv420p_frames(clip, continuation.probe_video(clip))))
    assert np.array_equal(planar[:, :120], np.rot90(straight[:, :80], 1, axes=(1, 2)))  # the Y planes


def test_f1_continues_the_videos_latents_and_the_output_starts_with_its_frames(
    tiny_engine, tiny_models, clip, tmp_path
):
    output = tmp_path / "continued.mp4"
    result, tensors = continue_clip(tiny_engine, clip, output, model_variant="f1", mp4_crf=0)
    context = encode_last_frames(clip, 6, tiny_models.vae)  # video_context_frames 0: all 6 the clip has
    assert torch.equal(tensors["input_video_latents"], context)
    # The first new section's history is the clip's latents, newest last, zeros before them (19 slots).
    history = torch.cat([tensors["section_0_clean_latents_4x"], tensors["section_0_clean_latents_2x"]], dim=2)
    history = torch.cat([history, tensors["section_0_clean_latents"][:, :, 1:]], dim=2)
    assert torch.equal(history, torch.cat([torch.zeros(1, 16, 13, TINY_HEIGHT // 8, TINY_WIDTH // 8), context], dim=2))
    # The image the model sees is the clip's last frame, at the bucket; it fills the start slot.
    last = conditioning.resize_and_center_crop(read_mp4_frames(clip)[0][-1].numpy(), TINY_WIDTH, TINY_HEIGHT)
    siglip = conditioning.encode_image_siglip(last, tiny_models.feature_extractor, tiny_models.image_encoder)
    assert torch.equal(tensors["image_embeds"], siglip)
    start = conditioning.vae_encode_mean(last, tiny_models.vae)
    assert all(torch.equal(tensors[f"section_{g}_clean_latents"][:, :, :1], start) for g in range(3))

    frames, fps = read_mp4_frames(output)
    assert result.frames.shape == (NEW_FRAMES, TINY_HEIGHT, TINY_WIDTH, 3)
    assert frames.shape == (CLIP_FRAMES + NEW_FRAMES, 80, 120, 3) and fps == 30  # at the input's size
    assert torch.equal(frames[:CLIP_FRAMES], read_mp4_frames(clip)[0])  # copied, not re-encoded from RGB
    metadata = read_mp4_metadata(output)
    assert metadata["input_video"] == {
        "name": "clip.mp4",
        "sha256": hashlib.sha256(clip.read_bytes()).hexdigest(),
        "frames": CLIP_FRAMES,
    }
    assert metadata["frames"] == CLIP_FRAMES + NEW_FRAMES and metadata["request"]["input_video"] == "clip.mp4"


def test_the_continuation_alone_and_an_input_image_shown_instead(tiny_engine, tiny_models, clip, tmp_path):
    output = tmp_path / "alone.mp4"
    inputs = {"model_variant": "f1", "include_input_video": False, "video_context_frames": 2}
    result, tensors = continue_clip(tiny_engine, clip, output, input_image=START_IMAGE, **inputs)
    assert (
        read_mp4_frames(output)[0].shape == (NEW_FRAMES, TINY_HEIGHT, TINY_WIDTH, 3)
        and result.frames.shape[0] == NEW_FRAMES
    )
    image = conditioning.resize_and_center_crop(conditioning.load_rgb_image(START_IMAGE), TINY_WIDTH, TINY_HEIGHT)
    siglip = conditioning.encode_image_siglip(image, tiny_models.feature_extractor, tiny_models.image_encoder)
    assert torch.equal(tensors["image_embeds"], siglip)
    assert torch.equal(
        tensors["section_0_clean_latents"][:, :, :1], conditioning.vae_encode_mean(image, tiny_models.vae)
    )
    context = encode_last_frames(clip, 2, tiny_models.vae)
    assert torch.equal(tensors["section_0_clean_latents"][:, :, 1:], context[:, :, -1:])
    assert torch.equal(
        tensors["section_0_clean_latents_2x"],
        torch.cat([torch.zeros(1, 16, 1, TINY_HEIGHT // 8, TINY_WIDTH // 8), context[:, :, :1]], 2),
    )
    assert read_mp4_metadata(output)["frames"] == NEW_FRAMES


@pytest.mark.parametrize(("asked", "used"), [(0, 1), (3, 3)])
def test_the_original_variant_starts_from_the_videos_last_latents(
    tiny_engine, tiny_models, clip, tmp_path, asked, used
):
    output = tmp_path / "original.mp4"
    result, tensors = continue_clip(tiny_engine, clip, output, model_variant="original", video_context_frames=asked)
    context = encode_last_frames(clip, used, tiny_models.vae)
    # The start slot is the clip's last frame encoded alone, as a start image is (with one latent of context
    # that is the context itself); the earlier latents go before it.
    last = conditioning.resize_and_center_crop(read_mp4_frames(clip)[0][-1].numpy(), TINY_WIDTH, TINY_HEIGHT)
    start = conditioning.vae_encode_mean(last, tiny_models.vae)
    assert torch.equal(tensors["start_latent"], start)
    if used == 1:
        assert torch.equal(start, context)
    expected_group = torch.cat([context[:, :, :-1], start], dim=2)
    for step in result.plan:  # every section, the end first: the video's last latents lead the start group
        clean = tensors[f"section_{step['generation_index']}_clean_latents"]
        assert clean.shape[2] == used + 1 and torch.equal(clean[:, :, :used], expected_group)
    assert [step["video_index"] for step in result.plan] == [2, 1, 0]
    assert torch.equal(result.video_latents[:, :, :1], start)  # the generated video begins there
    frames = read_mp4_frames(output)[0]
    assert frames.shape == (CLIP_FRAMES + NEW_FRAMES, 80, 120, 3) and result.frames.shape[0] == NEW_FRAMES


def _odd_sized_video(path):
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    source = ["-f", "lavfi", "-i", "color=c=gray:size=128x96:rate=30", "-vf", "scale=121:81", "-frames:v", "5"]
    subprocess.run(
        [ffmpeg, "-loglevel", "error", *source, "-c:v", "libx264", "-pix_fmt", "yuv444p", str(path)], check=True
    )
    return path


def _bad_video(kind: str, folder, clip) -> tuple:
    """An input video that must be refused, made for the test: (the video, other inputs, the expected message)."""
    if kind == "unreadable":
        (folder / "notes.mp4").write_text("not a video")
        return folder / "notes.mp4", {}, "could not read notes.mp4 as a video"
    if kind == "missing":
        return folder / "absent.mp4", {}, "file not found: absent.mp4"
    if kind == "too short":
        message = (
            "clip.mp4 has 21 frames at 30 fps, too few for video_context_frames 7 (which needs 25); it gives at most 6"
        )
        return clip, {"video_context_frames": 7}, message
    if kind == "too large":
        with open(folder / "huge.mp4", "wb") as file:  # sparse: it takes no disk
            file.truncate(continuation.MAX_INPUT_VIDEO_BYTES + 1)
        return folder / "huge.mp4", {}, "huge.mp4 is 536,870,913 bytes, more than the 536,870,912 allowed"
    if kind == "too long":
        video = write_test_video(folder / "long.mp4", frames=1831, width=16, height=16)
        return video, {}, "long.mp4 lasts 61.0 s, more than the 60 s allowed"
    if kind == "too many pixels":
        video = write_test_video(folder / "wide.mp4", frames=1, width=4096, height=2048)
        return video, {}, "wide.mp4 is 4096x2048 pixels a frame, more than the 8,294,400 allowed"
    return _odd_sized_video(folder / "odd.mp4"), {}, "odd.mp4 is 121x81: to include it in the output"


@pytest.mark.parametrize(
    "kind", ["unreadable", "missing", "too short", "too large", "too long", "too many pixels", "odd size"]
)
def test_a_bad_input_video_is_refused_before_loading(run_cli, tmp_path, clip, kind):
    video, inputs, message = _bad_video(kind, tmp_path, clip)
    output = tmp_path / "out.mp4"
    result = run_cli(*predict_args({**SMALL, "input_video": f"@{video}", **inputs}, output))
    assert result.code == 2 and f"Invalid input 'input_video': {message}" in result.stderr, result.stderr
    assert "loading" not in result.stderr and not output.exists()


def test_an_odd_sized_video_continues_when_it_is_not_included(clip, tmp_path):
    odd = _odd_sized_video(tmp_path / "odd.mp4")
    request = build_request({**SMALL, "input_video": odd, "include_input_video": False})
    assert request.input_video == odd


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"input_image": None}, "'input_image': is required unless input_video is given"),
        ({"input_image": START_IMAGE, "video_context_frames": 2}, "'video_context_frames': given without input_video"),
        ({"video_context_frames": 20}, "'video_context_frames': 20 is out of range; allowed 0 to 19"),
    ],
)
def test_what_a_continuation_needs_is_checked(inputs, message):
    with pytest.raises(InvalidInput, match=re.escape(message)):
        build_request({**SMALL, **inputs})


def test_a_continuation_renders_again_from_its_video(run_cli, clip, tmp_path):
    first, again, other = tmp_path / "first.mp4", tmp_path / "again.mp4", tmp_path / "other.mp4"
    inputs = {**SMALL, "model_variant": "f1", "input_video": f"@{clip}", "total_video_length_seconds": 0.4}
    assert run_cli(*predict_args(inputs, first)).code == 0
    redo = run_cli(*predict_args({"input_video": f"@{clip}"}, again, "--from", str(first)))
    assert redo.code == 0, redo.stderr
    assert torch.equal(read_mp4_frames(again)[0], read_mp4_frames(first)[0])
    assert "is not the video" not in redo.stderr
    another = write_test_video(tmp_path / "another.mp4", frames=9)
    changed = run_cli(*predict_args({"input_video": f"@{another}"}, other, "--from", str(first)))
    assert (
        changed.code == 0 and "input_video another.mp4 is not the video first.mp4 continued (clip.mp4" in changed.stderr
    )
    missing = run_cli(*predict_args({}, tmp_path / "none.mp4", "--from", str(first)))
    assert missing.code == 2 and "Invalid input 'input_video': first.mp4 was made from clip.mp4" in missing.stderr


def test_a_bt709_video_and_its_continuation_share_one_colour_matrix(tiny_engine, tiny_models, clip, tmp_path):
    """HD videos are mostly BT.709: the generated frames are converted to YUV with the input's matrix and range,
    and the output is tagged with its colour description, or every colour would shift where the two meet."""
    import av

    tagged = tmp_path / "bt709.mp4"
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    colour = ["-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709", "-color_range", "tv"]
    subprocess.run(
        [ffmpeg, "-loglevel", "error", "-i", str(clip), "-vf", "scale=out_color_matrix=bt709:out_range=tv"]
        + ["-c:v", "libx264", "-crf", "0", "-pix_fmt", "yuv420p", *colour, str(tagged)],
        check=True,
    )
    bt709 = continuation.ColorDescription(colorspace=1, color_range=1, primaries=1, transfer=1)
    assert continuation.probe_video(tagged).color == bt709
    output = tmp_path / "continued.mp4"
    result, _ = continue_clip(tiny_engine, tagged, output, model_variant="f1", mp4_crf=0)
    with av.open(str(output)) as container:
        context = container.streams.video[0].codec_context
        assert (context.colorspace, context.color_range, context.color_primaries, context.color_trc) == (1, 1, 1, 1)
        planes = [frame.to_ndarray(format="yuv420p") for frame in container.decode(video=0)]
    resized = [conditioning.resize_and_center_crop(frame.numpy(), 120, 80) for frame in result.frames]
    # Lossless (CRF 0): the generated frames' samples are exactly their BT.709 conversion, not BT.601's.
    assert all(np.array_equal(a, continuation.rgb_to_yuv420p(b, bt709)) for a, b in zip(planes[CLIP_FRAMES:], resized))
    assert not all(np.array_equal(a, continuation.rgb_to_yuv420p(b)) for a, b in zip(planes[CLIP_FRAMES:], resized))
    assert torch.equal(read_mp4_frames(output)[0][:CLIP_FRAMES], read_mp4_frames(tagged)[0])
