"""The Cog predictor through Cog's real HTTP server (coglet) on 127.0.0.1, on the tiny weights."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
import torch
from helpers.hosts import HostileRoutes
from helpers.media import png_header, write_test_video
from helpers.models import peft_lora
from helpers.paths import START_IMAGE, TINY_WEIGHTS
from helpers.requests import TINY_HEIGHT, TINY_WIDTH, tiny_request

from benchmarks.measure import read_mp4_frames
from framepack.core.request import INPUT_SPECS
from framepack.core.video import read_mp4_metadata

pytestmark = pytest.mark.e2e  # Cog's HTTP server in a process of its own

ROOT = Path(__file__).resolve().parent.parent
SERVER_START_TIMEOUT = 180


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


IMAGE = _data_uri(START_IMAGE.read_bytes())
# Over HTTP: the image as a data URI, TeaCache as the API's default.
TINY_REQUEST = {
    **tiny_request(prompt="a cat on a beach", seed=3, total_video_length_seconds=1.2, step_cache="auto"),
    "input_image": IMAGE,
}
# Long enough on the tiny weights (15 sections x 60 steps) to be cancelled mid-run.
SLOW_REQUEST = {**TINY_REQUEST, "total_video_length_seconds": 6.0, "steps": 60}


@pytest.fixture(scope="module")
def server(tmp_path_factory, hostile_hosts):
    """`python -m cog.server.http` from the repository root (where .cog/openapi_schema.json is).

    It trusts the hostile https host's test CA and, as that host is on 127.0.0.1, allows private URL hosts.
    """
    port = _free_port()
    output_dir = tmp_path_factory.mktemp("outputs")
    lora_cache = tmp_path_factory.mktemp("lora-cache")
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = {
        **os.environ,
        "PORT": str(port),
        "COG_PREDICT_TYPE_STUB": "predict.py:Predictor",
        "FRAMEPACK_WEIGHTS": str(TINY_WEIGHTS),
        "FRAMEPACK_OUTPUT_DIR": str(output_dir),
        "FRAMEPACK_LORA_CACHE": str(lora_cache),
        "FRAMEPACK_ALLOW_PRIVATE_URLS": "1",
        # The hostile https host serves the Hub's and CivitAI's URL layouts too.
        "HF_ENDPOINT": f"https://{hostile_hosts.secure}",
        "FRAMEPACK_CIVITAI_ENDPOINT": f"https://{hostile_hosts.secure}",
        "SSL_CERT_FILE": str(hostile_hosts.ca_file),
        # coglet starts its worker with the `python` on PATH: make that this interpreter.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    with open(log, "w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "cog.server.http", "--host", "127.0.0.1"],
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    try:
        while True:
            assert process.poll() is None, f"server exited:\n{log.read_text()[-3000:]}"
            try:
                if requests.get(f"{url}/health-check", timeout=2).json().get("status") == "READY":
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, f"server not READY:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield {"url": url, "output_dir": output_dir, "lora_cache": lora_cache, "log": log}
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture
def webhooks():
    """A local webhook receiver; yields (url, list of received prediction payloads)."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/hook", received
    httpd.shutdown()


TERMINAL = ("succeeded", "failed", "canceled")


def _terminal(received: list[dict]) -> list[dict]:
    """Terminal webhooks; the receiver is threaded, so they need not be the last to arrive."""
    return [hook for hook in received if hook["status"] in TERMINAL]


