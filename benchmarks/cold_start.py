"""Cold start: what a new container's first user waits for, each case in a fresh process.

    python -m benchmarks --cold-start --weights DIR [--cold-start-runs before warm-cache after ...]
                         [--before-code OLD_TREE] [--scratch DIR] --out cold.json

A run starts a fresh Python process in a code tree (this one, or `--before-code`, a copy of an older commit),
which does what Cog's worker does: `import predict` (timed: the imports, and in this tree the weights
prefetch that predict.py starts), `Predictor().setup()` (timed, split into phases by the engine's own
timings where the tree reports them), then a sequence of predictions, each timed with the number of graphs
dynamo compiled for it:
- `first`: one section, 25 steps, the original variant, the 640 bucket; `warm`: the same request again;
- `new prompt length`, `other bucket` (a portrait image: another size of the 640 family), `other variant` (f1).
Runs may be split across invocations with the same `--out` and `--scratch`: the report is extended.
Before a cold run the weight files are dropped from the page cache (posix_fadvise DONTNEED, no root needed).
Every process gets an empty inductor cache and FlashAttention 4 kernel cache of its own, as a new container
has; in this tree, the kernels come from a compile cache in the scratch folder, which the `warm-cache` run
writes first (`python -m framepack warm-cache`, also timed). The read speed of the same files alone, cold,
is measured first: it is the ceiling for loading them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from framepack.runtime.prefetch import Prefetch, weight_files

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("original", "f1")
RUNS = ("before", "warm-cache", "after", "after-warm-page-cache")
SHORT_PROMPT = "A cat walks on the beach."
LONG_PROMPT = (
    "A cat walks slowly along the beach at sunset, waves roll in behind it, the camera follows at a distance "
    "and the light turns orange, then purple."
)

# Run in the child: the same calls as Cog's worker, timed; one JSON line per event on stdout.
CHILD = """
import json, sys, time
started = time.time()
def report(**fields):
    print("COLD-START " + json.dumps(fields), flush=True)
import predict
report(event="imported", seconds=time.time() - started)
predictor = predict.Predictor()
setup_started = time.time()
predictor.setup()
service = predictor.service
report(event="ready", seconds=time.time() - setup_started, at=time.time(),
       phases=getattr(service, "startup_timings", {}))
from pathlib import Path
from torch._dynamo.utils import counters
for name, inputs in json.loads(sys.argv[1]):
    inputs = {**inputs, "input_image": Path(inputs["input_image"])}
    graphs = counters["stats"]["unique_graphs"]
    t = time.time()
    output = service.predict(inputs)
    seconds = time.time() - t
    keep = Path(sys.argv[2]) / (name.replace(" ", "-") + ".mp4")
    keep.write_bytes(output.read_bytes())
    report(event="prediction", name=name, seconds=seconds, graphs=counters["stats"]["unique_graphs"] - graphs)
"""


def drop_from_page_cache(files: list[Path]) -> None:
    os.sync()
    for path in files:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)


def read_ceiling(files: list[Path]) -> dict:
    """GiB/s reading `files` cold: one sequential reader, then the prefetcher's parallel readers."""
    total = sum(path.stat().st_size for path in files)
    drop_from_page_cache(files)
    started = time.monotonic()
    buffer = bytearray(16 * 2**20)
    for path in files:
        with open(path, "rb", buffering=0) as handle:
            while handle.readinto(buffer):
                pass
    sequential = time.monotonic() - started
    drop_from_page_cache(files)
    _, parallel = Prefetch(files).run().wait()
    return {
        "gib": total / 2**30,
        "sequential_gib_s": total / 2**30 / sequential,
        "parallel_gib_s": total / 2**30 / parallel,
        "seconds_at_parallel_speed": parallel,
    }


def make_images(folder: Path) -> dict[str, Path]:
    """A landscape and a portrait start image (two sizes of the 640 bucket family)."""
    rng = np.random.default_rng(0)
    images = {}
    for name, (height, width) in {"landscape": (480, 640), "portrait": (640, 480)}.items():
        images[name] = folder / f"{name}.png"
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(images[name])
    return images


