"""Low-VRAM mode under GPU memory caps against high-VRAM mode, each started from weights on disk as the service is.

Low-VRAM runs first, so the host's peak resident memory covers loading and streaming; then the same requests in
high-VRAM mode (compiled), and each capped run's time and latents against them. By default every capped run uses one
engine that streams every block (`FRAMEPACK_MEMORY_MODE=low`) and decodes as the reference does. With `adaptive`,
each cap gets the placement a GPU of that size gets (a budget of the cap less the reserve,
`memory_costs.COSTS.reserved_gib`; `residency.py`) and both modes run the service's own decode (in the background
where memory allows). Caps run smallest first: a cap whose VAE and encoders sit where the loaded engine put them
reuses it with more blocks held (`placement.make_resident`), as a request of another size would; otherwise an engine is
loaded afresh. (Going down instead, the memory the allocator cached under the larger cap stays in segments it cannot
release.) `low_fp8` runs the capped engines with FP8 blocks (the high-VRAM baseline stays bf16).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import time
import traceback
from pathlib import Path

import torch

from framepack.config import EngineConfig
from framepack.runtime import residency, streaming
from framepack.runtime.memory import MemoryPlan
from framepack.runtime.memory_costs import COSTS, GIB
from framepack.runtime.placement import make_resident, model_sizes, set_decode_tiling
from framepack.runtime.transformer import PackedTransformer
from framepack.serving.engine import load_engine

from .end_to_end import end_to_end
from .measure import current_rss_gib, peak_rss_gib, relative_l2

PCIE4_X16_BYTES_PER_S = 25e9


def engine_config(
    weights: Path, device: torch.device, dtype: torch.dtype, memory_mode: str, fp8: bool = False
) -> EngineConfig:
    """The service's start-up for the saved weights (original variant), forced into `memory_mode`."""
    return EngineConfig(
        weights_dir=weights,
        variants=("original",),
        device=device.type,
        dtype=str(dtype).removeprefix("torch."),
        memory_mode=memory_mode,
        fp8=fp8,
    )


def run_key(cap: float, seconds: float, steps: int) -> str:
    return f"cap_{cap:g}gib_{seconds:g}s_{steps}steps"


class AdaptiveEngines:
    """The engine for each cap's budget: reused while the VAE and encoders would sit where it placed them
    (`_placement`)."""

    def __init__(self, weights: Path, device: torch.device, dtype: torch.dtype, fp8: bool):
        self.weights, self.device, self.dtype, self.fp8 = weights, device, dtype, fp8
        self.engine = None

    def for_cap(self, cap: float, size: tuple[int, int, int]):
        """The engine placed for a GPU of `cap` GiB, its blocks fitted to a request of `size`. A reused engine is
        re-fitted under the cap; a fresh one loads without it (the caller sets it for the run)."""
        budget = max(cap - COSTS.reserved_gib, 0.0)
        if self.engine is not None and self.engine.plan.mode == "low":
            setup = residency.plan_residency(int(budget * GIB), model_sizes(self.engine.models))
            placed = self.engine.placement.residency
            if _placement(setup) == _placement(placed):
                # This cap, not the smaller one before it, bounds the blocks now copied in (on the H200 the 12 GiB
                # cap's 4.4 GiB of held blocks failed under the 4 GiB cap still set).
                _limit_gpu_memory(self.device, cap)
                placement = self.engine.placement
                placement.residency = setup
                placement.plan = MemoryPlan("low", f"cap {cap:g} GiB", budget_gib=budget)
                make_resident(self.engine.models, placement, "original", size)
                return self.engine
        self.engine = None  # nothing else may hold the models: their GPU memory is freed before the next load
        gc.collect()
        _limit_gpu_memory(self.device, None)
        config = engine_config(self.weights, self.device, self.dtype, f"{budget:g}", self.fp8)
        self.engine = load_engine(config)
        make_resident(self.engine.models, self.engine.placement, "original", size)
        return self.engine


