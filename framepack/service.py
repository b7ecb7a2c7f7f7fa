"""The prediction service behind the Cog predictor, free of Cog so it can be tested and reused.

It serves the HTTP API: image inputs must be files Cog delivered (uploads, URLs, data URIs), never server paths,
and local LoRA files must be in the LoRA folder (FRAMEPACK_LORA_DIR, by default the weights' `loras`) or the
LoRA cache (`request.FileInputs`).

`FramePackService.setup` loads every component once (downloading what is missing, checking the transformer
checkpoints first) and places them per the memory plan. `predict` validates a request, generates, writes one
MP4 and returns its path. Only the latest output is kept: the previous prediction's file is removed when the
next starts. Without FRAMEPACK_OUTPUT_DIR, outputs go to a temporary folder removed when the process exits.
A failure or cancellation (Cog raises CancelationException, a BaseException, inside predict) removes partial
files and frees GPU memory before propagating.
"""

from __future__ import annotations

import atexit
import gc
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from . import memory
from .config import EngineConfig
from .engine import load_engine
from .logs import configure_logging
from .models import FramePackModels
from .outputs import generate_video
from .pipeline import GenerationOptions, TensorRecorder
from .progress import ProgressReporter
from .request import FileInputs, build_request

logger = logging.getLogger(__name__)

MetricRecorder = Callable[[str, float], None]


class FramePackService:
    def __init__(
        self,
        models: FramePackModels,
        plan: memory.MemoryPlan,
        output_dir: Path,
        options: GenerationOptions = GenerationOptions(),
        files: FileInputs = FileInputs(served=True),
    ):
        self.models = models
        self.plan = plan
        self.output_dir = output_dir
        self.options = options
        self.files = files
        self.last_output: Path | None = None
        self.startup_timings: dict[str, float] = {}  # seconds per start-up phase (`engine.Engine.timings`)

    @classmethod
    def setup(cls, config: EngineConfig | None = None) -> FramePackService:
        """Start the engine (`config`, by default from the FRAMEPACK_* variables) and prepare the output folder.

        The engine's lines go to stdout, which Cog returns as the setup's and each prediction's logs.
        """
        configure_logging("stdout")
        config = config or EngineConfig.from_env()
        engine = load_engine(config)
        if config.output_dir is not None:
            config.output_dir.mkdir(parents=True, exist_ok=True)
            output_dir = config.output_dir
        else:  # a folder of our own, removed when the process exits
            output_dir = Path(tempfile.mkdtemp(prefix="framepack-outputs-"))
            atexit.register(shutil.rmtree, output_dir, True)
        files = FileInputs(served=True, lora_dirs=config.local_lora_dirs())
        service = cls(engine.models, engine.plan, output_dir, engine.generation_options(), files)
        service.startup_timings = engine.timings
        return service

    def _remove_previous_output(self) -> None:
        if self.last_output is not None:
            self.last_output.unlink(missing_ok=True)
            self.last_output = None

    def _free_memory(self) -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def predict(
        self,
        inputs: Mapping[str, Any],
        record_metric: MetricRecorder | None = None,
        record: TensorRecorder | None = None,
    ) -> Path:
        """Validate `inputs` (API names), generate and return the MP4's path (valid until the next call).

        `record` receives the intermediate tensors, as the CLI's --dump-tensors does.
        """
        self._remove_previous_output()
        request = build_request(inputs, files=self.files)
        logger.info(f"seed: {request.seed}")
        started = time.monotonic()
        memory.make_resident(self.models, request.model_variant, self.plan, memory.request_size(request))
        progress = ProgressReporter(request.num_sections, request.steps)
        output = self.output_dir / f"framepack-{request.seed}.mp4"
        compiled = self.models.compile_record
        graphs_before = (compiled.graphs, len(compiled.failures)) if compiled is not None else None
        try:
            # No file is left if it fails.
            generate_video(request, self.models, output, progress=progress, record=record, options=self.options)
        finally:
            self._free_memory()
        self.last_output = output
        self._log_compilation(graphs_before)
        timings = {**progress.timings, "total": time.monotonic() - started}
        logger.info("timings: " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in timings.items()))
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
        logger.info(line)

    def close(self) -> None:
        """Remove the outputs and stop the worker processes, if the blocks run on several GPUs."""
        shutil.rmtree(self.output_dir, ignore_errors=True)
        if self.models.parallel is not None:
            self.models.parallel.close()
