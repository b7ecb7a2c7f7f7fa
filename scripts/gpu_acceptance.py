"""GPU acceptance run: the product as it is deployed, checked request by request against the eager path.

Writes random full-size weights in the hub layout (both variants share one random transformer), then serves
them with Cog's HTTP server (`python -m cog.server.http`, as the image that `cog build` makes runs it) in
high-VRAM mode with compiled blocks and the best attention kernel, once in bf16 and once with FP8 layers. It
sends both variants, the LoRA sequence A, A, none, B, A+B, none, TeaCache, the creative controls and a cancel
mid-run followed by a prediction. A third server runs a few of the requests with SageAttention asked for
(FRAMEPACK_ATTENTION=sage): it must install, pass its probe and serve, and its distance from the eager path is
reported (SageAttention quantises Q and K to INT8, so it is not held to the bf16 bound). Then an eager
service (FRAMEPACK_COMPILE=off) in this process makes the same requests, and each served video is compared
with its eager twin (relative L2 of the decoded frames; every MP4 is lossless, CRF 0). A LoRA must move the
video far more than compilation does.

    python scripts/gpu_acceptance.py --weights /tmp/random-weights --out /tmp/acceptance   # on a GPU
    python scripts/gpu_acceptance.py --tiny --out /tmp/acceptance                          # CPU dry run

Prints a table last and writes acceptance.json and the server logs to --out. Exit code 1 if a check fails.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import requests
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.random_models import save_random_weights  # noqa: E402
from framepack.core.weights import transformer_component  # noqa: E402
from framepack.models.float8 import quantize_transformer_blocks  # noqa: E402
from framepack.serving.service import FramePackService  # noqa: E402

IMAGES = ROOT / "tests" / "fixtures" / "images"
TINY_WEIGHTS = ROOT / "tests" / "fixtures" / "tiny-weights"
# Compiled against eager, in bf16 on random weights: what "within bf16 noise" is taken to mean for frames.
MAX_FRAMES_RELATIVE_L2 = 5e-2
# A LoRA must move the video this many times more than compiling does (the defect was a LoRA half-applied).
MIN_LORA_EFFECT_OVER_NOISE = 3.0
# The same request on the same server before and after a LoRA: the base weights are restored exactly, so only
# run-to-run nondeterminism of GPU kernels may remain.
MAX_BASE_DRIFT = 1e-3


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def lora_file(model_config: dict, path: Path, targets: tuple[str, ...], seed: int, rank: int = 16) -> str:
    """A PEFT-named LoRA on every block's `targets` layers whose update is about 25% of each weight."""
    from diffusers import HunyuanVideoFramepackTransformer3DModel
    from safetensors.torch import save_file

    with torch.device("meta"):
        model = HunyuanVideoFramepackTransformer3DModel.from_config(model_config)
    generator, state = torch.Generator().manual_seed(seed), {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.split(".", 2)[-1] in targets:
            down = torch.randn(rank, module.in_features, generator=generator) / module.in_features**0.5
            up = torch.randn(module.out_features, rank, generator=generator) * 0.25 / rank**0.5
            state[f"transformer.{name}.lora_A.weight"] = down.to(torch.bfloat16)
            state[f"transformer.{name}.lora_B.weight"] = up.to(torch.bfloat16)
    save_file(state, str(path))
    return str(path)


def requests_to_make(size: tuple[int, int], loras: dict[str, str], tiny: bool) -> dict[str, dict]:
    """name -> inputs. One section of 9 latents (two for the controls), few steps, lossless MP4s."""
    width, height = size
    base = {
        "input_image": data_uri(IMAGES / "start_100x140.png"),
        "prompt": "a dancer on a stage",
        "seed": 11,
        "width": width,
        "height": height,
        "total_video_length_seconds": 1.2,
        "latent_window_size": 9,
        "steps": 4,
        "use_teacache": False,
        "mp4_crf": 0,
    }
    if tiny:
        base["latent_window_size"] = 3
    end = data_uri(IMAGES / "end_100x140.png")
    return {
        "original": base,
        "f1": {**base, "model_variant": "f1"},
        "lora_A": {**base, "lora_weights": loras["A"]},
        "lora_A_again": {**base, "lora_weights": loras["A"]},
        "none_after_A": base,
        "lora_B": {**base, "lora_weights": loras["B"]},
        "lora_A_and_B": {**base, "lora_weights": loras["A"], "extra_lora": loras["B"], "extra_lora_scale": 0.8},
        "none_after_AB": base,
        "f1_lora_A": {**base, "model_variant": "f1", "lora_weights": loras["A"]},
        "teacache": {**base, "use_teacache": True, "steps": 8},
        "controls": {
            **base,
            "total_video_length_seconds": 2.4,
            "section_prompts": "a calm sea\na storm",
            "section_images": [end],
            "section_image_indices": "1",
            "end_image": end,
            "end_image_strength": 0.5,
            "camera_movement": 0.2,
        },
        "after_cancel": base,
    }


FP8_REQUESTS = ("original", "lora_A", "none_after_A", "f1")


class CogServer:
    """`python -m cog.server.http` from the repository root on 127.0.0.1, as the built image runs it."""

    def __init__(self, env: dict[str, str], log: Path, start_timeout: float = 540.0):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        full_env = {
            **os.environ,
            **env,
            "PORT": str(port),
            "COG_PREDICT_TYPE_STUB": "predict.py:Predictor",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        with open(log, "w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cog.server.http", "--host", "127.0.0.1"],
                cwd=ROOT,
                env=full_env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + start_timeout
        while self.health().get("status") != "READY":
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not become READY:\n{log.read_text()[-4000:]}")
            time.sleep(1.0)

    def health(self) -> dict:
        try:
            return requests.get(f"{self.url}/health-check", timeout=5).json()
        except requests.RequestException:
            return {}

    def wait_ready(self) -> None:
        while self.health().get("status") != "READY":
            time.sleep(0.2)

    def predict(self, inputs: dict, prediction_id: str) -> dict:
        self.wait_ready()
        return requests.put(f"{self.url}/predictions/{prediction_id}", json={"input": inputs}, timeout=3600).json()

    def cancel_mid_run(self, inputs: dict, prediction_id: str, after_step: str = "step 2/") -> float:
        """Start an async prediction, cancel it once its logs show `after_step`; seconds until READY again."""
        logs: list[str] = []

        class Hook(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                logs.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))).get("logs") or "")
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        hooks = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
        threading.Thread(target=hooks.serve_forever, daemon=True).start()
        try:
            self.wait_ready()
            requests.put(
                f"{self.url}/predictions/{prediction_id}",
                headers={"Prefer": "respond-async"},
                json={"input": inputs, "webhook": f"http://127.0.0.1:{hooks.server_address[1]}/"},
                timeout=60,
            )
            while not any(after_step in text for text in logs):
                time.sleep(0.1)
            cancelled = time.monotonic()
            requests.post(f"{self.url}/predictions/{prediction_id}/cancel", timeout=60)
            self.wait_ready()
            return time.monotonic() - cancelled
        finally:
            hooks.shutdown()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()


