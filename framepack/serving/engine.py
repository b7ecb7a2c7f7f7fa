"""The engine: one start-up and one path for a request, shared by every entry point.

The service (predict.py), the local command, the studio and the benchmarks start the engine with `load_engine`,
so a setting (`config.EngineConfig`) means the same everywhere, and serve each request with `Engine.generate`,
so a request runs the same steps everywhere: plan, place, encode, sample, decode and write, clean up. The
entry points only translate their inputs and outputs.

Start-up is timed phase by phase (`Engine.timings`, one log line) because it is what a cold container's first
user waits for:
- the weight files are read into the page cache in the background from the start (`prefetch.py`; predict.py
  starts this before its imports), and in high-VRAM mode the models are read straight onto the GPU;
- compiled kernels come from the compile cache when it has them (`compile_cache.py`), and a tiny generation
  (`warm_up`) then builds whatever is left, so the first request runs at warm speed; the cache is written when
  this start compiled anything.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import EngineConfig
from ..core.progress import ProgressReporter
from ..core.request import FileInputs, GenerationRequest, build_request
from ..core.weights import prepare_weights
from ..models import FramePackModels, load_models
from ..runtime import memory, pipeline, prefetch
from ..runtime.acceleration import accelerate_models
from ..runtime.compilation import settle_cublas
from ..runtime.outputs import OutputFrames, open_mp4
from ..runtime.pipeline import GenerationOptions, GenerationResult
from ..runtime.placement import Placement, make_resident, place_models
from . import parallel

logger = logging.getLogger(__name__)

# The warm-up request: one section of two steps at the smallest bucket (dynamic shapes cover every other size).
WARM_UP_INPUTS = {
    "prompt": "warm-up",
    "seed": 0,
    "resolution": 128,
    "total_video_length_seconds": 0.1,
    "steps": 2,
    "step_cache": "none",
}


@dataclass
class Engine:
    """Loaded models and where they run (`placement`: placed and accelerated, fitted to each request).

    `timings`: seconds per start-up phase, in order.
    """

    config: EngineConfig
    models: FramePackModels
    placement: Placement
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def plan(self) -> memory.MemoryPlan:
        return self.placement.plan

    @property
    def accelerations(self) -> dict:
        """Variant -> what was applied to its transformer (`acceleration.Acceleration`)."""
        return self.placement.accelerations

    def close(self) -> None:
        """Stop the worker processes, if the blocks run on several GPUs (they also stop at exit)."""
        if self.placement.parallel is not None:
            self.placement.parallel.close()

    def generate(
        self,
        request: GenerationRequest,
        output: Path,
        progress: ProgressReporter | None = None,
        options: GenerationOptions | None = None,
    ) -> GenerationResult:
        """Serve one validated request: its video goes to the MP4 at `output`, and its frames are returned.

        Nothing is left at `output` if the generation fails or is cancelled (an exception from `progress` or an
        `options` callback stops it), and the GPU memory it used is freed either way. `progress` reports and
        times the stages (by default to the log); `options` adds the caller's hooks (previews, per-section
        videos, a tensor dump) to the engine's settings.
        """
        models, placement = self.models, self.placement
        options = dataclasses.replace(options or GenerationOptions(), lora_downloads=self.config.lora_downloads())
        progress = progress or ProgressReporter(request.num_sections, request.steps)
        logger.info(f"seed: {request.seed}")
        started, graphs_before = time.monotonic(), _compiled_graphs(placement)
        # Cog predicts on threads of its own, and the compiled blocks' rounding follows each thread's cuBLAS state:
        # settle it before anything runs a float32 matrix product (a LoRA merge does).
        settle_cublas(models.device)
        try:
            # 1. Plan: the request carries its section schedule and input-video probe, made once at validation.
            # 2. Place: the variant's transformer on the GPU (high VRAM), or its held blocks and the VAE's tiling
            #    fitted to the request's size (low VRAM).
            make_resident(models, placement, request.model_variant, memory.request_size(request))
            with (
                open_mp4(request, output) as video,
                pipeline.request_transformer(request, models, placement, options) as transformer,
            ):
                # 3. Encode what the sections share: prompts, start image (or video), keyframes, end frame.
                cond = pipeline.encode(request, models, progress, options.record)
                # 4. Sample the sections; each is decoded as it finishes, and F1's final frames go to the
                #    encoder while later sections sample.
                frames = OutputFrames(request, video)
                if options.encode_while_sampling:
                    options = dataclasses.replace(options, on_frames=frames.write)
                result = pipeline.sample_sections(request, models, cond, transformer, progress, options)
                # 5. Write the frames not yet written, and close the MP4.
                with progress.stage("mp4"):
                    frames.write(result.frames[frames.generated :])
                    video.close()
        finally:
            # 6. Clean up: free the GPU memory the request used, whether it finished, failed or was cancelled.
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        result.timings = {**progress.timings, "total": time.monotonic() - started}
        _log_compilation(placement, graphs_before)
        logger.info("timings: " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in result.timings.items()))
        return result

    def warm_up(self, variant: str) -> None:
        """Serve a one-section, two-step request at the smallest bucket, so kernels are built before a request.

        The blocks compile with dynamic shapes, so the graphs this builds serve every size and prompt length.
        """
        from PIL import Image

        with tempfile.TemporaryDirectory(prefix="framepack-warm-up-") as folder:
            image = Path(folder) / "start.png"
            Image.linear_gradient("L").convert("RGB").resize((128, 128)).save(image)
            inputs = {**WARM_UP_INPUTS, "input_image": image, "model_variant": variant}
            request = build_request(inputs, files=FileInputs())
            progress = ProgressReporter(request.num_sections, request.steps, write=logger.debug)
            self.generate(request, Path(folder) / "warm-up.mp4", progress)


def _compiled_graphs(placement: Placement) -> tuple[int, int] | None:
    """(graphs compiled, blocks that could not be) so far, when the blocks are compiled."""
    record = placement.compile_record
    return (record.graphs, len(record.failures)) if record is not None else None


def _log_compilation(placement: Placement, before: tuple[int, int] | None) -> None:
    """How many block graphs a request compiled (0 once warm), and any that ran eagerly instead."""
    record = placement.compile_record
    if record is None:
        return
    graphs, failures = record.graphs - before[0], len(record.failures) - before[1]
    line = f"compiled blocks: {graphs} graphs compiled by this prediction ({record.graphs} in all)"
    if failures:
        line += f"; {failures} could not be compiled and ran eagerly ({record.failures[-1]})"
    logger.info(line)


@contextmanager
def _timed(timings: dict[str, float], phase: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    finally:
        timings[phase] = timings.get(phase, 0.0) + time.monotonic() - started


def load_engine(config: EngineConfig) -> Engine:
    """Start the engine `config` describes, logging each decision (memory mode, kernels, compilation)."""
    import torch

    timings: dict[str, float] = {}
    device, dtype = config.resolved_device(), config.resolved_dtype()
    total_gib = free_gib = None
    if device.type == "cuda":
        free_bytes, total_bytes = torch.cuda.mem_get_info(device)
        total_gib, free_gib = total_bytes / 2**30, free_bytes / 2**30
    plan = memory.choose_memory_plan(device, total_gib, config.memory_mode, free_gib)
    logger.info(
        f"memory mode: {plan.mode} ({plan.reason}); FP8 transformer layers: {'on' if config.fp8 else 'off'}; "
        f"compile: {config.compile}"
    )
    with _timed(timings, "weights check"):
        prepare_weights(config.weights_dir, config.variants)
    world = parallel.process_count(config, device, plan.mode)
    # The workers load their transformers while this process loads everything.
    workers = parallel.SequenceParallel.start(config, world, device) if world > 1 else None
    try:
        models, placement = _load(config, device, dtype, plan, timings)
        if workers is not None:
            with _timed(timings, "workers"):
                workers.join(placement.accelerations, models.transformers, config.fp8)
            placement.parallel = workers
            heads = next(iter(models.transformers.values())).config.num_attention_heads
            logger.info(parallel.describe(world, heads, device))
        engine = Engine(config, models, placement, timings)
        if placement.compile_record is not None:
            _compile_ahead(engine, config.compile_cache_dir())
    except BaseException:
        if workers is not None:
            workers.close()
        raise
    logger.info(
        f"loaded {', '.join(config.variants)} from {config.weights_dir} on {device} ({dtype}); start-up: "
        + ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in timings.items())
    )
    return engine


def _load(config: EngineConfig, device, dtype, plan: memory.MemoryPlan, timings: dict) -> tuple:
    """Read, place and accelerate the models (in the background, the weights prefetch); returns them and their
    `Placement`."""
    reading = prefetch.start(config.weights_dir, config.variants)
    cache_dir = config.compile_cache_dir()
    if cache_dir is not None and device.type == "cuda":
        from ..runtime.compile_cache import use_flash_attention_cache

        use_flash_attention_cache(cache_dir)
    with _timed(timings, "reading"):
        direct = plan.resident_variants if plan.mode == "high" else None
        models = load_models(config.weights_dir, config.variants, device, dtype, direct_variants=direct)
    if reading is not None:
        read_bytes, seconds = reading.wait()
        logger.info(f"weights prefetch: {read_bytes / 2**30:.1f} GiB read in {seconds:.1f} s")
    if device.type == "cuda" and config.attention in ("auto", "flash_attention_4"):
        from ..models.attention import flash_attention4_unavailable

        with _timed(timings, "FA4 import"):
            flash_attention4_unavailable(device)  # imports the CuTe DSL; the probe in "acceleration" reuses it
    with _timed(timings, "placement"):
        placement = place_models(models, plan, float8=config.fp8)
    with _timed(timings, "acceleration"):
        accelerate_models(models, placement, config)
    for variant, applied in placement.accelerations.items():
        logger.info(f"{variant} transformer: {applied.summary()}")
    return models, placement


def _compile_ahead(engine: Engine, cache_dir: Path | None) -> None:
    """Load the compile cache, build the kernels with a warm-up request, and save the cache if anything was
    compiled from scratch or there was no file yet."""
    from ..runtime.compile_cache import CompileCache, artifact_key, kernels_compiled

    models, config, timings, record = engine.models, engine.config, engine.timings, engine.placement.compile_record
    variant = config.variants[0]
    cache = None
    if cache_dir is not None:
        attention = engine.accelerations[variant].attention
        cache = CompileCache(cache_dir, artifact_key(models.device, models.dtype, config.fp8, attention))
        with _timed(timings, "compile cache"):
            cache.load()
    with _timed(timings, "warm-up"):
        engine.warm_up(variant)
    logger.info(f"warm-up: {record.summary()}")
    # Written when kernels were built here, and also when they came from another cache (a local inductor cache,
    # or Replicate's): PyTorch records those hits too, so the file is complete either way.
    if cache is not None and (kernels_compiled() or not cache.path.is_file()):
        with _timed(timings, "compile cache"):
            cache.save()
