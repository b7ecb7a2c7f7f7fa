"""Writing the MP4: H.264, yuv420p, 30 fps, one encode per output (fed as frames become final), request and
seed in the metadata."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import torch

from .planner import VIDEO_FPS

METADATA_KEY = "comment"
RGB_FRAMES, YUV420P_FRAMES = "rgb24", "yuv420p"  # what Mp4Writer takes: ffmpeg's names of the two layouts


def ffmetadata(tags: dict[str, str]) -> str:
    """ffmpeg's metadata file format: a header line, then `key=value` lines with = ; # \\ and newlines escaped."""
    escape = lambda text: "".join("\\" + c if c in "=;#\\\n" else c for c in text)  # noqa: E731
    return ";FFMETADATA1\n" + "".join(f"{escape(key)}={escape(value)}\n" for key, value in tags.items())


class Mp4Writer:
    """Encodes (T, H, W, 3) uint8 RGB frames to `path` as they come; the file appears only when complete.

    Frames are piped into the ffmpeg binary that imageio-ffmpeg ships, which starts at the first `write`: its
    libx264 output is reproducible for identical frames, however they are split into writes (PyAV 18's encoder
    path gave different bitstreams on every call at CRF > 0). `metadata` is stored as JSON in the container's
    comment tag (read it back with `read_mp4_metadata`). Use as a context manager: leaving it normally
    finishes the file (`close`), leaving it on an exception removes what was written (`abort`).
    """

    def __init__(
        self,
        path: Path,
        crf: int,
        metadata: dict[str, Any] | None = None,
        pixel_format: str = RGB_FRAMES,
        color_args: list[str] | None = None,
    ):
        self.path = Path(path)
        self.crf = int(crf)
        self.metadata = metadata
        self.pixel_format = pixel_format
        self.color_args = color_args or []  # encoder options tagging the colour description (a continued video's)
        self.frames_written = 0
        self._partial = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self._metadata_file = self.path.with_name(f".{self.path.stem}.metadata.txt")
        self._process: subprocess.Popen | None = None
        self._closed = False

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, frames: torch.Tensor) -> None:
        """Append frames, all of one size: (T, H, W, 3) uint8 RGB, or with pixel_format YUV420P_FRAMES planar
        (T, H * 3/2, W) uint8 (the Y plane, then U and V at half width and height)."""
        if self._closed:
            raise RuntimeError(f"{self.path.name} is already closed")
        if frames.shape[0] == 0:
            return
        if self._process is None:
            planar = self.pixel_format == YUV420P_FRAMES
            self._start(height=frames.shape[1] * 2 // 3 if planar else frames.shape[1], width=frames.shape[2])
        try:
            self._process.stdin.write(frames.contiguous().numpy().data)  # one write, no copy into bytes
        except BrokenPipeError:
            self._fail()
        self.frames_written += frames.shape[0]

    def close(self) -> Path:
        """Finish the encode and move the file into place; raises (leaving no file) if ffmpeg failed."""
        if self._closed:
            return self.path
        if self._process is None:
            raise RuntimeError(f"no frames were written to {self.path.name}")
        try:
            self._process.stdin.close()
        except BrokenPipeError:
            pass  # ffmpeg exited early; its error message is reported below
        if self._process.wait() != 0:
            self._fail()
        self._metadata_file.unlink(missing_ok=True)
        os.replace(self._partial, self.path)
        self._closed = True
        return self.path

    def abort(self) -> None:
        """Stop ffmpeg and remove the partial file."""
        self._closed = True
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._partial.unlink(missing_ok=True)
        self._metadata_file.unlink(missing_ok=True)

    def _start(self, height: int, width: int) -> None:
        import imageio_ffmpeg

        command = [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-y",
            "-loglevel",
            "error",
            "-f",
            "rawvideo",
            "-pix_fmt",
            self.pixel_format,
            "-s",
            f"{width}x{height}",
            "-r",
            str(VIDEO_FPS),
            "-i",
            "-",
        ]
        if self.metadata is not None:
            # From a file, not the command line: ffmpeg's arguments are capped at 128 KiB each, and a request's
            # prompts can be longer than that in UTF-8.
            self._metadata_file.write_text(ffmetadata({METADATA_KEY: json.dumps(self.metadata, sort_keys=True)}))
            command += ["-f", "ffmetadata", "-i", str(self._metadata_file), "-map", "0:v", "-map_metadata", "1"]
        command += [
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-crf",
            str(self.crf),
            *self.color_args,
            "-movflags",
            "+faststart",
        ]
        command += ["-f", "mp4", str(self._partial)]
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE)

    def _fail(self) -> None:
        self._process.kill()
        self._process.wait()
        error = self._process.stderr.read().decode(errors="replace")
        self.abort()
        raise RuntimeError(f"ffmpeg failed to encode {self.path.name}: {error.strip()}")


def write_mp4(frames: torch.Tensor, path: Path, crf: int, metadata: dict[str, Any] | None = None) -> Path:
    """Encode (T, H, W, 3) uint8 RGB frames to `path` atomically: a failed write leaves no file behind."""
    with Mp4Writer(path, crf, metadata) as writer:
        writer.write(frames)
    return writer.path


def video_read_errors() -> tuple[type[Exception], ...]:
    """What reading a file that is not a (complete) video raises: OS errors, PyAV's errors, bad JSON."""
    import av

    return (OSError, ValueError, av.error.FFmpegError)


def read_mp4_metadata(path: Path) -> dict[str, Any]:
    """The JSON metadata written by `write_mp4` ({} when absent)."""
    import av

    with av.open(str(path)) as container:
        text = container.metadata.get(METADATA_KEY)
    return json.loads(text) if text else {}
