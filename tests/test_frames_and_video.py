"""Soft append, uint8 assembly, and the MP4 decoded back."""

import numpy as np
import pytest
import torch
from helpers.requests import CLI_REQUEST, TINY_HEIGHT, TINY_WIDTH, predict_args

from benchmarks.measure import read_mp4_frames
from framepack.core.frames import FrameAssembler, soft_append, to_uint8_frames
from framepack.core.video import YUV420P_FRAMES, Mp4Writer, read_mp4_metadata, write_mp4


def test_soft_append_blends_linearly():
    first, second = torch.zeros(1, 3, 5, 2, 2), torch.ones(1, 3, 4, 2, 2)
    joined = soft_append(first, second, 3)
    assert joined.shape[2] == 6
    assert joined[0, 0, :, 0, 0].tolist() == [0.0, 0.0, 0.0, 0.5, 1.0, 1.0]


def test_uint8_conversion_truncates_like_the_reference():
    pixels = torch.tensor([-2.0, -1.0, 0.0, 0.999, 1.0]).view(1, 1, 5, 1, 1).expand(1, 3, 5, 1, 1)
    frames = to_uint8_frames(pixels)
    assert frames.shape == (5, 1, 1, 3)
    assert frames[:, 0, 0, 0].tolist() == [0, 0, 127, 254, 255]


@pytest.mark.parametrize("prepend", [True, False])
def test_assembler_equals_blending_everything_in_float(prepend):
    generator = torch.Generator().manual_seed(0)
    sections = [torch.rand(1, 3, n, 2, 2, generator=generator) * 2 - 1 for n in (9, 21, 21, 25)]
    assembler = FrameAssembler(overlap=9, prepend=prepend)
    whole = None
    for pixels in sections:
        assembler.add(pixels)
        if whole is None:
            whole = pixels
        else:
            whole = soft_append(pixels, whole, 9) if prepend else soft_append(whole, pixels, 9)
    assert torch.equal(assembler.frames(), to_uint8_frames(whole))


def test_forward_assembly_hands_over_frames_as_soon_as_they_are_final():
    generator = torch.Generator().manual_seed(1)
    handed: list[torch.Tensor] = []
    assembler = FrameAssembler(overlap=9, prepend=False, on_final=handed.append)
    counts = []
    for frames in (9, 21, 21):
        assembler.add(torch.rand(1, 3, frames, 2, 2, generator=generator) * 2 - 1)
        counts.append(sum(chunk.shape[0] for chunk in handed))
    assert counts == [0, 12, 24]  # each section adds 21 - 9 frames; the last 9 wait for the next section
    frames = assembler.frames()
    assert torch.equal(torch.cat(handed), frames[:24]) and frames.shape[0] == 24 + 9
    backwards = FrameAssembler(overlap=9, prepend=True, on_final=handed.append)
    backwards.add(torch.zeros(1, 3, 21, 2, 2))
    backwards.add(torch.zeros(1, 3, 21, 2, 2))
    assert len(handed) == 2  # generated back to front: nothing is final in video order before the end


@pytest.mark.parametrize("prepend", [True, False])
def test_a_continuation_leaves_out_its_first_frame_everywhere(prepend):
    generator = torch.Generator().manual_seed(2)
    sections = [torch.rand(1, 3, n, 2, 2, generator=generator) * 2 - 1 for n in (13, 21, 21)]
    whole, handed = FrameAssembler(overlap=9, prepend=prepend), []
    continued = FrameAssembler(overlap=9, prepend=prepend, on_final=handed.append, drop_leading=1)
    for pixels in sections:
        whole.add(pixels)
        continued.add(pixels)
    assert torch.equal(continued.frames(), whole.frames()[1:])
    if not prepend:
        assert torch.equal(torch.cat(handed), continued.frames()[: sum(chunk.shape[0] for chunk in handed)])


