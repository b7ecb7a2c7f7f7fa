"""Shared test helpers: fixture paths, golden cases, the local predict command run in-process."""

from __future__ import annotations

import http.server
import json
import ssl
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from benchmarks.measure import relative_l2  # noqa: F401 (shared with the test modules)

FIXTURES = Path(__file__).parent / "fixtures"
TINY_WEIGHTS = FIXTURES / "tiny-weights"
IMAGES = FIXTURES / "images"
GOLDEN = FIXTURES / "golden"
START_IMAGE = IMAGES / "start_100x140.png"
END_IMAGE = IMAGES / "end_100x140.png"


@pytest.fixture(autouse=True, scope="session")
def compile_cache_outside_the_fixtures(tmp_path_factory):
    """Compiled mode writes its kernels beside the weights by default: keep the fixtures folder clean."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FRAMEPACK_COMPILE_CACHE", str(tmp_path_factory.mktemp("compile-cache")))
        yield


# A small, fast request on the tiny weights (3 sections of 3 latents, 96x64).
TINY_INPUTS = {
    "prompt": "A cat walks along the beach at sunset.",
    "input_image": f"@{START_IMAGE}",
    "seed": "1",
    "total_video_length_seconds": "1.2",
    "latent_window_size": "3",
    "steps": "2",
    "width": "96",
    "height": "64",
}


def tiny_request(**overrides) -> dict:
    """A request small enough for the tiny weights on the CPU: windows of 3 latents at 96x64, 2 steps, TeaCache
    off, 4 sections; `overrides` replace or add inputs (API names)."""
    return {
        "input_image": START_IMAGE,
        "prompt": "a cat",
        "seed": 7,
        "total_video_length_seconds": 1.6,
        "latent_window_size": 3,
        "steps": 2,
        "width": 96,
        "height": 64,
        "use_teacache": False,
        **overrides,
    }


def write_test_video(path: Path, frames: int = 21, width: int = 120, height: int = 80, crf: int = 16) -> Path:
    """A real H.264 MP4 of a bar crossing colour ramps (30 fps, no metadata): an input video to continue."""
    from framepack.core.video import write_mp4

    video = torch.zeros(frames, height, width, 3, dtype=torch.uint8)
    video[:, :, :, 2] = torch.linspace(0, 255, width).to(torch.uint8)
    for index in range(frames):
        video[index, :, :, 0] = index * 255 // max(frames - 1, 1)
        bar = index * 4 % width
        video[index, :, bar : bar + 8, 1] = 255
    return write_mp4(video, path, crf)


@dataclass
class CliRun:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(capsys):
    """Run `python -m framepack ...` in-process; returns exit code and captured output."""
    from framepack.serving.cli import main

    def run(*args: str) -> CliRun:
        code = main(list(args))
        captured = capsys.readouterr()
        return CliRun(code, captured.out, captured.err)

    return run


def input_args(inputs: dict[str, object]) -> list[str]:
    """-i name=value arguments; booleans as true/false, images as @path."""
    args = []
    for name, value in inputs.items():
        if isinstance(value, bool):
            value = str(value).lower()
        args += ["-i", f"{name}={value}"]
    return args


def predict_args(inputs: dict[str, object], output: Path, *extra: str) -> list[str]:
    return [
        "predict",
        *input_args(inputs),
        "--weights",
        str(TINY_WEIGHTS),
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "-o",
        str(output),
        *extra,
    ]


def golden_case_names() -> list[str]:
    return sorted(p.name for p in GOLDEN.iterdir() if (p / "case.json").is_file())


def load_golden_case(name: str) -> dict:
    case = json.loads((GOLDEN / name / "case.json").read_text())
    case["input"]["input_image"] = f"@{IMAGES / case['input']['input_image']}"
    return case


# docs/FIXTURES.md §4: what a correct float32 CPU implementation meets. Golden files come from one CPU;
# another x86 CPU differs in the last float32 bits, so golden comparisons use these, not exact equality.
MAX_RELATIVE_L2 = 1e-4
MAX_GREY_LEVELS = 1


def assert_matches_golden(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Every expected tensor is in `actual` with its shape and within the golden tolerances.

    uint8 tensors (frames) may differ by MAX_GREY_LEVELS; others by a relative L2 below MAX_RELATIVE_L2.
    """
    for name, expected_tensor in expected.items():
        actual_tensor = actual[name]
        assert actual_tensor.shape == expected_tensor.shape, name
        if expected_tensor.dtype == torch.uint8:
            worst = int((actual_tensor.int() - expected_tensor.int()).abs().max())
            assert worst <= MAX_GREY_LEVELS, f"{name}: {worst} grey levels"
        else:
            error = relative_l2(actual_tensor, expected_tensor)
            assert error < MAX_RELATIVE_L2, f"{name}: relative L2 {error:.3e}"


@pytest.fixture(scope="session")
def tiny_engine():
    """The engine as every entry point starts it, on the tiny weights: both variants, float32 on the CPU, eager."""
    from framepack.config import EngineConfig
    from framepack.serving.engine import load_engine

    return load_engine(EngineConfig(weights_dir=TINY_WEIGHTS, device="cpu", dtype="float32", compile="off"))


