"""The studio's worker on a GPU, without the browser: a run with previews and per-section videos, then a Stop.

Random full-size models (benchmarks/random_models.py), resident and compiled as the service runs them; prints
the events' kinds and counts and exits non-zero if a run did not end as expected.

    python scripts/gpu_studio_check.py --out /tmp/studio-check
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.random_models import random_models  # noqa: E402
from framepack.config import EngineConfig  # noqa: E402
from framepack.runtime.acceleration import accelerate_models  # noqa: E402
from framepack.runtime.memory import MemoryPlan  # noqa: E402
from framepack.runtime.placement import place_models  # noqa: E402
from framepack.serving.engine import Engine  # noqa: E402
from framepack.serving.presets import PresetStore  # noqa: E402
from framepack.serving.studio import Studio  # noqa: E402


def run(studio: Studio, inputs: dict, stop_after_sections: int | None = None) -> dict:
    job, counts, started = studio.start(inputs), {}, time.monotonic()
    while True:
        event = job.events.get()
        counts[event.kind] = counts.get(event.kind, 0) + 1
        if event.kind == "section" and stop_after_sections and counts["section"] >= stop_after_sections:
            studio.stop()
        if event.kind in ("done", "stopped", "failed"):
            return {
                "end": event.kind,
                "text": event.text,
                "path": event.path,
                "counts": counts,
                "seconds": time.monotonic() - started,
            }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp()))
    parser.add_argument("--size", choices=("full", "tiny"), default="full", help="tiny: a CPU dry run")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    device, dtype = torch.device("cuda" if cuda else "cpu"), torch.bfloat16 if cuda else torch.float32
    models = random_models(args.size, device, dtype, device)
    models.transformers["f1"] = models.transformers["original"]
    plan = MemoryPlan("high" if cuda else "cpu", "check")
    config = EngineConfig(weights_dir=args.out, device=device.type, dtype=str(dtype).removeprefix("torch."))
    placement = place_models(models, plan)
    accelerate_models(models, placement, config)
    studio = Studio(Engine(config, models, placement), args.out / "outputs", PresetStore(args.out / "p.json"))
    image = args.out / "start.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (544, 704, 3), dtype=np.uint8)).save(image)
    base = {
        "input_image": image,
        "prompt": "a dancer",
        "seed": 1,
        "steps": 6,
        "use_teacache": False,
        "total_video_length_seconds": 2.4,
    }
    if args.size == "tiny":
        base.update(width=96, height=64, latent_window_size=3, total_video_length_seconds=1.2)
    results = {"full": run(studio, base), "stopped": run(studio, {**base, "steps": 25}, stop_after_sections=1)}
    for name, result in results.items():
        print(name, result["end"], result["counts"], f"{result['seconds']:.1f} s", result["text"][:120], flush=True)
    ok = (
        results["full"]["end"] == "done"
        and results["full"]["counts"].get("section")
        and results["full"]["counts"].get("preview")
        and results["stopped"]["end"] == "stopped"
        and results["stopped"]["path"] is not None
    )
    print("studio check:", "passed" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