def predictions(images: dict[str, Path], full: bool, tiny: bool = False) -> list[tuple[str, dict]]:
    """The requests of a run; `tiny`: 2 steps at 48x32 and 32x48 instead (the tiny weights on a CPU)."""
    base = {
        "prompt": SHORT_PROMPT,
        "input_image": str(images["landscape"]),
        "seed": 1,
        "total_video_length_seconds": 1.2,  # one section of 9 latent frames
        "steps": 2 if tiny else 25,
    }
    landscape, portrait = ({"width": 48, "height": 32}, {"width": 32, "height": 48}) if tiny else ({}, {})
    base.update(landscape)
    sequence = [("first", base), ("warm", base)]
    if full:
        sequence += [
            ("new prompt length", {**base, "prompt": LONG_PROMPT}),
            ("other bucket", {**base, "input_image": str(images["portrait"]), **portrait}),
            ("other variant", {**base, "model_variant": "f1"}),
        ]
    return sequence


def run_child(code: Path, env: dict[str, str], sequence, keep: Path, log: Path) -> dict:
    """One fresh process in `code`; its events, and READY measured from the moment it was started."""
    keep.mkdir(parents=True, exist_ok=True)
    spawned = time.time()
    child = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(sequence), str(keep)],
        cwd=code,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log.write_text(child.stdout)
    events = [json.loads(line[len("COLD-START ") :]) for line in child.stdout.splitlines() if "COLD-START " in line]
    result: dict = {"returncode": child.returncode, "log": str(log), "predictions": {}}
    for event in events:
        if event["event"] == "imported":
            result["import_s"] = event["seconds"]
        elif event["event"] == "ready":
            result.update(setup_s=event["seconds"], ready_s=event["at"] - spawned, phases=event["phases"])
        else:
            result["predictions"][event["name"]] = {"seconds": event["seconds"], "graphs": event["graphs"]}
    if child.returncode != 0:
        result["error_tail"] = log.read_text()[-3000:]
    return result