def _placement(plan: residency.Residency) -> tuple[bool, bool, bool]:
    """Where the VAE and the encoders sit: fixed when the engine is loaded."""
    return plan.vae_resident, plan.encoders_resident, plan.encoders_visit


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
    low_fp8: bool = False,
    step_cache: str = "none",
) -> dict:
    """Each (cap GiB, seconds, steps) run in low-VRAM mode, then each (seconds, steps) once in high-VRAM mode.

    `step_cache` samples every run ("magcache": a skipped step streams no block). `save(results)` is called after
    every run, so partial results survive a timeout.
    """
    cuda = device.type == "cuda"
    engines = AdaptiveEngines(weights, device, dtype, low_fp8) if adaptive else None
    if adaptive:
        runs = sorted(runs, key=lambda run: run[0])
    engine = None if adaptive else load_engine(engine_config(weights, device, dtype, "low", low_fp8))
    results: dict = {
        "host_rss_before_loading_gib": current_rss_gib(),  # the libraries, before any weight is read
        "host_peak_rss_after_placement_gib": peak_rss_gib(),
        "host_to_device_gb_s": streaming.host_to_device_bandwidth(device, 2**30) if cuda else None,
        "low_fp8": low_fp8,
    }
    low_latents = {}
    for cap, seconds, steps in runs:
        key = run_key(cap, seconds, steps)
        if adaptive:
            engine = None
            engine = engines.for_cap(cap, (*size, 9))
        models = engine.models
        results.setdefault("weights_gib", _weights_gib(models))
        results.setdefault("host_peak_rss_after_loading_gib", peak_rss_gib())
        _limit_gpu_memory(device, cap)
        timings = _collect_stream_timings(engine.placement)
        retries = _alloc_retries(device)
        try:
            low = end_to_end(engine, image, size, PackedTransformer, step_cache, seconds, steps, device, adaptive)
            run = {k: v for k, v in low.items() if k not in ("latents", "pixels")}
            low_latents[key] = low["latents"]
        except torch.OutOfMemoryError as error:
            where = traceback.format_exc().splitlines()[-14:-1]  # the frames that asked for the memory
            run = {"error": f"out of memory: {str(error).splitlines()[0]}", "where": where}
        if cuda:
            run["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
            run["alloc_retries"] = _alloc_retries(device) - retries
        run["host_peak_rss_gib"] = peak_rss_gib()
        run.update(_streaming_facts(engine.placement, results["host_to_device_gb_s"]))
        if timings is not None:
            run["stream_timings"] = dataclasses.asdict(timings)
        results[key] = run
        save(results)
        print(f"low VRAM, {key}", run, flush=True)
    results["host_peak_rss_low_gib"] = peak_rss_gib()
    results["host_rss_over_weights"] = results["host_peak_rss_low_gib"] / results["weights_gib"]

    del models, engine, engines
    gc.collect()
    _limit_gpu_memory(device, None)
    engine = load_engine(engine_config(weights, device, dtype, "high"))
    warm = time.perf_counter()  # compile for this prompt's length once, outside the timed runs
    end_to_end(engine, image, size, PackedTransformer, "none", 1.0, 1, device)
    results["high_warmup_s"] = time.perf_counter() - warm
    for seconds, steps in dict.fromkeys((seconds, steps) for _, seconds, steps in runs):
        high = end_to_end(engine, image, size, PackedTransformer, step_cache, seconds, steps, device, adaptive)
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
    if cuda:
        results["vae_decode_peaks"] = vae_decode_peaks(engine.models.vae, size, device)
        save(results)
    print(table(results), flush=True)
    return results


def _collect_stream_timings(placement) -> streaming.StreamTimings | None:
    """Start collecting how long sampling waits for streamed blocks (None in high-VRAM mode)."""
    streamer = placement.streamers.get("original")
    if streamer is None:
        return None
    streamer.timings = streaming.StreamTimings()
    return streamer.timings


def _alloc_retries(device: torch.device) -> int:
    """Times the caching allocator freed its cache and retried an allocation (each synchronises the GPU)."""
    return torch.cuda.memory_stats(device).get("num_alloc_retries", 0) if device.type == "cuda" else 0


@torch.no_grad()
def vae_decode_peaks(vae, size: tuple[int, int], device: torch.device) -> dict:
    """GPU memory one 5-latent tile (17 frames) of a `size` decode needs beyond its input, and its time, for each
    spatial tiling the low-VRAM placement chooses from (`memory_costs.COSTS.decode_peak_544x704_gib`, whose numbers this
    measures). The VAE must be resident on `device`; its tiling settings are restored."""
    height, width = size
    latents = torch.randn(1, 16, 5, height // 8, width // 8, device=device, dtype=vae.dtype)
    saved = {name: getattr(vae, name) for name in _TILING_ATTRIBUTES}
    peaks = {}
    try:
        for tiling in COSTS.decode_peak_544x704_gib:
            set_decode_tiling(vae, tiling)

            def decode(tiled=tiling is not None):
                return vae.tiled_decode(latents).sample if tiled else vae.decoder(vae.post_quant_conv(latents))

            decode()  # compiles the GroupNorms for these shapes
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            started = time.perf_counter()
            decode()
            torch.cuda.synchronize(device)
            name = "whole" if tiling is None else f"tile_{tiling[0]}_stride_{tiling[1]}"
            peaks[name] = {
                "peak_gib": (torch.cuda.max_memory_allocated(device) - before) / 2**30,
                "seconds": time.perf_counter() - started,
            }
    finally:
        for name, value in saved.items():
            setattr(vae, name, value)
    return peaks


_TILING_ATTRIBUTES = (
    "use_tiling",
    "tile_sample_min_height",
    "tile_sample_min_width",
    "tile_sample_stride_height",
    "tile_sample_stride_width",
)


def table(results: dict) -> str:
    """The runs as lines: time, ratio to high VRAM, peak, difference, and what streamed."""
    lines = [f"host-to-device {results.get('host_to_device_gb_s') or 0:.1f} GB/s; FP8 {results['low_fp8']}"]
    lines.append(
        "run | total s | vs high | sampling vs high | s/step | peak GiB | rel L2 | held | GiB/fwd | PCIe4 s"
        " | copy wait s | copying s | retries"
    )
    for key, run in results.items():
        if not isinstance(run, dict) or "total" not in run:
            continue
        lines.append(
            " | ".join(
                [
                    key,
                    f"{run['total']:.1f}",
                    f"{run.get('time_ratio_vs_high', 1.0):.3f}",
                    f"{run.get('sampling_ratio_vs_high', 1.0):.3f}",
                    f"{run['sampling'] / run['section_steps']:.3f}",
                    f"{run.get('peak_reserved_gib', 0.0):.2f}",
                    f"{run.get('relative_l2_vs_high', 0.0):.2e}",
                    str(run.get("resident_blocks", "all")),
                    f"{run.get('streamed_gib_per_forward', 0.0):.1f}",
                    f"{run.get('copy_s_per_forward_pcie4', 0.0):.2f}",
                    f"{run.get('stream_timings', {}).get('wait_s', 0.0):.1f}",
                    f"{run.get('stream_timings', {}).get('copy_s', 0.0):.1f}",
                    str(run.get("alloc_retries", "")),
                ]
            )
        )
    return "\n".join(lines)


def _streaming_facts(placement, bandwidth_gb_s: float | None) -> dict:
    """Blocks held and bytes streamed per forward, and what copying them takes on this host link and on a
    PCIe 4.0 x16 consumer GPU (about 25 GB/s)."""
    streamer = placement.streamers.get("original")
    if streamer is None:
        return {}
    streamed = streamer.streamed_bytes
    facts = {
        "resident_blocks": streamer.resident_blocks,
        "streamed_gib_per_forward": streamed / 2**30,
        "copy_s_per_forward_pcie4": streamed / PCIE4_X16_BYTES_PER_S,
    }
    if bandwidth_gb_s:
        facts["copy_s_per_forward_here"] = streamed / (bandwidth_gb_s * 1e9)
    return facts


def save_into(report: dict, out: Path):
    """A `save` for `low_vram` that writes the report with the low-VRAM results so far."""
    return lambda results: out.write_text(json.dumps({**report, "low_vram": results}, indent=2, default=str))
