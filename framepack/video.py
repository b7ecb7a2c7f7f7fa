"""Writing the MP4: H.264, yuv420p, 30 fps, one encode per output, request and seed in the metadata."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch

from .planner import VIDEO_FPS

METADATA_KEY = "comment"


def write_mp4(frames: torch.Tensor, path: Path, crf: int, metadata: dict[str, Any] | None = None) -> Path:
    """Encode (T, H, W, 3) uint8 RGB frames to `path` atomically: a failed write leaves no file behind.

    `metadata` is stored as JSON in the container's comment tag (read it back with `read_mp4_metadata`).
    """
    path = Path(path)
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    frames_np = frames.cpu().numpy()
    try:
        with av.open(str(partial), mode="w", format="mp4") as container:
            if metadata is not None:
                container.metadata[METADATA_KEY] = json.dumps(metadata, sort_keys=True)
            stream = container.add_stream("libx264", rate=VIDEO_FPS)
            stream.width, stream.height = frames_np.shape[2], frames_np.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(int(crf))}
            for frame in frames_np:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def read_mp4_metadata(path: Path) -> dict[str, Any]:
    """The JSON metadata written by `write_mp4` ({} when absent)."""
    with av.open(str(path)) as container:
        text = container.metadata.get(METADATA_KEY)
    return json.loads(text) if text else {}


def read_mp4_frames(path: Path) -> tuple[torch.Tensor, float]:
    """Decode an MP4 back to (T, H, W, 3) uint8 RGB frames and its frame rate."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate)
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    return torch.from_numpy(np.stack(frames)), rate
