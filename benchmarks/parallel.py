"""One GPU against N GPUs (Ulysses sequence parallelism, `framepack/serving/parallel.py`), each started from weights
on disk.

In one run, first on an engine with `gpus=1`, then on one with `gpus=N` (on the CPU: N processes over gloo):
- seconds per transformer forward (window 9 at the bucket, as forward.py), and the relative L2 of the N-GPU
  velocity to the 1-GPU one;
- a whole generation (TeaCache off; by default the 5-second 640-bucket video at 25 steps), timed per stage, and the
  relative L2 of its final latents to the 1-GPU run's;
- communication per forward: rank 0's time inside the collectives (CUDA events around each call on rank 0, or
  the wall clock on the CPU). That includes waiting for the slowest rank to arrive, so it bounds the exchange's
  cost from above; the rest of the forward is compute;
- peak memory of every GPU (the workers report theirs).
"""

from __future__ import annotations

import gc
import json
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist

from framepack.config import EngineConfig
from framepack.core.weights import find_missing, required_components
from framepack.runtime.transformer import PackedTransformer
from framepack.serving.engine import load_engine

from . import forward
from .end_to_end import end_to_end
from .measure import median_seconds, peak_memory, peak_rss_gib, relative_l2
from .random_models import save_random_weights

# Every collective the parallel engine calls, in the blocks (the exchanges) and around them (scatter, gather).
COLLECTIVES = ("all_to_all_single", "all_gather", "broadcast", "scatter", "gather")


@contextmanager
def timed_collectives(device: torch.device):
    """Inside: rank 0's collectives timed; yields a list that receives each call's seconds once it is read.

    The exchanges are custom operators whose Python bodies call `torch.distributed` at run time (also inside
    compiled blocks), so replacing the module's functions reaches every call.
    """
    spans: list = []
    originals = {name: getattr(dist, name) for name in COLLECTIVES}

    def timed(function):
        def call(*args, **kwargs):
            if device.type != "cuda":
                started = time.perf_counter()
                result = function(*args, **kwargs)
                spans.append(time.perf_counter() - started)
                return result
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            result = function(*args, **kwargs)
            end.record()
            spans.append((start, end))
            return result

        return call

    for name, function in originals.items():
        setattr(dist, name, timed(function))
    try:
        yield spans
    finally:
        for name, function in originals.items():
            setattr(dist, name, function)


def _seconds(spans: list) -> float:
    """The total of `timed_collectives` spans: seconds, or CUDA event pairs (read once the GPU is done)."""
    if spans and not isinstance(spans[0], float):
        torch.cuda.synchronize()
        return sum(start.elapsed_time(end) / 1000 for start, end in spans)
    return sum(spans)


def ensure_random_weights(weights: Path, size: str, device: torch.device, dtype: torch.dtype) -> None:
    """Write random weights of `size` into `weights` (hub layout) unless the original variant's are there."""
    if find_missing(weights, required_components(("original",))):
        save_random_weights(size, weights, device, dtype)


def _engine(weights: Path, device: torch.device, dtype: torch.dtype, gpus: int):
    return load_engine(
        EngineConfig(
            weights_dir=weights,
            variants=("original",),
            device=device.type,
            dtype=str(dtype).removeprefix("torch."),
            memory_mode="high" if device.type == "cuda" else "auto",
            gpus=str(gpus),
        )
    )


def _reset_peaks(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)