@pytest.fixture(scope="session")
def tiny_models():
    """Both variants' components from the tiny weights, float32 on the CPU (loaded once per session)."""
    from framepack.models import load_models

    return load_models(TINY_WEIGHTS, ("original", "f1"), torch.device("cpu"), torch.float32)


def section_and_text(model, generator):
    """Random tiny section inputs (3-frame window on an 8x12 latent), 11-token text, and noisy latents."""
    from benchmarks.reference import random_section

    return random_section(
        model,
        generator,
        window=3,
        latent_height=8,
        latent_width=12,
        text_tokens=11,
        image_tokens=16,
        total_sections=3,
    )


# LoRA files in the three key formats, on the tiny transformer's real layer names (random low-rank factors).
RANK = 4


def _pair(out_features: int, in_features: int, generator) -> tuple[torch.Tensor, torch.Tensor]:
    down = torch.randn(RANK, in_features, generator=generator) * 0.3
    up = torch.randn(out_features, RANK, generator=generator) * 0.3
    return down, up


def musubi_lora(model, seed=1) -> dict[str, torch.Tensor]:
    """musubi-tuner naming: lora_unet_<module path with _>, lora_down/lora_up, alpha."""
    g, state = torch.Generator().manual_seed(seed), {}
    for path in ("transformer_blocks.0.attn.to_q", "single_transformer_blocks.1.proj_mlp"):
        module = model.get_submodule(path)
        down, up = _pair(module.out_features, module.in_features, g)
        key = "lora_unet_" + path.replace(".", "_")
        state.update(
            {
                f"{key}.lora_down.weight": down,
                f"{key}.lora_up.weight": up,
                f"{key}.alpha": torch.tensor(float(RANK) / 2),
            }
        )
    return state


def peft_lora(model, seed=2) -> dict[str, torch.Tensor]:
    """diffusers/PEFT naming: transformer.<module path>.lora_A/lora_B."""
    g, state = torch.Generator().manual_seed(seed), {}
    for path in ("transformer_blocks.1.ff.net.0.proj", "single_transformer_blocks.0.attn.to_k"):
        module = model.get_submodule(path)
        down, up = _pair(module.out_features, module.in_features, g)
        state.update({f"transformer.{path}.lora_A.weight": down, f"transformer.{path}.lora_B.weight": up})
    return state


def original_lora(model, seed=3) -> dict[str, torch.Tensor]:
    """Original HunyuanVideo naming with fused projections: img_attn_qkv (3D) and linear1 (3D + MLP)."""
    g, state = torch.Generator().manual_seed(seed), {}
    dim = model.config.num_attention_heads * model.config.attention_head_dim
    mlp = model.single_transformer_blocks[0].proj_mlp.out_features
    for key, out in (("double_blocks.0.img_attn_qkv", 3 * dim), ("single_blocks.1.linear1", 3 * dim + mlp)):
        down, up = _pair(out, dim, g)
        state.update({f"diffusion_model.{key}.lora_A.weight": down, f"diffusion_model.{key}.lora_B.weight": up})
    return state


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height and holds no pixels: an image bomb's header, a few dozen bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


# Hostile hosts for URL inputs, on 127.0.0.1: an https host trusted through a test certificate authority (give
# its CA to a client as SSL_CERT_FILE), and a plain-HTTP host with the same routes.
STALL_SECONDS = 30


class HostileRoutes(http.server.BaseHTTPRequestHandler):
    """GET routes of the hostile test host; `files` maps a path to the bytes it serves."""

    files: dict[str, bytes] = {}
    release = threading.Event()

    def do_GET(self):  # noqa: N802
        path = self.path.split("?")[0]
        if path == "/stall":  # promises 100,000 bytes, sends 10, then goes silent
            self._head(200, {"Content-Length": "100000"})
            self.wfile.write(b"x" * 10)
            self.wfile.flush()
            self.release.wait(STALL_SECONDS)
        elif path == "/trickle":  # one byte a second
            self._head(200, {"Content-Length": "1000"})
            for _ in range(STALL_SECONDS):
                if self.release.wait(1.0):
                    break
                self.wfile.write(b"x")
                self.wfile.flush()
        elif path.startswith("/redirect-to/"):
            self._head(302, {"Location": path.removeprefix("/redirect-to/").replace("__", "://", 1)})
        elif path in self.files:
            self._head(200, {"Content-Length": str(len(self.files[path]))})
            self.wfile.write(self.files[path])
        else:
            self._head(404, {"Content-Length": "0"})

    def _head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()

    def log_message(self, *args):
        pass


def _serve(server: http.server.ThreadingHTTPServer) -> str:
    """Serve on a daemon thread; returns host:port."""
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"127.0.0.1:{server.server_address[1]}"


@dataclass
class HostileHosts:
    secure: str  # host:port of the https host
    plain: str  # host:port of the plain-HTTP host
    ca_file: Path  # the test CA's certificate (PEM)


@pytest.fixture(scope="session")
def hostile_hosts(tmp_path_factory):
    """The hostile https and plain-HTTP hosts (`HostileRoutes`), for the whole session."""
    import trustme

    ca = trustme.CA()
    ca_file = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    secure = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HostileRoutes)
    secure.socket = context.wrap_socket(secure.socket, server_side=True)
    plain = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HostileRoutes)
    yield HostileHosts(_serve(secure), _serve(plain), ca_file)
    HostileRoutes.release.set()
    secure.shutdown()
    plain.shutdown()