def mp4_frames(path: Path) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of an MP4 through imageio-ffmpeg's ffmpeg (the product's own encoder)."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    return np.stack([np.frombuffer(frame, np.uint8).reshape(height, width, 3) for frame in reader])


def save_output(body: dict, path: Path) -> Path:
    if body.get("status") != "succeeded":
        raise RuntimeError(f"{path.stem}: {body.get('status')}: {body.get('error')}")
    path.write_bytes(base64.b64decode(body["output"].split(",", 1)[1]))
    return path


def relative_l2(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def serve(name: str, env: dict[str, str], todo: dict[str, dict], out: Path, report: dict) -> None:
    """One server: its setup log, then every request of `todo` in order, with the cancel before the last."""
    started = time.monotonic()
    server = CogServer(env, out / f"server-{name}.log")
    setup = server.health().get("setup", {}).get("logs", "")
    report[name] = {"setup_seconds": time.monotonic() - started, "setup_log": setup, "requests": {}}
    try:
        for key, inputs in todo.items():
            if key == "after_cancel":
                slow = {**inputs, "steps": 40, "total_video_length_seconds": 3.6}
                report[name]["cancel_seconds"] = server.cancel_mid_run(slow, f"{name}-cancel")
            t0 = time.monotonic()
            body = server.predict(inputs, f"{name}-{key}")
            save_output(body, out / f"{name}-{key}.mp4")
            report[name]["requests"][key] = {
                "seconds": time.monotonic() - t0,
                "metrics": body.get("metrics"),
                "compile_log": [line for line in body["logs"].splitlines() if line.startswith("compiled blocks")],
            }
            print(f"{name} {key}: {time.monotonic() - t0:.1f} s", flush=True)
    finally:
        server.stop()


def eager_twins(todo: dict[str, dict], fp8_todo: dict[str, dict], env: dict[str, str], out: Path) -> None:
    """The same requests through an eager service in this process (FP8: its blocks quantised in place)."""
    os.environ.update(
        {**env, "FRAMEPACK_COMPILE": "off", "FRAMEPACK_FP8": "0", "FRAMEPACK_OUTPUT_DIR": str(out / "eager-outputs")}
    )
    service = FramePackService.setup()
    for prefix, requests_ in (("eager", todo), ("eager-fp8", fp8_todo)):
        if prefix == "eager-fp8":
            if not torch.cuda.is_available():
                break
            for model in service.models.transformers.values():
                quantize_transformer_blocks(model)
        for key, inputs in requests_.items():
            decoded = {k: v for k, v in inputs.items()}
            for image_key in ("input_image", "end_image"):
                if image_key in decoded:
                    decoded[image_key] = _uri_file(decoded[image_key], out / f"{image_key}.png")
            if "section_images" in decoded:
                decoded["section_images"] = [
                    _uri_file(u, out / f"keyframe{i}.png") for i, u in enumerate(decoded["section_images"])
                ]
            path = service.predict(decoded)
            (out / f"{prefix}-{key}.mp4").write_bytes(Path(path).read_bytes())


def _uri_file(uri: str, path: Path) -> Path:
    path.write_bytes(base64.b64decode(uri.split(",", 1)[1]))
    return path


def compare(
    out: Path,
    keys: list[str],
    served: str,
    eager: str,
    report: dict,
    max_vs_eager: float | None = MAX_FRAMES_RELATIVE_L2,
) -> list[str]:
    """Relative L2 of each served video to its eager twin, and the LoRAs' effects; returns failed checks.

    `max_vs_eager` None: the distance to eager is reported, not checked.
    """
    frames = {key: (mp4_frames(out / f"{served}-{key}.mp4"), mp4_frames(out / f"{eager}-{key}.mp4")) for key in keys}
    failures, rows = [], {}
    for key, (compiled, reference) in frames.items():
        rows[key] = {"vs_eager": relative_l2(compiled, reference)}
        if max_vs_eager is not None and rows[key]["vs_eager"] > max_vs_eager:
            failures.append(f"{served} {key}: {rows[key]['vs_eager']:.3e} from eager")
    base = frames["original"][0]
    for key in keys:
        if "lora" in key:
            without = frames["f1" if key.startswith("f1") else "original"][0]
            effect = relative_l2(frames[key][0], without)
            rows[key]["lora_effect"] = effect
            if effect < MIN_LORA_EFFECT_OVER_NOISE * max(rows[key]["vs_eager"], 1e-6):
                failures.append(f"{served} {key}: LoRA effect {effect:.3e} not above compile noise")
        if key.startswith("none_after"):
            rows[key]["identical_to_first_base_run"] = bool(np.array_equal(frames[key][0], base))
            rows[key]["vs_first_base_run"] = relative_l2(frames[key][0], base)
            if rows[key]["vs_first_base_run"] > MAX_BASE_DRIFT:
                failures.append(
                    f"{served} {key}: the base after a LoRA is {rows[key]['vs_first_base_run']:.3e} "
                    "from the first base run"
                )
    report[f"{served}_comparison"] = rows
    return failures


SAGE_REQUESTS = ("original", "lora_A", "f1")
PHASES = ("weights", "served", "served-fp8", "served-sage", "eager", "compare")


def print_table(report: dict, todo: dict) -> None:
    for name in ("served", "served-fp8", "served-sage"):
        if name in report:
            kernels = [line for line in report[name]["setup_log"].splitlines() if "attention " in line]
            print(f"{name}: setup {report[name]['setup_seconds']:.0f} s; " + " | ".join(kernels))
            print(
                f"  cancel took {report[name].get('cancel_seconds', float('nan')):.2f} s; graphs compiled per "
                "request: " + ", ".join(f"{k} {v['compile_log']}" for k, v in report[name]["requests"].items())
            )
    print(
        f"{'request':<16} {'served vs eager':>16} {'LoRA effect':>12} {'vs 1st base':>12}   {'fp8 vs eager':>13} "
        f"{'fp8 LoRA':>10} {'fp8 vs 1st':>11}"
    )
    nan = float("nan")
    for key in todo:
        row = report.get("served_comparison", {}).get(key, {})
        fp8 = report.get("served-fp8_comparison", {}).get(key, {})
        print(
            f"{key:<16} {row.get('vs_eager', nan):>16.3e} {row.get('lora_effect', nan):>12.3e} "
            f"{row.get('vs_first_base_run', nan):>12.3e}   {fp8.get('vs_eager', nan):>13.3e} "
            f"{fp8.get('lora_effect', nan):>10.3e} {fp8.get('vs_first_base_run', nan):>11.3e}"
        )
    for key, row in report.get("served-sage_comparison", {}).items():
        seconds = report["served-sage"]["requests"][key]["seconds"]
        effect = row.get("lora_effect", nan)
        print(f"sage {key:<11} vs eager {row['vs_eager']:.3e}, LoRA effect {effect:.3e}, {seconds:.1f} s served")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=Path("/tmp/framepack-random-weights"))
    parser.add_argument("--out", type=Path, default=Path("acceptance"))
    parser.add_argument("--tiny", action="store_true", help="CPU dry run on the tiny test weights")
    parser.add_argument("--size", default="320x256", help="WIDTHxHEIGHT of the requests")
    parser.add_argument(
        "--requests",
        default=None,
        help="comma-separated subset of the requests (default: all; the cancel runs with after_cancel)",
    )
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help="comma-separated subset of " + ", ".join(PHASES) + " (to split the run across calls)",
    )
    args = parser.parse_args(argv)
    phases = args.phases.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    report_path = args.out / "acceptance.json"
    report: dict = json.loads(report_path.read_text()) if report_path.is_file() else {}
    report["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    gpu = torch.cuda.is_available() and not args.tiny
    weights = TINY_WEIGHTS if args.tiny else args.weights
    if "weights" in phases and not args.tiny and not (weights / "random.done").is_file():
        t0 = time.monotonic()
        save_random_weights("full", weights, torch.device("cuda"), torch.bfloat16)
        f1 = transformer_component("f1").path(weights)
        f1.parent.mkdir(parents=True, exist_ok=True)
        if not f1.exists():
            f1.symlink_to(transformer_component("original").path(weights), target_is_directory=True)
        (weights / "random.done").write_text("random full-size weights\n")
        report["weights_seconds"] = time.monotonic() - t0
    config = json.loads((transformer_component("original").path(weights) / "config.json").read_text())
    (args.out / "loras").mkdir(exist_ok=True)  # the servers' FRAMEPACK_LORA_DIR
    loras = {
        "A": lora_file(config, args.out / "loras" / "lora_a.safetensors", ("attn.to_q", "attn.to_k", "attn.to_v"), 1),
        "B": lora_file(config, args.out / "loras" / "lora_b.safetensors", ("proj_mlp", "proj_out"), 2),
    }
    size = (96, 64) if args.tiny else tuple(int(v) for v in args.size.split("x"))
    todo = requests_to_make(size, loras, args.tiny)
    if args.requests:
        todo = {key: todo[key] for key in args.requests.split(",")}
    fp8_todo = {key: todo[key] for key in FP8_REQUESTS if key in todo} if gpu else {}
    sage_todo = {key: todo[key] for key in SAGE_REQUESTS if key in todo} if gpu else {}
    env = {
        "FRAMEPACK_WEIGHTS": str(weights),
        "FRAMEPACK_COMPILE": "auto" if gpu else "on",
        "FRAMEPACK_OUTPUT_DIR": str(args.out / "served-outputs"),
        "FRAMEPACK_LORA_DIR": str(args.out / "loras"),
    }
    try:
        if "served" in phases:
            serve("served", {**env, "FRAMEPACK_FP8": "0"}, todo, args.out, report)
        if "served-fp8" in phases and fp8_todo:
            serve("served-fp8", {**env, "FRAMEPACK_FP8": "1"}, fp8_todo, args.out, report)
        if "served-sage" in phases and sage_todo:
            serve(
                "served-sage", {**env, "FRAMEPACK_FP8": "0", "FRAMEPACK_ATTENTION": "sage"}, sage_todo, args.out, report
            )
        if "eager" in phases:
            eager_twins(todo, fp8_todo if "served-fp8" in report else {}, env, args.out)
        if "compare" in phases:
            report["failures"] = []
            if "served" in report:
                report["failures"] += compare(args.out, list(todo), "served", "eager", report)
            if fp8_todo and "served-fp8" in report:
                report["failures"] += compare(args.out, list(fp8_todo), "served-fp8", "eager-fp8", report)
            if sage_todo and "served-sage" in report:
                report["failures"] += compare(args.out, list(sage_todo), "served-sage", "eager", report, None)
                if "attention sage," not in report["served-sage"]["setup_log"]:
                    report["failures"].append("served-sage: the blocks do not run SageAttention (see its setup log)")
    finally:
        report_path.write_text(json.dumps(report, indent=2, default=str))
    print_table(report, todo)
    if "compare" not in phases:
        return 0
    failures = report["failures"]
    print("FAILED: " + "; ".join(failures) if failures else "all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
