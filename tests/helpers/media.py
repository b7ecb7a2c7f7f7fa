"""Media made for tests: an input video to continue, and an image bomb's header."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import torch


def write_test_video(path: Path, frames: int = 21, width: int = 120, height: int = 80, crf: int = 16) -> Path:
    """A real H.264 MP4 of a bar crossing colour ramps (30 fps, no metadata): an input video to continue."""
    from framepack.core.video import write_mp4

    video = torch.zeros(frames, height, width, 3, dtype=torch.uint8)
    video[:, :, :, 2] = torch.linspace(0, 255, width).to(torch.uint8)
    for index in range(frames):
        video[index, :, :, 0] = index * 255 // max(frames - 1, 1)
        bar = index * 4 % width
        video[index, :, bar : bar + 8, 1] = 255
    return write_mp4(video, path, crf)


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height and holds no pixels: an image bomb's header, a few dozen bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
