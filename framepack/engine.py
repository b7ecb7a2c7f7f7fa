"""Engine start-up, once for every entry point: memory plan, weights, loading, placement, acceleration, warm-up.

The service (predict.py), the local command and the benchmark all start the engine with `load_engine`, so a
setting (`config.EngineConfig`) means the same everywhere. Start-up is timed phase by phase (`Engine.timings`,
one log line) because it is what a cold container's first user waits for:
- the weight files are read into the page cache in the background from the start (`prefetch.py`; predict.py
  starts this before its imports), and in high-VRAM mode the models are read straight onto the GPU;
- compiled kernels come from the compile cache when it has them (`compile_cache.py`), and a tiny generation
  (`warm_up`) then builds whatever is left, so the first request runs at warm speed; the cache is written when
  this start compiled anything.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from . import memory, parallel, prefetch
from .config import EngineConfig
from .models import FramePackModels, load_models
from .pipeline import GenerationOptions
from .weights import prepare_weights

logger = logging.getLogger(__name__)

# The warm-up request: one section of two steps at the smallest bucket (dynamic shapes cover every other size).
WARM_UP_INPUTS = {
    "prompt": "warm-up",
    "seed": 0,
    "resolution": 128,
    "total_video_length_seconds": 0.1,
    "steps": 2,
    "use_teacache": False,
}


@dataclass
class Engine:
    """Loaded, placed and accelerated models; `accelerations` maps a variant to what was applied to it.

    `timings`: seconds per start-up phase, in order.
    """

    config: EngineConfig
    models: FramePackModels
    plan: memory.MemoryPlan
    accelerations: dict
    timings: dict[str, float] = field(default_factory=dict)

    def close(self) -> None:
        """Stop the worker processes, if the blocks run on several GPUs (they also stop at exit)."""
        if self.models.parallel is not None:
            self.models.parallel.close()

    def generation_options(self) -> GenerationOptions:
        """What every generation on this engine runs with (the configured LoRA downloads)."""
        return GenerationOptions(lora_downloads=self.config.lora_downloads())


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
        models, accelerations = _load(config, device, dtype, plan, timings)
        if workers is not None:
            with _timed(timings, "workers"):
                workers.join(accelerations, models.transformers, config.fp8)
            models.parallel = workers
            heads = next(iter(models.transformers.values())).config.num_attention_heads
            logger.info(parallel.describe(world, heads, device))
        if models.compile_record is not None:
            _compile_ahead(models, config, accelerations, config.compile_cache_dir(), timings)
    except BaseException:
        if workers is not None:
            workers.close()
        raise
    logger.info(
        f"loaded {', '.join(config.variants)} from {config.weights_dir} on {device} ({dtype}); start-up: "
        + ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in timings.items())
    )
    return Engine(config, models, plan, accelerations, timings)


def _load(config: EngineConfig, device, dtype, plan: memory.MemoryPlan, timings: dict) -> tuple:
    """Read, place and accelerate the models (in the background, the weights prefetch); returns them and what
    was applied to each transformer."""
    reading = prefetch.start(config.weights_dir, config.variants)
    cache_dir = config.compile_cache_dir()
    if cache_dir is not None and device.type == "cuda":
        from .compile_cache import use_flash_attention_cache

        use_flash_attention_cache(cache_dir)
    with _timed(timings, "reading"):
        direct = plan.resident_variants if plan.mode == "high" else None
        models = load_models(config.weights_dir, config.variants, device, dtype, direct_variants=direct)
    if reading is not None:
        read_bytes, seconds = reading.wait()
        logger.info(f"weights prefetch: {read_bytes / 2**30:.1f} GiB read in {seconds:.1f} s")
    if device.type == "cuda" and config.attention in ("auto", "flash_attention_4"):
        from .attention import flash_attention4_unavailable

        with _timed(timings, "FA4 import"):
            flash_attention4_unavailable(device)  # imports the CuTe DSL; the probe in "acceleration" reuses it
    with _timed(timings, "placement"):
        memory.place_models(models, plan, float8=config.fp8)
    with _timed(timings, "acceleration"):
        accelerations = memory.prepare_for_speed(models, plan, config)
    for variant, applied in accelerations.items():
        logger.info(f"{variant} transformer: {applied.summary()}")
    return models, accelerations


def _compile_ahead(models, config: EngineConfig, accelerations: dict, cache_dir: Path | None, timings) -> None:
    """Load the compile cache, build the kernels with a warm-up generation, and save the cache if anything
    was compiled from scratch or there was no file yet."""
    from .compile_cache import CompileCache, artifact_key, kernels_compiled

    variant = config.variants[0]
    cache = None
    if cache_dir is not None:
        attention = accelerations[variant].attention
        cache = CompileCache(cache_dir, artifact_key(models.device, models.dtype, config.fp8, attention))
        with _timed(timings, "compile cache"):
            cache.load()
    with _timed(timings, "warm-up"):
        warm_up(models, variant)
    logger.info(f"warm-up: {models.compile_record.summary()}")
    # Written when kernels were built here, and also when they came from another cache (a local inductor cache,
    # or Replicate's): PyTorch records those hits too, so the file is complete either way.
    if cache is not None and (kernels_compiled() or not cache.path.is_file()):
        with _timed(timings, "compile cache"):
            cache.save()


def warm_up(models: FramePackModels, variant: str) -> None:
    """Run a one-section, two-step generation at the smallest bucket, so kernels are built before a request.

    The blocks compile with dynamic shapes, so the graphs this builds serve every size and prompt length.
    """
    from PIL import Image

    from .pipeline import generate
    from .progress import ProgressReporter
    from .request import FileInputs, build_request

    with tempfile.TemporaryDirectory(prefix="framepack-warm-up-") as folder:
        image = Path(folder) / "start.png"
        Image.linear_gradient("L").convert("RGB").resize((128, 128)).save(image)
        request = build_request({**WARM_UP_INPUTS, "input_image": image, "model_variant": variant}, files=FileInputs())
        progress = ProgressReporter(request.num_sections, request.steps, write=logger.debug)
        generate(request, models, progress=progress)
