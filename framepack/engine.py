"""Engine start-up, once for every entry point: memory plan, weights, loading, placement, acceleration.

The service (predict.py), the local command and the benchmark all start the engine with `load_engine`, so a
setting (`config.EngineConfig`) means the same everywhere.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from . import memory
from .config import EngineConfig
from .models import FramePackModels, load_models
from .pipeline import GenerationOptions
from .weights import prepare_weights

logger = logging.getLogger(__name__)


@dataclass
class Engine:
    """Loaded, placed and accelerated models; `accelerations` maps a variant to what was applied to it."""

    config: EngineConfig
    models: FramePackModels
    plan: memory.MemoryPlan
    accelerations: dict

    def generation_options(self) -> GenerationOptions:
        """What every generation on this engine runs with (the configured LoRA downloads)."""
        return GenerationOptions(lora_downloads=self.config.lora_downloads())


def load_engine(config: EngineConfig) -> Engine:
    """Start the engine `config` describes, logging each decision (memory mode, kernels, compilation)."""
    import torch

    device, dtype = config.resolved_device(), config.resolved_dtype()
    total_gib = torch.cuda.get_device_properties(device).total_memory / 2**30 if device.type == "cuda" else None
    plan = memory.choose_memory_plan(device, total_gib, config.memory_mode)
    logger.info(
        f"memory mode: {plan.mode} ({plan.reason}); FP8 transformer layers: {'on' if config.fp8 else 'off'}; "
        f"compile: {config.compile}"
    )
    prepare_weights(config.weights_dir, config.variants)
    started = time.monotonic()
    models = load_models(config.weights_dir, config.variants, device, dtype)
    memory.place_models(models, plan)
    accelerations = memory.prepare_for_speed(models, plan, config)
    for variant, applied in accelerations.items():
        logger.info(f"{variant} transformer: {applied.summary()}")
    logger.info(
        f"loaded {', '.join(config.variants)} from {config.weights_dir} on {device} ({dtype}) in "
        f"{time.monotonic() - started:.1f} s"
    )
    return Engine(config, models, plan, accelerations)