def _wait_for(predicate, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _predict(server, inputs: dict) -> requests.Response:
    # The server can answer a sync prediction a moment before it frees the slot; a client posting the next one
    # at once is told "At capacity". Wait for READY (not BUSY), as a well-behaved client does.
    _wait_for(lambda: requests.get(f"{server['url']}/health-check", timeout=10).json()["status"] == "READY", 60)
    return requests.post(f"{server['url']}/predictions", json={"input": inputs}, timeout=300)


def _start_async(server, inputs: dict, webhook: str, prediction_id: str | None = None) -> None:
    """Start a prediction that reports to `webhook` (PUT with an id of ours when given, else POST)."""
    url = f"{server['url']}/predictions" + (f"/{prediction_id}" if prediction_id else "")
    send = requests.put if prediction_id else requests.post
    response = send(url, timeout=30, headers={"Prefer": "respond-async"}, json={"input": inputs, "webhook": webhook})
    assert response.status_code == 202, response.text


def _video(response_json: dict, tmp_path: Path, name: str = "out.mp4") -> Path:
    header, payload = response_json["output"].split(",", 1)
    assert header == "data:video/mp4;base64"
    path = tmp_path / name
    path.write_bytes(base64.b64decode(payload))
    return path


def test_health_is_ready(server):
    def setup_logs() -> str:
        body = requests.get(f"{server['url']}/health-check", timeout=10).json()
        assert body["status"] == "READY"
        return body["setup"]["logs"]

    # coglet can report READY a moment before the setup's last line reaches its log (seen on a loaded machine).
    _wait_for(lambda: "loaded original, f1" in setup_logs(), 10)
    body = {"setup": {"logs": setup_logs()}}
    assert "memory mode: cpu" in body["setup"]["logs"]
    # What acceleration each transformer got (on a GPU: the attention kernel and any kernel skipped, and why).
    assert "f1 transformer: attention native, compiled False, FP8 layers 0; not on CUDA" in body["setup"]["logs"]


def test_openapi_lists_every_input_with_its_constraints(server):
    schema = requests.get(f"{server['url']}/openapi.json", timeout=10).json()["components"]["schemas"]
    properties = schema["Input"]["properties"]
    assert list(sorted(properties, key=lambda n: properties[n]["x-order"])) == list(INPUT_SPECS)
    assert schema["Input"]["required"] == ["prompt"]  # an input_image, an input_video or both: checked later
    for name, spec in INPUT_SPECS.items():
        prop = properties[name]
        assert prop["description"] == spec.description
        if spec.ge is not None:
            assert (prop["minimum"], prop["maximum"]) == (spec.ge, spec.le), name
        if spec.choices:
            assert schema[name]["enum"] == list(spec.choices)
        elif not spec.required and spec.default is not None:
            default = list(spec.default) if isinstance(spec.default, tuple) else spec.default
            assert prop["default"] == default, name
    assert properties["input_image"]["format"] == "uri" and properties["end_image"]["nullable"] is True
    assert (properties["input_video"]["format"], properties["input_video"]["nullable"]) == ("uri", True)
    new_inputs = ("video_context_frames", "include_input_video", "prompt_blend_sections")
    assert [(properties[n]["type"], properties[n]["default"]) for n in new_inputs] == [
        ("integer", 0),
        ("boolean", True),
        ("integer", 0),
    ]
    assert (properties["video_context_frames"]["minimum"], properties["video_context_frames"]["maximum"]) == (0, 19)
    assert (properties["prompt_blend_sections"]["minimum"], properties["prompt_blend_sections"]["maximum"]) == (0, 4)
    assert properties["seed"]["default"] == -1 and "nullable" not in properties["seed"]
    assert {n: p["maxLength"] for n, p in properties.items() if "maxLength" in p} == {
        n: s.max_length for n, s in INPUT_SPECS.items() if s.max_length
    }
    assert schema["Output"] == {"title": "Output", "type": "string", "format": "uri"}


def test_sync_prediction_returns_a_playable_mp4(server, tmp_path):
    started = time.monotonic()
    response = _predict(server, TINY_REQUEST)
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "succeeded", body.get("error")
    frames, fps = read_mp4_frames(_video(body, tmp_path))
    assert frames.shape == (37, TINY_HEIGHT, TINY_WIDTH, 3) and fps == 30
    assert read_mp4_metadata(tmp_path / "out.mp4")["seed"] == 3
    assert {"encode_seconds", "sampling_seconds", "decode_seconds", "mp4_seconds", "total_seconds"} <= set(
        body["metrics"]
    )
    assert "section 3/3, step 2/2" in body["logs"] and "seed: 3" in body["logs"]
    print(f"sync prediction on the tiny weights: {elapsed:.2f} s")


def test_same_seed_gives_identical_frames(server, tmp_path):
    first = read_mp4_frames(_video(_predict(server, TINY_REQUEST).json(), tmp_path, "a.mp4"))[0]
    second = read_mp4_frames(_video(_predict(server, TINY_REQUEST).json(), tmp_path, "b.mp4"))[0]
    assert (first == second).all()


def test_random_seed_is_logged_and_stored(server, tmp_path):
    body = _predict(server, {k: v for k, v in TINY_REQUEST.items() if k != "seed"}).json()
    seed = read_mp4_metadata(_video(body, tmp_path))["seed"]
    assert f"seed: {seed}" in body["logs"]


def test_async_prediction_delivers_webhooks(server, webhooks):
    url, received = webhooks
    _start_async(server, TINY_REQUEST, url)
    _wait_for(lambda: _terminal(received))
    final = _terminal(received)[0]
    assert final["status"] == "succeeded"
    assert final["output"].startswith("data:video/mp4;base64,")


def test_cancel_ends_canceled_and_the_next_prediction_succeeds(server, webhooks, tmp_path):
    url, received = webhooks
    _start_async(server, SLOW_REQUEST, url, "cancel-me")
    _wait_for(lambda: any("step 3/60" in (hook.get("logs") or "") for hook in received))
    assert requests.post(f"{server['url']}/predictions/cancel-me/cancel", timeout=30).status_code == 200
    _wait_for(lambda: _terminal(received))
    assert _terminal(received)[0]["status"] == "canceled"
    assert list(server["output_dir"].iterdir()) == []  # the partial output is gone

    assert requests.get(f"{server['url']}/health-check", timeout=10).json()["status"] == "READY"
    body = _predict(server, TINY_REQUEST).json()
    assert body["status"] == "succeeded"
    assert read_mp4_frames(_video(body, tmp_path))[0].shape[0] == 37


def test_a_cancel_during_a_stalled_lora_download_takes_effect_at_once(server, webhooks, hostile_hosts):
    url, received = webhooks
    inputs = {**TINY_REQUEST, "lora_weights": f"https://{hostile_hosts.secure}/stall"}
    _start_async(server, inputs, url, "stalled-lora")
    time.sleep(3)  # the host has sent its headers and 10 of 100,000 bytes, and is silent
    cancelled = time.monotonic()
    assert requests.post(f"{server['url']}/predictions/stalled-lora/cancel", timeout=30).status_code == 200
    _wait_for(lambda: _terminal(received), 30)
    assert _terminal(received)[0]["status"] == "canceled"
    assert time.monotonic() - cancelled < 2.0  # the cancel, the webhook and its delivery
    assert list(server["lora_cache"].iterdir()) == []  # no partial download left
    _wait_for(lambda: requests.get(f"{server['url']}/health-check", timeout=10).json()["status"] == "READY", 10)


def test_magcache_over_http_and_a_contradiction_with_the_earlier_switch(server, tmp_path):
    inputs = {**TINY_REQUEST, "step_cache": "magcache", "magcache_max_skips": 2, "steps": 8}
    body = _predict(server, inputs).json()
    assert body["status"] == "succeeded", body.get("error")
    request = read_mp4_metadata(_video(body, tmp_path))["request"]
    assert (request["step_cache"], request["magcache_max_skips"], request["use_teacache"]) == ("magcache", 2, None)
    body = _predict(server, {**inputs, "use_teacache": True}).json()
    assert body["status"] == "failed"
    assert "Invalid input 'step_cache': 'magcache' contradicts use_teacache=true" in body["error"]


def test_outputs_do_not_pile_up(server):
    for seed in (11, 12):
        assert _predict(server, {**TINY_REQUEST, "seed": seed}).json()["status"] == "succeeded"
    assert [p.name for p in server["output_dir"].iterdir()] == ["framepack-12.mp4"]


@pytest.mark.parametrize(
    ("inputs", "field", "message"),
    [
        ({**TINY_REQUEST, "steps": 0}, "steps", "less than the minimum of 1"),
        ({**TINY_REQUEST, "cfg_scale": 33}, "cfg_scale", "greater than the maximum of 32"),
        ({**TINY_REQUEST, "model_variant": "f2"}, "model_variant", "f2"),
        ({**TINY_REQUEST, "steps": "many"}, "steps", "is not of type"),
        ({**TINY_REQUEST, "use_teacache": "sometimes"}, "use_teacache", "is not of type"),
        ({k: v for k, v in TINY_REQUEST.items() if k != "prompt"}, "prompt", "Field required"),
        ({**TINY_REQUEST, "prompt": "😀" * 11000}, "prompt", "longer than 4000 characters"),
        ({**TINY_REQUEST, "seed": None}, "seed", "null is not of type"),
    ],
)
def test_invalid_inputs_are_422(server, inputs, field, message):
    response = _predict(server, inputs)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert any(d["loc"][-1] == field and message in d["msg"] for d in detail), detail


def test_non_image_upload_fails_saying_the_image_could_not_be_read(server):
    body = _predict(server, {**TINY_REQUEST, "input_image": _data_uri(b"plain text, no pixels")}).json()
    assert body["status"] == "failed"
    assert "Invalid input 'input_image'" in body["error"] and "could not read" in body["error"]


def test_engine_validation_beyond_the_schema_fails_clearly(server):
    body = _predict(server, {**TINY_REQUEST, "width": 100}).json()
    assert body["status"] == "failed"
    assert "Invalid input 'width': 100 is not a multiple of 16" in body["error"]


def test_controls_through_the_server(server, tmp_path):
    end = _data_uri((START_IMAGE.parent / "end_100x140.png").read_bytes())
    body = _predict(
        server,
        {
            **TINY_REQUEST,
            "section_prompts": "a calm sea\n\na storm",
            "section_images": [end, end],
            "section_image_indices": "1,2",
            "end_image": end,
            "end_image_strength": 0.5,
            "camera_movement": 0.1,
        },
    ).json()
    assert body["status"] == "succeeded", body.get("error")
    assert "section 1 covers 0.43 to 0.83 s: keyframe 0, prompt 'a calm sea'" in body["logs"]
    assert "section 2 covers 0.83 to 1.23 s: keyframe 1, prompt 'a storm'" in body["logs"]
    assert read_mp4_frames(_video(body, tmp_path))[0].shape[0] == 37
    failed = _predict(server, {**TINY_REQUEST, "model_variant": "f1", "end_image": end}).json()
    assert failed["status"] == "failed" and "Invalid input 'end_image'" in failed["error"]


def test_a_video_continues_through_the_server(server, tmp_path):
    clip = write_test_video(tmp_path / "clip.mp4", frames=9)
    video = _data_uri(clip.read_bytes(), "video/mp4")
    inputs = {k: v for k, v in TINY_REQUEST.items() if k != "input_image"}
    body = _predict(
        server, {**inputs, "input_video": video, "model_variant": "f1", "total_video_length_seconds": 0.4}
    ).json()
    assert body["status"] == "succeeded", body.get("error")
    frames = read_mp4_frames(_video(body, tmp_path))[0]
    assert frames.shape == (9 + 12, 80, 120, 3)  # the clip's 9 frames, then one section of 12 at its size
    assert read_mp4_metadata(tmp_path / "out.mp4")["input_video"]["frames"] == 9
    neither = _predict(server, inputs).json()
    assert (
        neither["status"] == "failed"
        and "Invalid input 'input_image': is required unless input_video" in neither["error"]
    )


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"input_image": "/etc/hostname"}, "Invalid input 'input_image': give an upload, an https URL or a data URI"),
        ({"input_video": "/etc/hostname"}, "Invalid input 'input_video': give an upload, an https URL or a data URI"),
        ({"end_image": str(START_IMAGE)}, "Invalid input 'end_image': give an upload"),
        ({"section_images": [IMAGE, "/etc/hostname"]}, "Invalid input 'section_images': give an upload"),
        ({"lora_weights": "/etc/hostname"}, "Invalid input 'lora_weights': a local LoRA file must be in the server's"),
        ({"extra_lora": "/nonexistent/x.safetensors"}, "Invalid input 'extra_lora': a local LoRA file must be in"),
    ],
)
def test_server_files_are_never_read(server, inputs, message):
    body = _predict(server, {**TINY_REQUEST, **inputs}).json()
    assert body["status"] == "failed" and message in body["error"]
    assert "hostname" not in body["error"] and "nonexistent" not in body["error"]  # no server path, no oracle


