"""Writing a generation's outputs: the MP4 (with the request and seed as metadata) and the optional tensor dump."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .pipeline import GenerationResult, TensorRecorder
from .request import GenerationRequest
from .video import write_mp4


def save_tensors(tensors: dict, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically (no partial file on failure)."""
    from safetensors.torch import save_file

    partial = path.with_name(f".{path.name}.partial")
    try:
        save_file(tensors, str(partial), metadata=metadata)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def save_outputs(request: GenerationRequest, result: GenerationResult, mp4_path: Path,
                 recorder: TensorRecorder | None = None, dump_path: Path | None = None) -> Path:
    """Encode the MP4 once (CRF from the request) and, when asked, dump the recorded tensors."""
    metadata = {"request": request.to_json_dict(), "seed": request.seed, "frames": int(result.frames.shape[0])}
    write_mp4(result.frames, mp4_path, request.mp4_crf, metadata)
    if dump_path is not None and recorder is not None and recorder.tensors is not None:
        # The section plan (which prompt and keyframe each generated section used) rides along as metadata.
        save_tensors(recorder.tensors, dump_path, {"plan": json.dumps(result.plan)})
    return mp4_path
