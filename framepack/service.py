"""The prediction service behind the Cog predictor, free of Cog so it can be tested and reused.

`FramePackService.setup` loads every component once (downloading what is missing, checking the transformer
checkpoints first) and places them per the memory plan. `predict` validates a request, generates, writes one
MP4 and returns its path. Only the latest output is kept: the previous prediction's file is removed when the
next starts. A failure or cancellation (Cog raises CancelationException, a BaseException, inside predict)
removes partial files and frees GPU memory before propagating.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from . import memory
from .compilation import compile_mode_from_env, settle_cublas
from .models import FramePackModels, load_models
from .outputs import generate_video
from .pipeline import TensorRecorder
from .progress import ProgressReporter
from .request import MODEL_VARIANTS, build_request
from .planner import section_count
from .weights import prepare_weights

logger = logging.getLogger(__name__)

WEIGHTS_ENV = "FRAMEPACK_WEIGHTS"
OUTPUT_DIR_ENV = "FRAMEPACK_OUTPUT_DIR"
FP8_ENV = "FRAMEPACK_FP8"
MetricRecorder = Callable[[str, float], None]


def _log(line: str) -> None:
    print(line, flush=True)


def fp8_requested() -> bool:
    """FRAMEPACK_FP8=1 (or true/yes/on) opts into the FP8 transformer layers; unset or 0 keeps bf16."""
    value = os.environ.get(FP8_ENV, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{FP8_ENV} must be 1 or 0 (true/false, yes/no, on/off), got {value!r}")


class FramePackService:
    def __init__(self, models: FramePackModels, plan: memory.MemoryPlan, output_dir: Path):
        self.models = models
        self.plan = plan
        self.output_dir = output_dir
        self.last_output: Path | None = None

    @classmethod
    def setup(cls, weights_dir: Path | None = None, variants: tuple[str, ...] = MODEL_VARIANTS,
              device: torch.device | None = None) -> "FramePackService":
        weights_dir = Path(weights_dir or os.environ.get(WEIGHTS_ENV, "weights"))
        device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        plan = memory.detect_memory_plan(device)
        float8, compile_mode = fp8_requested(), compile_mode_from_env()
        _log(f"memory mode: {plan.mode} ({plan.reason}); FP8 transformer layers: {'on' if float8 else 'off'}; "
             f"compile: {compile_mode}")
        prepare_weights(weights_dir, variants, log=_log)
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        started = time.monotonic()
        models = load_models(weights_dir, variants, device, dtype)
        memory.place_models(models, plan)
        for variant, applied in memory.prepare_for_speed(models, plan, float8, compile_mode).items():
            _log(f"{variant} transformer: {applied.summary()}")
        _log(f"loaded {', '.join(variants)} from {weights_dir} on {device} ({dtype}) in "
             f"{time.monotonic() - started:.1f} s")
        output_dir = os.environ.get(OUTPUT_DIR_ENV)
        if output_dir:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
        return cls(models, plan, Path(output_dir or tempfile.mkdtemp(prefix="framepack-outputs-")))

    def _remove_previous_output(self) -> None:
        if self.last_output is not None:
            self.last_output.unlink(missing_ok=True)
            self.last_output = None

    def _free_memory(self) -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def predict(self, inputs: Mapping[str, Any], record_metric: MetricRecorder | None = None,
                record: TensorRecorder | None = None) -> Path:
        """Validate `inputs` (API names), generate and return the MP4's path (valid until the next call).

        `record` receives the intermediate tensors, as the CLI's --dump-tensors does.
        """
        self._remove_previous_output()
        request = build_request(inputs)
        _log(f"seed: {request.seed}")
        started = time.monotonic()
        memory.make_resident(self.models, request.model_variant, self.plan)
        settle_cublas(self.models.device)  # per prediction: Cog runs predictions on threads of their own
        progress = ProgressReporter(section_count(request.total_video_length_seconds, request.latent_window_size),
                                    request.steps, write=_log)
        output = self.output_dir / f"framepack-{request.seed}.mp4"
        compiled = self.models.compile_record
        graphs_before = (compiled.graphs, len(compiled.failures)) if compiled is not None else None
        try:
            generate_video(request, self.models, output, progress=progress, record=record)  # no file if it fails
        finally:
            self._free_memory()
        self.last_output = output
        self._log_compilation(graphs_before)
        timings = {**progress.timings, "total": time.monotonic() - started}
        _log("timings: " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in timings.items()))
        if record_metric is not None:
            for name, seconds in timings.items():
                record_metric(f"{name}_seconds", round(seconds, 3))
        return output

    def _log_compilation(self, before: tuple[int, int] | None) -> None:
        """How many block graphs this prediction compiled (0 once warm), and any that ran eagerly instead."""
        record = self.models.compile_record
        if record is None:
            return
        graphs, failures = record.graphs - before[0], len(record.failures) - before[1]
        line = f"compiled blocks: {graphs} graphs compiled by this prediction ({record.graphs} in all)"
        if failures:
            line += f"; {failures} could not be compiled and ran eagerly ({record.failures[-1]})"
        _log(line)

    def close(self) -> None:
        shutil.rmtree(self.output_dir, ignore_errors=True)