@pytest.mark.parametrize(
    ("size", "message"),
    [
        ((9000, 9000), "9000x9000 pixels, more than the 50,000,000 pixels allowed"),  # under PIL's own limit
        ((30000, 30000), "has more than the 50,000,000 pixels allowed"),  # over it
    ],
)
def test_an_image_bomb_is_refused_from_its_header(server, size, message):
    body = _predict(server, {**TINY_REQUEST, "end_image": _data_uri(png_header(*size))}).json()
    assert body["status"] == "failed"
    assert "Invalid input 'end_image'" in body["error"] and message in body["error"]


def test_the_schema_and_the_validation_agree_on_numbers_and_null(server, tmp_path):
    inputs = {**TINY_REQUEST, "width": float(TINY_WIDTH), "height": float(TINY_HEIGHT), "seed": 3.0, "steps": 2.0}
    body = _predict(server, inputs).json()
    assert body["status"] == "succeeded", body.get("error")
    reference = _predict(server, TINY_REQUEST).json()
    assert (
        read_mp4_frames(_video(body, tmp_path, "a.mp4"))[0] == read_mp4_frames(_video(reference, tmp_path))[0]
    ).all()
    # -1, or no seed, is a random seed; null is refused by Cog's server whatever the schema, so it says no null.
    assert (
        "nullable"
        not in requests.get(f"{server['url']}/openapi.json", timeout=10).json()["components"]["schemas"]["Input"][
            "properties"
        ]["seed"]
    )
    unseeded = {k: v for k, v in TINY_REQUEST.items() if k != "seed"}
    for inputs in ({**TINY_REQUEST, "seed": -1}, unseeded):
        body = _predict(server, inputs).json()
        assert body["status"] == "succeeded" and "seed: " in body["logs"] and "seed: -1" not in body["logs"]


