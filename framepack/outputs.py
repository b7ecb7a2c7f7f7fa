"""Writing a generation's outputs: the MP4 (with the request and seed as metadata) and the optional tensor dump."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from . import planner
from .models import FramePackModels
from .pipeline import GenerationOptions, GenerationResult, TensorRecorder, generate
from .progress import ProgressReporter
from .request import GenerationRequest
from .video import Mp4Writer


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
    """The request's MP4 writer: its CRF, and the request, seed and frame count as metadata."""
    num_sections = request.num_sections
    frames = planner.pixel_frames(planner.total_latent_frames(num_sections, request.latent_window_size))
    metadata = {"request": request.to_json_dict(), "seed": request.seed, "frames": frames}
    return Mp4Writer(path, request.mp4_crf, metadata)


def generate_video(
    request: GenerationRequest,
    models: FramePackModels,
    mp4_path: Path,
    progress: ProgressReporter | None = None,
    record: TensorRecorder | None = None,
    options: GenerationOptions = GenerationOptions(),
    stream: bool = True,
) -> GenerationResult:
    """`generate`, and the MP4 encoded once; no file is left behind if anything fails or is cancelled.

    With `stream`, F1's frames go to the encoder as soon as they are final, while later sections sample (the
    original variant's frames are final only at the end). The "mp4" stage times what is left after sampling.
    """
    progress = progress or ProgressReporter(request.num_sections, request.steps)
    with open_mp4(request, mp4_path) as video:
        if stream:
            options = dataclasses.replace(options, on_frames=video.write)
        result = generate(request, models, progress=progress, record=record, options=options)
        with progress.stage("mp4"):
            video.write(result.frames[video.frames_written :])
            video.close()
    return result


def save_tensor_dump(result: GenerationResult, recorder: TensorRecorder, path: Path) -> None:
    """The recorded tensors, with the section plan (which prompt and keyframe each section used) as metadata."""
    save_tensors(recorder.tensors, path, {"plan": json.dumps(result.plan)})