def child_env(scratch: Path, name: str, weights: Path, code: Path, own_kernel_cache: bool) -> dict[str, str]:
    """A new container's caches: empty inductor and FA4 caches; the compile cache only where the tree has one."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FRAMEPACK_")}
    env.pop("FLASH_ATTENTION_CUTE_DSL_CACHE_DIR", None)
    env["PYTHONPATH"] = os.pathsep.join([str(code), *filter(None, [os.environ.get("PYTHONPATH")])])
    inductor = scratch / f"inductor-{name}"
    shutil.rmtree(inductor, ignore_errors=True)  # a run of an earlier invocation must not leave kernels behind
    env["TORCHINDUCTOR_CACHE_DIR"] = str(inductor)
    env["FRAMEPACK_WEIGHTS"] = str(weights)
    env["FRAMEPACK_COMPILE_CACHE"] = str(scratch / "compile-cache")  # the benchmark's own, never the weights
    env["FRAMEPACK_OUTPUT_DIR"] = str(scratch / f"outputs-{name}")
    if own_kernel_cache:  # the older tree has no compile cache: FA4's kernels start from an empty folder
        env["FLASH_ATTENTION_CUTE_DSL_CACHE_DIR"] = str(scratch / f"fa4-{name}")
    return env


def cold_start(
    weights: Path, runs: list[str], before_code: Path | None, out: Path, scratch: Path, tiny: bool = False
) -> dict:
    """Run `runs` (in RUNS order) and return the report; it is also written to `out` after each run."""
    files = list(dict.fromkeys(path.resolve() for path in weight_files(weights, VARIANTS)))  # linked: once
    # An earlier invocation's report in `out` is extended (runs may be split across invocations).
    report: dict = json.loads(out.read_text()) if out.is_file() else {"runs": {}}
    if "read_ceiling" not in report:
        report["read_ceiling"] = read_ceiling(files)
    out.write_text(json.dumps(report, indent=1))
    images = make_images(scratch)
    for name in RUNS:
        if name not in runs:
            continue
        code = before_code if name == "before" else ROOT
        if code is None:
            raise SystemExit("--cold-start-runs before needs --before-code")
        env = child_env(scratch, name, weights, code, own_kernel_cache=name == "before")
        if name == "warm-cache":
            shutil.rmtree(scratch / "compile-cache", ignore_errors=True)
            drop_from_page_cache(files)
            started = time.time()
            done = subprocess.run(
                [sys.executable, "-m", "framepack", "warm-cache"], cwd=ROOT, env=env, text=True, capture_output=True
            )
            report["runs"][name] = {
                "seconds": time.time() - started,
                "returncode": done.returncode,
                "log_tail": done.stderr[-2500:],
            }
        else:
            if name != "after-warm-page-cache":
                drop_from_page_cache(files)
            sequence = predictions(images, full=name != "after-warm-page-cache", tiny=tiny)
            report["runs"][name] = run_child(code, env, sequence, scratch / f"videos-{name}", scratch / f"{name}.log")
        out.write_text(json.dumps(report, indent=1))
        print(f"{name}: {json.dumps(report['runs'][name])[:600]}", flush=True)
    report["output_difference"] = compare_outputs(scratch)
    out.write_text(json.dumps(report, indent=1))
    return report


def compare_outputs(scratch: Path) -> dict:
    """Relative L2 of each prediction's frames, this tree against the older one (same request and seed), for
    the runs whose videos are in `scratch` (possibly from an earlier invocation)."""

    from .measure import read_mp4_frames

    try:
        import av  # noqa: F401  (read_mp4_frames decodes with PyAV, which the GPU stack need not have)
    except ImportError:
        return {"skipped": "PyAV is not installed"}
    differences = {}
    for video in sorted((scratch / "videos-after").glob("*.mp4")):
        before = scratch / "videos-before" / video.name
        if before.is_file():
            a, b = (read_mp4_frames(path)[0].double() for path in (video, before))
            differences[video.stem] = float((a - b).norm() / b.norm()) if a.shape == b.shape else "shapes differ"
    return differences


def print_table(report: dict) -> None:
    ceiling = report["read_ceiling"]
    print(
        f"weights {ceiling['gib']:.1f} GiB; cold read alone: {ceiling['sequential_gib_s']:.2f} GiB/s sequential, "
        f"{ceiling['parallel_gib_s']:.2f} GiB/s with 8 readers ({ceiling['seconds_at_parallel_speed']:.1f} s)"
    )
    names = ["first", "warm", "new prompt length", "other bucket", "other variant"]
    print(f"{'run':24}{'import':>8}{'setup':>8}{'READY':>8}" + "".join(f"{n[:14]:>16}" for n in names))
    for run, result in report["runs"].items():
        if "ready_s" not in result:
            print(f"{run:24}{result.get('seconds', float('nan')):>8.1f}  (rc {result.get('returncode')})")
            continue
        cells = [
            f"{p['seconds']:7.1f}s/{p['graphs']:>2}g" if (p := result["predictions"].get(n)) else f"{'-':>15}"
            for n in names
        ]
        print(
            f"{run:24}{result['import_s']:>8.1f}{result['setup_s']:>8.1f}{result['ready_s']:>8.1f}"
            + "".join(f"{c:>16}" for c in cells)
        )
        if result.get("phases"):
            print("    setup phases: " + ", ".join(f"{k} {v:.1f}" for k, v in result["phases"].items()))
    if report.get("output_difference"):
        print("frames, relative L2 to the older tree: " + json.dumps(report["output_difference"]))


def main(
    weights: Path, runs: list[str], before_code: Path | None, out: Path, scratch: Path | None, tiny: bool = False
) -> int:
    scratch = scratch or Path(tempfile.mkdtemp(prefix="framepack-cold-start-"))
    scratch.mkdir(parents=True, exist_ok=True)
    report = cold_start(weights, runs, before_code, out, scratch, tiny)
    print_table(report)
    return 0 if all(r.get("returncode") == 0 for r in report["runs"].values()) else 1