def test_schemathesis_finds_no_server_error(server, tmp_path):
    """A bounded property-based run against the prediction endpoint: no response of 500 or above."""
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        f"{server['url']}/openapi.json",
        "--include-path",
        "/predictions",
        "--include-method",
        "POST",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        "60",  # with the coverage phase's cases for every input, about 900 requests (150 took 4 minutes)
        "--workers",
        "1",
        "--request-timeout",
        "60",
        "--seed",
        "1",
        "--generation-database",
        ":memory:",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    # In a folder of its own: schemathesis keeps a cache in its working directory.
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    generated, passed = map(int, re.search(r"(\d+) generated, (\d+) passed", result.stdout).groups())
    assert generated == passed >= 500, result.stdout[-3000:]


# Cog 0.23's notices about its own future API (README, "As a Cog model"): the Predictor keeps the design's names.
COG_NOTICES = ("predict() is deprecated; use run() instead", "BasePredictor is deprecated; use BaseRunner instead")


def test_the_setup_log_has_no_warning_but_cogs_own_notices(server):
    lines = server["log"].read_text().splitlines()
    setup = lines[: next(i for i, line in enumerate(lines) if "Setup complete" in line)]
    warnings = [line for line in setup if '"level":"WARN' in line or "Warning" in line]
    assert len(warnings) == 3 and all(any(notice in line for notice in COG_NOTICES) for line in warnings), warnings


