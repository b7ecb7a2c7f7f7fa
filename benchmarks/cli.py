"""The benchmarks' command line: our engine against the reference's path, side by side in one run.

    python -m benchmarks --out bench.json [--e2e [--no-teacache-runs | --teacache-runs-only] [--magcache]
                         [--compare-reference-decode | --reference-decode] [--variant original|f1]]
                         [--fp8] [--decode] [--cfg-batch] [--size full|tiny]
    python -m benchmarks --save-random-weights /tmp/w
    python -m benchmarks --low-vram --weights /tmp/w --vram-cap-gb 6 8 [--e2e-seconds 5 --steps 25]
                         [--adaptive] [--low-vram-fp8] [--magcache]
    python -m benchmarks --cold-start --weights /tmp/w [--before-code OLD_TREE]     (cold_start.py)
    python -m benchmarks --parallel --gpus 2 --weights /tmp/w [--e2e-seconds 5 --steps 25]
                         [--forward-only | --e2e-only]                              (parallel.py)

Models are the full-size architectures (docs/ALGORITHM.md §1.2) with random weights, so no checkpoint is needed.
Reports: seconds per transformer forward (stock, then ours, then ours in FP8) at 544x704 with window 9, the relative
L2 difference of the outputs, optionally end-to-end seconds of a 5-second 640-bucket generation per stage (stock
loop and ours, TeaCache off and on, MagCache), and peak GPU memory. Stock runs first: our acceleration compiles
the blocks in place. The low-VRAM benchmark loads random weights saved in the hub layout, as the service loads
real ones. `--size tiny` runs the same code on the tiny test architecture (for checking the script on a CPU).
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from framepack.config import ATTENTION_CHOICES, EngineConfig
from framepack.logs import configure_logging
from framepack.models.float8 import quantize_transformer_blocks
from framepack.runtime.acceleration import accelerate
from framepack.runtime.compilation import CompileRecord
from framepack.runtime.memory import MemoryPlan
from framepack.runtime.placement import place_models
from framepack.runtime.transformer import PackedTransformer
from framepack.runtime.vae_acceleration import accelerate_vae
from framepack.serving.engine import Engine

from . import cold_start, forward, parallel
from .end_to_end import EndToEndRuns, preview_cost
from .low_vram import low_vram, save_into
from .measure import peak_memory, relative_l2
from .random_models import random_models, save_random_weights
from .reference import StockTransformer

BUCKET = (544, 704)
TINY_BUCKET = (32, 48)  # (height, width): the VAE decode, most of a tiny run on the CPU, stays small


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--out", type=Path, default=Path("bench.json"))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--e2e", action="store_true", help="also time 5-second generations")
    parser.add_argument("--no-teacache-runs", action="store_true", help="with --e2e: skip the TeaCache-on pair")
    parser.add_argument("--teacache-runs-only", action="store_true", help="with --e2e: skip the TeaCache-off pair")
    parser.add_argument(
        "--magcache",
        action="store_true",
        help="with --e2e: also our loop with MagCache at the reference's defaults (and with FP8, given --fp8); "
        "with --low-vram: every run with MagCache",
    )
    parser.add_argument("--e2e-seconds", type=float, default=5.0)
    parser.add_argument(
        "--variant",
        choices=("original", "f1"),
        default="original",
        help="with --e2e: the variant generated (F1 runs the same random transformer)",
    )
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument(
        "--reference-decode",
        dest="our_decode",
        action="store_false",
        help="with --e2e: our loop decodes as the stock loop does, in line and each section "
        "whole (default: in the background where memory allows, shared tiles once)",
    )
    parser.add_argument(
        "--compare-reference-decode",
        action="store_true",
        help="with --e2e: also run our loop with the reference's decode",
    )
    parser.add_argument(
        "--attention",
        choices=ATTENTION_CHOICES,
        default="auto",
        help="our path's attention kernel (default: the fastest that works)",
    )
    parser.add_argument(
        "--kernels",
        nargs="*",
        default=[],
        choices=ATTENTION_CHOICES[1:],
        help="also time our eager forward with each of these attention kernels, against the stock forward",
    )
    parser.add_argument(
        "--preview-cost",
        action="store_true",
        help="also time our loop's sampling with and without the studio's live preview (--e2e-seconds, --steps)",
    )
    parser.add_argument(
        "--shapes-compare",
        action="store_true",
        help="also time our forward with the blocks compiled for static shapes against dynamic shapes",
    )
    parser.add_argument("--fp8", action="store_true", help="also time the FP8 mode (last: it replaces layers)")
    parser.add_argument("--decode", action="store_true", help="also time one section's VAE decode, diffusers' and ours")
    parser.add_argument(
        "--cfg-batch",
        action="store_true",
        help="also time both CFG branches as one batch-2 call against two batch-1 calls",
    )
    parser.add_argument(
        "--low-vram", action="store_true", help="benchmark low-VRAM mode against high-VRAM (needs --weights)"
    )
    parser.add_argument("--vram-cap-gb", type=float, nargs="*", default=[6.0])
    parser.add_argument(
        "--adaptive",
        action="store_true",
        help="with --low-vram: each cap gets the placement of a GPU that size (a memory budget), not 'low'",
    )
    parser.add_argument(
        "--low-vram-fp8", action="store_true", help="with --low-vram: the capped engines run FP8 blocks"
    )
    parser.add_argument(
        "--short-caps-gb",
        type=float,
        nargs="*",
        default=[],
        help="with --low-vram: more caps, each run at --short-seconds/--short-steps",
    )
    parser.add_argument("--short-seconds", type=float, default=1.2)
    parser.add_argument("--short-steps", type=int, default=10)
    parser.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="weights folder to load from (hub layout), e.g. written by --save-random-weights",
    )
    parser.add_argument(
        "--cold-start",
        action="store_true",
        help="time fresh processes from import to READY and their first predictions (needs --weights)",
    )
    parser.add_argument("--cold-start-runs", nargs="*", choices=cold_start.RUNS, default=list(cold_start.RUNS))
    parser.add_argument("--before-code", type=Path, default=None, help="with --cold-start: an older code tree")
    parser.add_argument("--scratch", type=Path, default=None, help="with --cold-start: where videos and logs go")
    parser.add_argument(
        "--parallel",
        action="store_true",
        help="1 GPU against --gpus GPUs (sequence parallel), on engines loaded from --weights (random weights are "
        "written there first if it holds none); on the CPU, processes",
    )
    parser.add_argument("--gpus", type=int, default=2, help="with --parallel: GPUs (or CPU processes) to compare")
    parser.add_argument("--forward-only", action="store_true", help="with --parallel: skip the end-to-end runs")
    parser.add_argument("--e2e-only", action="store_true", help="with --parallel: skip the forward timing")
    parser.add_argument(
        "--save-random-weights",
        type=Path,
        default=None,
        metavar="DIR",
        help="write random weights of --size in the hub layout to DIR and exit",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging("stdout")
    if args.cold_start:
        if args.weights is None:
            parser.error("--cold-start loads from disk like the service: pass --weights")
        return cold_start.main(
            args.weights, args.cold_start_runs, args.before_code, args.out, args.scratch, args.size == "tiny"
        )
    if args.no_teacache_runs and args.teacache_runs_only:
        parser.error("--no-teacache-runs and --teacache-runs-only leave no end-to-end run")
    if args.parallel and (args.weights is None or args.gpus < 2 or (args.forward_only and args.e2e_only)):
        parser.error("--parallel needs --weights, --gpus 2 or more, and not both --forward-only and --e2e-only")
    if args.low_vram and args.weights is None:
        parser.error("--low-vram loads from disk like the service: pass --weights (see --save-random-weights)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.save_random_weights is not None:
        save_random_weights(args.size, args.save_random_weights, device, dtype)
        return 0
    size = BUCKET if args.size == "full" else TINY_BUCKET
    report: dict = {
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "size": args.size,
        "bucket": list(size),
        "command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    image = _random_image(size)
    if args.parallel:
        report["parallel"] = parallel.parallel(device, dtype, size, image, args, report)
        _finish(report, args.out)
        print(parallel.table(report["parallel"], args.gpus))  # last: what a reader looks for
        return 0
    if args.low_vram:
        runs = [(cap, args.e2e_seconds, args.steps) for cap in args.vram_cap_gb]
        runs += [(cap, args.short_seconds, args.short_steps) for cap in args.short_caps_gb]
        report["low_vram"] = low_vram(
            args.weights,
            runs,
            device,
            dtype,
            size,
            image,
            save_into(report, args.out),
            args.adaptive,
            args.low_vram_fp8,
            "magcache" if args.magcache else "none",
        )
    else:
        compare_paths(args, device, dtype, size, image, report)
    return _finish(report, args.out)


def _random_image(size: tuple[int, int]) -> Path:
    """A random start image in a folder of its own (removed at exit): two runs at once never share an MP4."""
    scratch = Path(tempfile.mkdtemp(prefix="framepack-bench-"))
    atexit.register(shutil.rmtree, scratch, True)
    image = scratch / "input.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)).save(image)
    return image


def compare_paths(args, device: torch.device, dtype: torch.dtype, size: tuple[int, int], image: Path, report: dict):
    """Stock forward and loop first (our acceleration changes the model in place), then ours, then FP8."""
    started = time.perf_counter()
    models = random_models(args.size, device, dtype, device)
    mode = "high" if device.type == "cuda" else "cpu"
    # Both variants are the same model here, so the engine keeps both resident and never moves one for the other.
    placement = place_models(models, MemoryPlan(mode, "benchmark", resident_variants=2))
    report["build_seconds"] = time.perf_counter() - started
    if device.type == "cuda":
        report["models_allocated_gib"] = torch.cuda.memory_allocated(device) / 2**30
    model = models.transformers["original"]
    models.transformers["f1"] = model  # the same architecture: F1 differs only in its trained weights
    case = forward.ForwardCase.random(model, device, dtype, *size)
    engine = Engine(EngineConfig(device=device.type, compile="off"), models, placement)
    e2e = EndToEndRuns(engine, image, size, device, args.e2e_seconds, args.steps, args.variant, report, args.out)
    teacache_off, teacache_on = not args.teacache_runs_only, not args.no_teacache_runs

    stock_report, stock_out = forward.time_stock(case, device, args.repeat)
    report.update(stock_report)
    print("stock forward", report["forward_stock_s"], flush=True)
    fp32_out = None
    if device.type == "cuda":
        report["noise_floor"], fp32_out = forward.noise_floor(case, stock_out)
        print("noise floor", report["noise_floor"], flush=True)
    if args.kernels:
        report["attention_kernels"] = forward.attention_kernels(
            case, device, args.repeat, args.kernels, stock_out, fp32_out
        )
    if args.e2e:
        # Untimed: the encoders' and the VAE's first use (kernel selection) is not charged to the stock loop.
        e2e.warm_up("stock_warmup_s", StockTransformer, our_decode=False)
        if teacache_off:
            e2e.run("stock_teacache_off", StockTransformer, "none")
        if teacache_on:
            e2e.run("eager_teacache_on", PackedTransformer, "teacache")

    compile_with = CompileRecord() if device.type == "cuda" and not args.no_compile else None
    applied = accelerate(model, device, attention=args.attention, compile_blocks_with=compile_with)
    report["acceleration"] = {"attention": applied.attention, "compiled": applied.compiled, "notes": applied.notes}
    compile_norms = device.type == "cuda" and not args.no_compile
    if args.decode:
        report["decode"] = forward.vae_decode_speed(models, device, size, compile_norms)
        print("decode", report["decode"], flush=True)
    else:
        accelerate_vae(models.vae, compile_norms=compile_norms)
    ours_report, ours_out = forward.time_ours(case, device, args.repeat)
    report.update(ours_report)
    report["forward_speedup"] = report["forward_stock_s"] / report["forward_ours_s"]
    report["forward_relative_l2"] = relative_l2(ours_out, stock_out)
    if args.shapes_compare and compile_with is not None:
        report["shapes_compare"] = forward.static_against_dynamic_shapes(case, device, args.repeat)
        print("static against dynamic shapes", report["shapes_compare"], flush=True)
    if args.cfg_batch:
        report["cfg_batch"] = forward.cfg_batch(case, device, args.repeat)
        print("cfg batch", report["cfg_batch"], flush=True)
    if fp32_out is not None:
        report["noise_floor"]["ours_vs_fp32"] = relative_l2(ours_out, fp32_out)
    print({k: report[k] for k in ("forward_stock_s", "forward_ours_s", "forward_speedup", "forward_relative_l2")})
    if args.e2e:
        _our_loop(args, e2e, teacache_off, teacache_on)
    if args.preview_cost:
        report["preview_cost"] = preview_cost(e2e)
    if args.fp8:
        _fp8(args, case, device, e2e, report, stock_out, ours_out, fp32_out, teacache_off)
    report.update(peak_memory(device))


def _our_loop(args, e2e: EndToEndRuns, teacache_off: bool, teacache_on: bool) -> None:
    """Our loop (compiled) against the stock loop with TeaCache off and the eager loop with it on."""
    report = e2e.report
    e2e.warm_up("e2e_warmup_s", PackedTransformer, our_decode=True)
    if teacache_off:
        e2e.run("ours_teacache_off", PackedTransformer, "none", our_decode=args.our_decode)
        if args.compare_reference_decode:
            e2e.compare_reference_decode("teacache_off", PackedTransformer, "none")
        report["e2e_latents_relative_l2"] = e2e.latents_relative_l2("ours_teacache_off", "stock_teacache_off")
        report["e2e_speedup_teacache_off"] = e2e.speedup("stock_teacache_off", "ours_teacache_off")
    if teacache_on:
        e2e.run("ours_teacache_on", PackedTransformer, "teacache", our_decode=args.our_decode)
        if args.compare_reference_decode:
            e2e.compare_reference_decode("teacache_on", PackedTransformer, "teacache")
        report["e2e_speedup_teacache_on"] = e2e.speedup("eager_teacache_on", "ours_teacache_on")
        report["e2e_teacache_on_latents_relative_l2"] = e2e.latents_relative_l2("ours_teacache_on", "eager_teacache_on")
    if args.magcache:
        e2e.run("ours_magcache", PackedTransformer, "magcache", our_decode=args.our_decode)
        _against_exact(e2e, "ours_magcache", teacache_off)


def _against_exact(e2e: EndToEndRuns, name: str, teacache_off: bool) -> None:
    """A step-cache run's speed-up over the reference loop, and its latents' distance from our exact run."""
    if teacache_off:
        e2e.report[f"e2e_speedup_{name}"] = e2e.speedup("stock_teacache_off", name)
        e2e.report[f"e2e_{name}_latents_relative_l2_vs_ours_exact"] = e2e.latents_relative_l2(name, "ours_teacache_off")


def _fp8(args, case, device, e2e: EndToEndRuns, report: dict, stock_out, ours_out, fp32_out, teacache_off) -> None:
    """The FP8 layers last: they replace the model's Linear layers in place."""
    torch._dynamo.reset()  # compiled graphs hold the bf16 layers; drop them so the replaced weights are freed
    report["fp8_layers"] = quantize_transformer_blocks(case.model)
    fp8_report, fp8_out = forward.time_ours(case, device, args.repeat, suffix="_fp8")
    report.update(fp8_report)
    report["forward_speedup_fp8"] = report["forward_stock_s"] / report["forward_ours_fp8_s"]
    report["forward_fp8_relative_l2_vs_ours_bf16"] = relative_l2(fp8_out, ours_out)
    report["forward_fp8_relative_l2_vs_stock"] = relative_l2(fp8_out, stock_out)
    if fp32_out is not None:
        report["noise_floor"]["ours_fp8_vs_fp32"] = relative_l2(fp8_out, fp32_out)
    print({k: v for k, v in report.items() if "fp8" in k}, flush=True)
    if args.e2e and teacache_off:
        e2e.warm_up("e2e_warmup_fp8_s", PackedTransformer, our_decode=True)
        e2e.run("ours_fp8_teacache_off", PackedTransformer, "none", our_decode=args.our_decode)
        report["e2e_speedup_fp8_teacache_off"] = e2e.speedup("stock_teacache_off", "ours_fp8_teacache_off")
        report["e2e_fp8_latents_relative_l2_vs_stock"] = e2e.latents_relative_l2(
            "ours_fp8_teacache_off", "stock_teacache_off"
        )
    if args.e2e and args.magcache:
        e2e.run("ours_fp8_magcache", PackedTransformer, "magcache", our_decode=args.our_decode)
        _against_exact(e2e, "ours_fp8_magcache", teacache_off)


def _finish(report: dict, out: Path) -> int:
    out.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps({k: v for k, v in report.items() if k != "e2e"}, indent=1, default=str))
    for name, run in report.get("e2e", {}).items():
        stages = ", ".join(f"{k} {v:.1f}" for k, v in run.items() if isinstance(v, float))
        print(f"{name:22s} {stages}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
