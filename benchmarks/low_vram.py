"""Low-VRAM mode under GPU memory caps against high-VRAM mode, each started from weights on disk as the service is.

Low-VRAM runs first, so the host's peak resident memory covers loading and streaming; then the same requests in
high-VRAM mode (compiled), and each capped run's time and latents against them. By default every capped run uses
one engine that streams every block (`FRAMEPACK_MEMORY_MODE=low`). With `adaptive`, each cap gets the placement
a GPU of that size gets (a budget of the cap less `memory.RESERVED_GIB`, `residency.py`), on an engine loaded
afresh for it.
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path

import torch

from framepack.config import EngineConfig
from framepack.engine import load_engine
from framepack.memory import RESERVED_GIB
from framepack.transformer import PackedTransformer

from .end_to_end import end_to_end
from .measure import peak_rss_gib, relative_l2


def engine_config(weights: Path, device: torch.device, dtype: torch.dtype, memory_mode: str) -> EngineConfig:
    """The service's start-up for the saved weights (original variant), forced into `memory_mode`."""
    return EngineConfig(
        weights_dir=weights,
        variants=("original",),
        device=device.type,
        dtype=str(dtype).removeprefix("torch."),
        memory_mode=memory_mode,
    )


def run_key(cap: float, seconds: float, steps: int) -> str:
    return f"cap_{cap:g}gib_{seconds:g}s_{steps}steps"


def _weights_gib(models) -> float:
    modules = [models.text_encoder, models.text_encoder_2, models.image_encoder, models.vae]
    modules += list(models.transformers.values())
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters()) / 2**30


def _limit_gpu_memory(device: torch.device, cap_gib: float | None) -> None:
    """Cap this process's GPU memory at `cap_gib` (None: no cap), with the peak statistics reset."""
    if device.type != "cuda":
        return
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    total = torch.cuda.get_device_properties(device).total_memory / 2**30
    fraction = 1.0 if cap_gib is None else min(1.0, cap_gib / total)
    torch.cuda.set_per_process_memory_fraction(fraction, torch.cuda.current_device())


def low_vram(
    weights: Path,
    runs: list[tuple[float, float, int]],
    device: torch.device,
    dtype: torch.dtype,
    size: tuple[int, int],
    image: Path,
    save,
    adaptive: bool = False,
) -> dict:
    """Each (cap GiB, seconds, steps) run in low-VRAM mode, then each (seconds, steps) once in high-VRAM mode.

    `save(results)` is called after every run, so partial results survive a timeout.
    """
    cuda = device.type == "cuda"
    models = None if adaptive else load_engine(engine_config(weights, device, dtype, "low")).models
    results: dict = {"host_peak_rss_after_placement_gib": peak_rss_gib()}
    low_latents = {}
    for cap, seconds, steps in runs:
        key = run_key(cap, seconds, steps)
        if adaptive:
            models = None
            gc.collect()
            _limit_gpu_memory(device, None)
            budget = f"{cap - RESERVED_GIB:g}"
            models = load_engine(engine_config(weights, device, dtype, budget)).models
        results.setdefault("weights_gib", _weights_gib(models))
        _limit_gpu_memory(device, cap)
        try:
            low = end_to_end(models, image, size, PackedTransformer, False, seconds, steps, device)
            run = {k: v for k, v in low.items() if k not in ("latents", "pixels")}
            low_latents[key] = low["latents"]
        except torch.OutOfMemoryError as error:
            run = {"error": f"out of memory: {str(error).splitlines()[0]}"}
        if cuda:
            run["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
        run["host_peak_rss_gib"] = peak_rss_gib()
        results[key] = run
        save(results)
        print(f"low VRAM, {key}", run, flush=True)
    results["host_peak_rss_low_gib"] = peak_rss_gib()
    results["host_rss_over_weights"] = results["host_peak_rss_low_gib"] / results["weights_gib"]

    del models
    gc.collect()
    _limit_gpu_memory(device, None)
    models = load_engine(engine_config(weights, device, dtype, "high")).models
    warm = time.perf_counter()  # compile for this prompt's length once, outside the timed runs
    end_to_end(models, image, size, PackedTransformer, False, 1.0, 1, device)
    results["high_warmup_s"] = time.perf_counter() - warm
    for seconds, steps in dict.fromkeys((seconds, steps) for _, seconds, steps in runs):
        high = end_to_end(models, image, size, PackedTransformer, False, seconds, steps, device)
        baseline = {k: v for k, v in high.items() if k not in ("latents", "pixels")}
        if cuda:
            baseline["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
        results[f"high_{seconds:g}s_{steps}steps"] = baseline
        print("high VRAM", seconds, steps, baseline, flush=True)
        for cap, run_seconds, run_steps in runs:
            run = results[run_key(cap, run_seconds, run_steps)]
            if (run_seconds, run_steps) != (seconds, steps) or "error" in run:
                continue
            run["relative_l2_vs_high"] = relative_l2(low_latents[run_key(cap, seconds, steps)], high["latents"])
            run["time_ratio_vs_high"] = run["total"] / baseline["total"]
            run["sampling_ratio_vs_high"] = run["sampling"] / baseline["sampling"]
        save(results)
    return results


def save_into(report: dict, out: Path):
    """A `save` for `low_vram` that writes the report with the low-VRAM results so far."""
    return lambda results: out.write_text(json.dumps({**report, "low_vram": results}, indent=2, default=str))