def test_a_hub_lora_with_a_token_that_appears_nowhere(server, hostile_hosts, tmp_path):
    from safetensors.torch import save

    from framepack.models import load_models

    model = load_models(TINY_WEIGHTS, ("original",), torch.device("cpu"), torch.float32).transformers["original"]
    token = "hf_SECRET_only_for_the_hub"
    files = {"siblings": [{"rfilename": "style.safetensors"}]}
    HostileRoutes.files["/api/models/owner/style/revision/main"] = json.dumps(files).encode()
    HostileRoutes.files["/owner/style/resolve/main/style.safetensors"] = save(peft_lora(model))
    HostileRoutes.authorizations.clear()
    body = _predict(server, {**TINY_REQUEST, "lora_weights": "owner/style", "hf_api_token": token}).json()
    assert body["status"] == "succeeded", body.get("error")
    assert ("/owner/style/resolve/main/style.safetensors", f"Bearer {token}") in HostileRoutes.authorizations
    metadata = read_mp4_metadata(_video(body, tmp_path))
    assert metadata["request"]["lora_weights"] == "owner/style" and token not in json.dumps(metadata)
    assert token not in json.dumps(body) and token not in server["log"].read_text()
    failed = _predict(server, {**TINY_REQUEST, "lora_weights": "owner/missing", "hf_api_token": token}).json()
    assert failed["status"] == "failed" and "owner/missing" in failed["error"] and token not in json.dumps(failed)