def measure(engine, gpus: int, device, dtype, size, image: Path, args, case: forward.ForwardCase | None) -> dict:
    """Forward and end-to-end runs on one engine; returns the results and, under "_outputs", the tensors."""
    models = engine.models
    model = models.transformers["original"]
    group = engine.placement.parallel
    result: dict = {"gpus": gpus, "startup_s": dict(engine.timings)}
    outputs: dict = {}
    if group is not None:
        group.worker_peak_memory()  # the workers' peaks restart here, as rank 0's do
    _reset_peaks(device)
    if not args.e2e_only:
        # The same inputs on both engines: the 1-GPU run draws them, the N-GPU run reuses them on its model.
        case = replace(case, model=model) if case else forward.ForwardCase.random(model, device, dtype, *size)
        runner = group.transformer(model, "original") if group is not None else PackedTransformer(model, device)
        prepared = runner.prepare_section(case.inputs, case.latents.shape[3], case.latents.shape[4])
        outputs["velocity"] = case.run(runner, section=prepared).float().cpu()
        result["forward_s"] = median_seconds(lambda: case.run(runner, section=prepared), device, 2, args.repeat)
        if group is not None:
            with timed_collectives(device) as spans:
                for _ in range(args.repeat):
                    case.run(runner, section=prepared)
                result["communication_per_forward_s"] = _seconds(spans) / args.repeat
                result["collectives_per_forward"] = len(spans) // args.repeat
        outputs["case"] = case
        print(f"{gpus} GPU(s): forward {result['forward_s']:.3f} s", flush=True)
    if not args.forward_only:
        end_to_end(engine, image, size, PackedTransformer, "none", 1.0, 1, device)  # warm-up: untimed
        run = end_to_end(engine, image, size, PackedTransformer, "none", args.e2e_seconds, args.steps, device)
        outputs["latents"] = run.pop("latents")
        run.pop("pixels")
        result["e2e"] = run
        print(f"{gpus} GPU(s): end to end {run['total']:.1f} s", flush=True)
    result["peak_memory"] = {"rank 0": peak_memory(device) or {"peak_rss_gib": peak_rss_gib()}}
    if group is not None:
        for rank, peaks in zip(group.ranks(), group.worker_peak_memory()):
            result["peak_memory"][f"rank {rank}"] = peaks
    result["_outputs"] = outputs
    return result


def _free(engine) -> None:
    engine.close()
    engine.models = None
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def parallel(device, dtype, size, image: Path, args, report: dict) -> dict:
    """1 GPU, then `args.gpus` GPUs, on engines loaded from `args.weights`; `report` with the results so far is
    written to `args.out` after each."""
    weights, gpus = args.weights, args.gpus
    ensure_random_weights(weights, args.size, device, dtype)
    results: dict = {}
    case = None
    one = None
    for count in (1, gpus):
        engine = _engine(weights, device, dtype, count)
        try:
            run = measure(engine, count, device, dtype, size, image, args, case)
        finally:
            _free(engine)
        outputs = run.pop("_outputs")
        if "case" in outputs:  # the inputs only: holding the engine's model would keep its GPU memory
            case = replace(outputs["case"], model=None)
        results[f"{count}_gpu"] = run
        if count == 1:
            one = outputs
        else:
            _compare(run, outputs, one)
        args.out.write_text(json.dumps({**report, "parallel": results}, indent=2, default=str))  # survives a timeout
    return results


def _compare(run: dict, outputs: dict, one: dict) -> None:
    """Relative L2 of the N-GPU outputs to the 1-GPU ones, and the speed-ups."""
    if "velocity" in outputs:
        run["forward_relative_l2"] = relative_l2(outputs["velocity"], one["velocity"])
    if "latents" in outputs:
        run["e2e_latents_relative_l2"] = relative_l2(outputs["latents"], one["latents"])


def table(results: dict, gpus: int) -> str:
    """A short table: forward and end-to-end seconds for 1 and N GPUs, speed-ups, differences, communication."""
    one, many = results["1_gpu"], results[f"{gpus}_gpu"]
    rows = [("", "1 GPU", f"{gpus} GPUs", "speed-up")]
    if "forward_s" in one:
        a, b = one["forward_s"], many["forward_s"]
        rows.append(("forward (s)", f"{a:.3f}", f"{b:.3f}", f"{a / b:.2f}x"))
        rows.append(("communication per forward (s)", "-", f"{many['communication_per_forward_s']:.3f}", ""))
        rows.append(("forward relative L2", "-", f"{many['forward_relative_l2']:.2e}", ""))
    if "e2e" in one:
        a, b = one["e2e"]["total"], many["e2e"]["total"]
        rows.append(("end to end (s)", f"{a:.1f}", f"{b:.1f}", f"{a / b:.2f}x"))
        rows.append(("end-to-end latents relative L2", "-", f"{many['e2e_latents_relative_l2']:.2e}", ""))
    for rank, peaks in many["peak_memory"].items():  # the first figure: allocated on a GPU, resident on the CPU
        kind, value = next(iter(peaks.items()))
        before = f"{one['peak_memory'][rank][kind]:.1f}" if rank in one["peak_memory"] else "-"
        rows.append((f"{kind.removesuffix('_gib')} GiB, {rank}", before, f"{value:.1f}", ""))
    width = max(len(row[0]) for row in rows)
    return "\n".join(f"{row[0]:<{width}}  {row[1]:>9}  {row[2]:>9}  {row[3]}" for row in rows)