def test_yuv_frames_go_into_the_mp4_as_they_are(tmp_path):
    planar = torch.randint(16, 235, (3, 48, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    with Mp4Writer(tmp_path / "yuv.mp4", 0, pixel_format=YUV420P_FRAMES) as writer:
        writer.write(planar)
    import av

    with av.open(str(tmp_path / "yuv.mp4")) as container:
        decoded = [frame.to_ndarray(format="yuv420p") for frame in container.decode(video=0)]
    assert torch.equal(torch.from_numpy(np.stack(decoded)), planar)  # 32x32 frames, lossless at CRF 0


def test_mp4_roundtrip(tmp_path):
    frames = torch.zeros(7, 32, 48, 3, dtype=torch.uint8)
    frames[:, :, :24] = 200
    path = write_mp4(frames, tmp_path / "clip.mp4", crf=0, metadata={"seed": 5})
    decoded, fps = read_mp4_frames(path)
    assert decoded.shape == (7, 32, 48, 3) and fps == 30
    assert (decoded.int() - frames.int()).abs().float().mean() < 2
    assert read_mp4_metadata(path) == {"seed": 5}
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def _moving_frames(count: int) -> torch.Tensor:
    frames = torch.zeros(count, 32, 48, 3, dtype=torch.uint8)
    for t in range(count):
        frames[t, :, t : t + 8] = 40 + 10 * t
    return frames


def test_frames_written_as_they_come_give_the_same_file(tmp_path):
    frames = _moving_frames(13)
    whole = write_mp4(frames, tmp_path / "whole.mp4", crf=16, metadata={"seed": 1})
    with Mp4Writer(tmp_path / "streamed.mp4", crf=16, metadata={"seed": 1}) as writer:
        for chunk in (frames[:5], frames[5:5], frames[5:12], frames[12:]):
            writer.write(chunk)
            assert not writer.path.exists()  # only complete files appear
        assert writer.frames_written == 13
    assert whole.read_bytes() == (tmp_path / "streamed.mp4").read_bytes()


def test_an_aborted_or_failed_mp4_leaves_nothing(tmp_path):
    with pytest.raises(KeyError):
        with Mp4Writer(tmp_path / "cancelled.mp4", crf=16) as writer:
            writer.write(_moving_frames(4))
            raise KeyError("cancelled mid-generation")
    with pytest.raises(RuntimeError, match="ffmpeg failed to encode odd.mp4"):
        write_mp4(_moving_frames(3)[:, :31, :47], tmp_path / "odd.mp4", crf=16)  # yuv420p needs even sizes
    with pytest.raises(RuntimeError, match="no frames were written"):
        Mp4Writer(tmp_path / "empty.mp4", crf=16).close()
    assert list(tmp_path.iterdir()) == []


def test_same_seed_same_frames_other_seed_different(run_cli, tmp_path):
    outputs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        path = tmp_path / f"{name}.mp4"
        result = run_cli(*predict_args({**CLI_REQUEST, "seed": seed}, path))
        assert result.code == 0, result.stderr
        outputs[name] = read_mp4_frames(path)[0]
    # 3 sections of lws 3: 10 latents, 37 frames, 48x32.
    assert outputs["a"].shape == (37, TINY_HEIGHT, TINY_WIDTH, 3)
    assert torch.equal(outputs["a"], outputs["b"])
    assert not torch.equal(outputs["a"], outputs["c"])
    metadata = read_mp4_metadata(tmp_path / "c.mp4")
    assert metadata["seed"] == 2 and metadata["request"]["prompt"] == CLI_REQUEST["prompt"]


def test_progress_goes_to_stderr(run_cli, tmp_path):
    result = run_cli(*predict_args(CLI_REQUEST, tmp_path / "out.mp4"))
    assert result.code == 0
    assert "section 3/3, step 2/2, elapsed" in result.stderr and "remaining" in result.stderr
    assert result.stdout.strip() == str(tmp_path / "out.mp4")


def test_metadata_of_any_length_and_characters_survives(tmp_path):
    # Longer than the 128 KiB ffmpeg allows one command-line argument, with its metadata file's special characters.
    metadata = {"request": {"prompt": "😀=;#\\\n" * 30000}, "seed": 1}
    frames = torch.zeros(2, 16, 16, 3, dtype=torch.uint8)
    path = write_mp4(frames, tmp_path / "long.mp4", crf=16, metadata=metadata)
    assert read_mp4_metadata(path) == metadata
    assert [p.name for p in tmp_path.iterdir()] == ["long.mp4"]  # no metadata file or partial left
