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
import logging
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..config import EngineConfig
from ..core.request import FileInputs, build_request
from ..logs import configure_logging
from ..runtime.pipeline import GenerationOptions, TensorRecorder
from .engine import Engine, load_engine

logger = logging.getLogger(__name__)

MetricRecorder = Callable[[str, float], None]


class FramePackService:
    """The engine behind the HTTP API: its inputs as Cog delivers them, one MP4 kept at a time in `output_dir`."""

    def __init__(self, engine: Engine, output_dir: Path, files: FileInputs = FileInputs(served=True)):
        self.engine = engine
        self.output_dir = output_dir
        self.files = files
        self.last_output: Path | None = None

    @property
    def models(self):
        return self.engine.models

    @property
    def startup_timings(self) -> dict[str, float]:
        """Seconds per start-up phase (`engine.Engine.timings`)."""
        return self.engine.timings

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
        return cls(engine, output_dir, FileInputs(served=True, lora_dirs=config.local_lora_dirs()))

    def predict(
        self,
        inputs: Mapping[str, Any],
        record_metric: MetricRecorder | None = None,
        record: TensorRecorder | None = None,
    ) -> Path:
        """Validate `inputs` (API names), generate and return the MP4's path (valid until the next call).

        `record_metric(name, value)` receives each stage's seconds; `record` the intermediate tensors, as the
        CLI's --dump-tensors does.
        """
        if self.last_output is not None:
            self.last_output.unlink(missing_ok=True)
            self.last_output = None
        request = build_request(inputs, files=self.files)
        output = self.output_dir / f"framepack-{request.seed}.mp4"
        result = self.engine.generate(request, output, options=GenerationOptions(record=record))
        self.last_output = output
        if record_metric is not None:
            for name, seconds in result.timings.items():
                record_metric(f"{name}_seconds", round(seconds, 3))
        return output

    def close(self) -> None:
        """Remove the outputs and stop the worker processes, if the blocks run on several GPUs."""
        shutil.rmtree(self.output_dir, ignore_errors=True)
        self.engine.close()
