"""Continuing a video (`input_video`): checking an MP4, and reading its frames on the 30 fps grid.

The models generate at 30 fps, so an input video is read at 30 fps: each slot of the grid takes the frame
shown at that time (frames are repeated or dropped when the source has another rate; none is changed). Its
last frames, cropped to the video's bucket, are VAE-encoded as the context the continuation starts from
(`conditioning.encode_conditioning`); with `include_input_video` its frames are written to the output as
decoded, in their own YUV 4:2:0 samples, before the continuation (`outputs.generate_video`).

A file is checked from its container before any work (`check_input_video`): it must open as a video, within
the stated limits, with enough frames for the context asked. Rotated videos (a display matrix, as phones
write) are read upright. PyAV is imported when a video is read, not with the API table.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from ..errors import InvalidInput
from .planner import LATENT_FRAMES_TO_PIXELS, VIDEO_FPS, pixel_frames

T = TypeVar("T")
NAME = "input_video"
# Checked from the file and its container before anything is decoded. A minute at 30 fps is 1,800 frames; the
# output holds them all, so the limits bound the work and the output as much as the upload.
MAX_INPUT_VIDEO_BYTES = 512 * 2**20
MAX_INPUT_VIDEO_SECONDS = 60.0
MAX_INPUT_VIDEO_PIXELS = 3840 * 2160  # per frame: 4K UHD
_HASH_CHUNK = 2**20


@dataclass(frozen=True)
class ColorDescription:
    """How a video's YUV samples map to colours (FFmpeg's enum values; 2, 2, 2 and 0 mean unspecified).

    The continuation's frames are converted to YUV with the same matrix and range, and the output is tagged
    with all four, so a player shows the copied input and the generated frames alike (BT.709 for most HD
    videos, where converting with the default BT.601 matrix would shift every colour at the join).
    """

    colorspace: int = 2
    color_range: int = 0
    primaries: int = 2
    transfer: int = 2

    @classmethod
    def of(cls, frame) -> ColorDescription:
        return cls(int(frame.colorspace), int(frame.color_range), int(frame.color_primaries), int(frame.color_trc))

    def ffmpeg_args(self) -> list[str]:
        """The encoder options that tag an output with this description (only what is specified)."""
        tags = {
            "-colorspace": (self.colorspace, 2),
            "-color_range": (self.color_range, 0),
            "-color_primaries": (self.primaries, 2),
            "-color_trc": (self.transfer, 2),
        }
        return [arg for option, (value, unset) in tags.items() if value != unset for arg in (option, str(value))]


@dataclass(frozen=True)
class VideoProbe:
    """What the container says of an input video, upright (rotation applied to width and height).

    frames: how many frames it has on the 30 fps grid; seconds: their span; rotation: quarter turns
    counterclockwise that show it upright; sha256: of the file's bytes.
    """

    name: str
    width: int
    height: int
    frames: int
    seconds: float
    rotation: int
    sha256: str
    color: ColorDescription = ColorDescription()

    def latents_available(self) -> int:
        """How many context latents its frames give: the causal VAE makes 1 + (frames - 1) / 4."""
        return (self.frames - 1) // LATENT_FRAMES_TO_PIXELS + 1

    def metadata(self) -> dict[str, object]:
        """What an output's metadata records of it (the hash identifies the file; the name is the user's)."""
        return {"name": self.name, "sha256": self.sha256, "frames": self.frames}


def grid_slots(times: Iterable[float], fps: int = VIDEO_FPS) -> list[int]:
    """Per frame (in presentation order, times in seconds): how many slots of the `fps` grid it fills.

    Slot n (at n / fps s from the first frame) shows the frame nearest in time that has started by then; a
    frame is dropped (0 slots) when the next one starts at the same slot, and repeated when the next starts
    more than one slot later. The last frame fills one slot.
    """
    times = list(times)
    if not times:
        return []
    slots = [_slot(time - times[0], fps) for time in times]
    counts, filled = [], 0
    for slot in slots[1:]:
        counts.append(max(slot - filled, 0))
        filled += counts[-1]
    return counts + [1]


def _slot(seconds: float, fps: int) -> int:
    """The grid slot nearest to `seconds`, halves rounding up (as ffmpeg's fps filter does)."""
    return math.floor(seconds * fps + 0.5)


def on_grid(timed_frames: Iterable[tuple[float, T]], fps: int = VIDEO_FPS) -> Iterator[T]:
    """The frames of (time in seconds, frame) pairs, in presentation order, repeated or dropped onto the `fps`
    grid (`grid_slots`), lazily: each frame is handed on once the next one's time is known."""
    first_time, filled, previous = None, 0, None
    for time, frame in timed_frames:
        if first_time is None:
            first_time = time
        else:
            while filled < _slot(time - first_time, fps):
                yield previous
                filled += 1
        previous = frame
    if first_time is not None:
        yield previous


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def probe_video(path: Path) -> VideoProbe:
    """Check the file at `path` as an input video, from its size and container, and describe it.

    Raises InvalidInput naming `input_video` if it is missing, over MAX_INPUT_VIDEO_BYTES, not a readable video,
    over MAX_INPUT_VIDEO_PIXELS a frame or MAX_INPUT_VIDEO_SECONDS long, or without frames. Only the first frame
    is decoded (for its rotation); the others are counted from their packets. A request probes its video once,
    when it is validated, and carries the probe (`GenerationRequest.video_probe`).
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(NAME, f"file not found: {path.name}")
    status = path.stat()
    if status.st_size > MAX_INPUT_VIDEO_BYTES:
        raise InvalidInput(
            NAME, f"{path.name} is {status.st_size:,} bytes, more than the {MAX_INPUT_VIDEO_BYTES:,} allowed"
        )
    return _probe(str(path.resolve()))


def _probe(path: str) -> VideoProbe:
    from .video import video_read_errors

    name = Path(path).name
    try:
        with _open_video(path) as (container, stream):
            width, height = stream.codec_context.width, stream.codec_context.height
            if width * height > MAX_INPUT_VIDEO_PIXELS:
                raise InvalidInput(
                    NAME, f"{name} is {width}x{height} pixels a frame, more than the {MAX_INPUT_VIDEO_PIXELS:,} allowed"
                )
            if container.duration is not None and container.duration / 1e6 > MAX_INPUT_VIDEO_SECONDS + 1:
                # The container's own length, before every packet is read (a second of slack: the count of
                # frames on the 30 fps grid below decides).
                raise InvalidInput(
                    NAME,
                    f"{name} lasts {container.duration / 1e6:.1f} s, more than the {MAX_INPUT_VIDEO_SECONDS:g} s "
                    "allowed",
                )
            packets = (packet for packet in container.demux(stream) if packet.pts is not None and packet.size)
            times = sorted(float(packet.pts * packet.time_base) for packet in packets)
        with _open_video(path) as (container, stream):
            first = next(container.decode(stream), None)
    except InvalidInput:
        raise
    except video_read_errors() as error:
        raise InvalidInput(NAME, f"could not read {name} as a video ({error})") from None
    if not times or first is None:
        raise InvalidInput(NAME, f"{name} has no video frames")
    frames = sum(grid_slots(times))
    seconds = frames / VIDEO_FPS
    if seconds > MAX_INPUT_VIDEO_SECONDS:
        raise InvalidInput(NAME, f"{name} lasts {seconds:.1f} s, more than the {MAX_INPUT_VIDEO_SECONDS:g} s allowed")
    rotation = round((first.rotation or 0) / 90) % 4
    if rotation % 2:
        width, height = height, width
    return VideoProbe(
        name, width, height, frames, seconds, rotation, file_sha256(Path(path)), ColorDescription.of(first)
    )


@contextlib.contextmanager
def _open_video(path: str):
    """`with _open_video(path) as (container, stream)`: the file's first video stream, decoded on threads."""
    import av

    with av.open(path) as container:
        if not container.streams.video:
            raise InvalidInput(NAME, f"{Path(path).name} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        yield container, stream


def check_input_video(path: Path, context_latents: int, include_input_video: bool) -> VideoProbe:
    """`probe_video`, and the request's demands on it: enough frames for `context_latents` (0: any), even sides
    when its frames go into the output (H.264 4:2:0 needs them)."""
    probe = probe_video(path)
    if context_latents > probe.latents_available():
        raise InvalidInput(
            NAME,
            f"{probe.name} has {probe.frames} frames at 30 fps, too few for video_context_frames {context_latents} "
            f"(which needs {pixel_frames(context_latents)}); it gives at most {probe.latents_available()}",
        )
    if include_input_video and (probe.width % 2 or probe.height % 2):
        raise InvalidInput(
            NAME,
            f"{probe.name} is {probe.width}x{probe.height}: to include it in the output (include_input_video) "
            "its width and height must be even",
        )
    return probe


def context_latents(requested: int, variant_default: int, probe: VideoProbe) -> int:
    """How many of the video's last latents condition the continuation: `requested`, or when 0 the variant's
    default as far as the video has them."""
    return requested or min(variant_default, probe.latents_available())


def _grid_frames(path: Path, probe: VideoProbe) -> Iterator:
    """Every decoded frame (PyAV's) on the 30 fps grid; raises InvalidInput if the file stops decoding."""
    from .video import video_read_errors

    try:
        with _open_video(str(path)) as (container, stream):
            decoded = container.decode(stream)
            yield from on_grid((_time(frame, index), frame) for index, frame in enumerate(decoded))
    except InvalidInput:
        raise
    except video_read_errors() as error:
        raise InvalidInput(NAME, f"could not decode {probe.name} ({error})") from None


def _time(frame, index: int) -> float:
    """A frame's presentation time in seconds (by its index at 30 fps, for a stream without timestamps)."""
    return float(frame.time) if frame.time is not None else index / VIDEO_FPS


def _rgb(frame, quarter_turns: int) -> np.ndarray:
    # The frame's own matrix and range (PyAV assumes limited range unless told).
    rgb = frame.to_ndarray(format="rgb24", src_color_range=frame.color_range or None)
    return np.ascontiguousarray(np.rot90(rgb, quarter_turns))


def rotate_yuv420p(planar: np.ndarray, quarter_turns: int) -> np.ndarray:
    """A planar YUV 4:2:0 frame (H * 3/2, W) turned `quarter_turns` counterclockwise, plane by plane.

    Args:
        planar: (H * 3/2, W) uint8: the Y plane (H, W), then U and V (H/2, W/2 each), row after row.
    """
    height, width = planar.shape[0] * 2 // 3, planar.shape[1]
    luma = planar[:height]
    chroma = planar[height:].reshape(2, height // 2, width // 2)
    turned_luma = np.rot90(luma, quarter_turns)
    turned_chroma = [np.rot90(plane, quarter_turns) for plane in chroma]
    return np.concatenate([turned_luma, *(plane.reshape(-1, turned_luma.shape[1]) for plane in turned_chroma)])


def read_last_frames(
    path: Path, probe: VideoProbe, count: int, transform: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """The last `count` frames of the video at `path` (`probe`: its probe) on the 30 fps grid, upright RGB, each
    through `transform`.

    Returns (count, H', W', 3) uint8 (the shape `transform` gives). Only the last frames are converted: where
    they start is known from the probe, with a few frames' margin for a file whose packets and frames differ.
    """
    first_needed = probe.frames - count - LATENT_FRAMES_TO_PIXELS
    last: deque[np.ndarray] = deque(maxlen=count)
    decoded = 0
    for index, frame in enumerate(_grid_frames(path, probe)):
        if index >= first_needed:
            last.append(transform(_rgb(frame, probe.rotation)))
        decoded = index + 1
    if len(last) < count:
        raise InvalidInput(NAME, f"could decode only {decoded} frames of {probe.name}; {count} are needed")
    return np.stack(last)


def yuv420p_frames(path: Path, probe: VideoProbe) -> Iterator[np.ndarray]:
    """Every frame of the video at `path` (`probe`: its probe) on the 30 fps grid, upright, as planar YUV 4:2:0
    (H * 3/2, W) uint8: the samples the file holds when it is 8-bit 4:2:0 (most H.264 and H.265 MP4s), converted
    once otherwise."""
    for frame in _grid_frames(path, probe):
        planar = frame.to_ndarray(format="yuv420p")
        yield rotate_yuv420p(planar, probe.rotation) if probe.rotation else planar


def rgb_to_yuv420p(frame: np.ndarray, color: ColorDescription = ColorDescription()) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> planar YUV 4:2:0 (H * 3/2, W) uint8, with the matrix and range of `color` (an
    unspecified one: the conversion ffmpeg applies to our other videos)."""
    import av

    rgb = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
    yuv = rgb.reformat(
        format="yuv420p", dst_colorspace=color.colorspace or None, dst_color_range=color.color_range or None
    )
    return yuv.to_ndarray()
