"""Writing the MP4: H.264, yuv420p, 30 fps, one encode per output, request and seed in the metadata."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .planner import VIDEO_FPS

METADATA_KEY = "comment"


def write_mp4(frames: torch.Tensor, path: Path, crf: int, metadata: dict[str, Any] | None = None) -> Path:
    """Encode (T, H, W, 3) uint8 RGB frames to `path` atomically: a failed write leaves no file behind.

    Raw frames are piped into the ffmpeg binary that imageio-ffmpeg ships: its libx264 output is reproducible
    for identical frames, while PyAV 18's encoder path gave different bitstreams on every call at CRF > 0.
    `metadata` is stored as JSON in the container's comment tag (read it back with `read_mp4_metadata`).
    """
    import imageio_ffmpeg

    path = Path(path)
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    _, height, width, _ = frames.shape
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(VIDEO_FPS), "-i", "-",
        "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", str(int(crf)), "-movflags", "+faststart",
    ]
    if metadata is not None:
        command += ["-metadata", f"{METADATA_KEY}={json.dumps(metadata, sort_keys=True)}"]
    command += ["-f", "mp4", str(partial)]
    try:
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            for frame in frames:
                process.stdin.write(frame.contiguous().numpy().tobytes())
        except BrokenPipeError:
            pass  # ffmpeg exited early; its error message is reported below
        finally:
            process.stdin.close()
        error = process.stderr.read().decode(errors="replace")
        if process.wait() != 0:
            raise RuntimeError(f"ffmpeg failed to encode {path.name}: {error.strip()}")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def read_mp4_metadata(path: Path) -> dict[str, Any]:
    """The JSON metadata written by `write_mp4` ({} when absent)."""
    import av

    with av.open(str(path)) as container:
        text = container.metadata.get(METADATA_KEY)
    return json.loads(text) if text else {}


def read_mp4_frames(path: Path) -> tuple[torch.Tensor, float]:
    """Decode an MP4 back to (T, H, W, 3) uint8 RGB frames and its frame rate."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate)
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    return torch.from_numpy(np.stack(frames)), rate
