"""Writing a generation's outputs: the MP4 (with the request and seed as metadata) and the optional tensor dump."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from ..core import continuation, planner
from ..core.request import GenerationRequest
from ..core.video import RGB_FRAMES, YUV420P_FRAMES, Mp4Writer
from .conditioning import resize_and_center_crop
from .pipeline import GenerationResult, TensorRecorder

INPUT_FRAMES_PER_WRITE = 30  # an included input video goes to the encoder a second at a time


def save_tensors(tensors: dict, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically (no partial file on failure)."""
    from safetensors.torch import save_file

    partial = path.with_name(f".{path.name}.partial")
    try:
        save_file(tensors, str(partial), metadata=metadata)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def open_mp4(request: GenerationRequest, path: Path) -> Mp4Writer:
    """The request's MP4 writer: its CRF, and the request, seed and frame count as metadata (and what identifies
    a continued video: its name, frame count and SHA-256)."""
    num_sections = request.num_sections
    frames = planner.pixel_frames(planner.total_latent_frames(num_sections, request.latent_window_size))
    metadata = {"request": request.to_json_dict(), "seed": request.seed, "frames": frames}
    pixel_format, color_args = RGB_FRAMES, []
    if request.input_video is not None:
        probe = request.video_probe
        metadata["input_video"] = probe.metadata()
        metadata["frames"] = frames - 1 + (probe.frames if request.include_input_video else 0)
        if request.include_input_video:
            pixel_format, color_args = YUV420P_FRAMES, probe.color.ffmpeg_args()
    return Mp4Writer(path, request.mp4_crf, metadata, pixel_format, color_args)


class OutputFrames:
    """What goes into the MP4: the generated frames, after the input video's own when it is included.

    Then the input's frames are written first, as decoded (YUV 4:2:0, upright, on the 30 fps grid), and each
    run of generated frames is resized and centre-cropped to the input's size and converted to YUV 4:2:0 with
    the input's colour matrix. The input is copied when the first generated frames arrive, not before the
    generation: a request that fails early (a LoRA that does not load, say) fails before that work.
    `generated` counts the generated frames written.
    """

    def __init__(self, request: GenerationRequest, video: Mp4Writer):
        self.video = video
        self.generated = 0
        self.input_size: tuple[int, int] | None = None  # (width, height)
        self._input_to_copy: Path | None = None
        if request.input_video is not None and request.include_input_video:
            self.probe = request.video_probe
            self.input_size, self.color = (self.probe.width, self.probe.height), self.probe.color
            self._input_to_copy = request.input_video

    def _copy_input(self) -> None:
        batch = []
        for frame in continuation.yuv420p_frames(self._input_to_copy, self.probe):
            batch.append(frame)
            if len(batch) == INPUT_FRAMES_PER_WRITE:
                self.video.write(torch.from_numpy(np.stack(batch)))
                batch = []
        if batch:
            self.video.write(torch.from_numpy(np.stack(batch)))
        self._input_to_copy = None

    def write(self, frames: torch.Tensor) -> None:
        """Append generated (T, H, W, 3) uint8 RGB frames (after the input's, the first time)."""
        if self._input_to_copy is not None:
            self._copy_input()
        self.generated += frames.shape[0]
        if self.input_size is None:
            self.video.write(frames)
            return
        width, height = self.input_size
        converted = [
            continuation.rgb_to_yuv420p(resize_and_center_crop(frame.numpy(), width, height), self.color)
            for frame in frames
        ]
        if converted:
            self.video.write(torch.from_numpy(np.stack(converted)))


def save_tensor_dump(result: GenerationResult, recorder: TensorRecorder, path: Path) -> None:
    """The recorded tensors, with the section plan (which prompt and keyframe each section used) as metadata."""
    save_tensors(recorder.tensors, path, {"plan": json.dumps(result.plan)})
