"""Compiled kernels kept between processes: the key, the file, and a second process that compiles nothing.

The processes are real. The second starts with an empty inductor cache of its own, so the artifact file is the
only way kernels can travel from the first to it. The first uses this machine's inductor cache, as a container
that already compiled would: what it finds there goes into the file as well as what it builds.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers.paths import START_IMAGE, TINY_WEIGHTS

from framepack.runtime import compile_cache
from framepack.runtime.compile_cache import CompileCache, artifact_key

pytestmark = pytest.mark.e2e  # processes compiling with inductor

ROOT = Path(__file__).resolve().parent.parent

# The second process: start the engine with the cache, then run requests of other shapes than the warm-up's.
SECOND_START = f"""
import json, logging
from pathlib import Path
from framepack.runtime.compilation import compiled_graphs
from framepack.runtime.compile_cache import kernels_compiled
from framepack.config import EngineConfig
from framepack.serving.engine import load_engine
from framepack.logs import configure_logging
from framepack.runtime.pipeline import generate
from framepack.core.request import build_request

configure_logging("stderr")
engine = load_engine(EngineConfig.from_env(variants=("original", "f1"), device="cpu", dtype="float32"))
after_start = {{"kernels": kernels_compiled(), "graphs": compiled_graphs()}}
requests = [
    dict(prompt="a much longer prompt than the warm-up had, with many more words", width=48, height=32),
    dict(prompt="x", width=32, height=48, latent_window_size=3, total_video_length_seconds=1.2, model_variant="f1"),
]
for inputs in requests:
    inputs = {{"input_image": Path({str(START_IMAGE)!r}), "seed": 1, "steps": 2, **inputs}}
    generate(build_request(inputs), engine.models, placement=engine.placement)
print(json.dumps({{"after_start": after_start, "kernels": kernels_compiled(), "graphs": compiled_graphs(),
                  "timings": engine.timings}}))
"""


def process_env(cache: Path, inductor_cache: Path | None = None) -> dict[str, str]:
    """A process that compiles the tiny weights' blocks with `cache` as its compile cache; with `inductor_cache`,
    a fresh inductor cache of its own instead of this machine's."""
    fresh = {"TORCHINDUCTOR_CACHE_DIR": str(inductor_cache)} if inductor_cache is not None else {}
    return {
        **os.environ,
        **fresh,
        "PYTHONPATH": str(ROOT),
        "FRAMEPACK_WEIGHTS": str(TINY_WEIGHTS),
        "FRAMEPACK_COMPILE": "on",
        "FRAMEPACK_COMPILE_CACHE": str(cache),
    }


def test_warm_cache_then_a_new_process_compiles_nothing_for_any_shape(tmp_path):
    cache = tmp_path / "compile-cache"
    first = subprocess.run(
        [sys.executable, "-m", "framepack", "warm-cache", "--device", "cpu", "--dtype", "float32"],
        env=process_env(cache),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.strip() == str(cache)
    (artifacts,) = cache.glob("torch-*.bin")
    assert "compile cache: wrote" in first.stderr and "warm-up: 4 block graphs compiled" in first.stderr

    second = subprocess.run(
        [sys.executable, "-c", SECOND_START],
        env=process_env(cache, inductor_cache=tmp_path / "inductor-second"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert second.returncode == 0, second.stderr[-3000:]
    report = json.loads(second.stdout.strip().splitlines()[-1])
    assert "compile cache: loaded" in second.stderr and "compile cache: wrote" not in second.stderr
    # Inductor built no kernel from scratch, at start-up or for the requests: every graph came from the file.
    assert report["after_start"]["kernels"] == 0 and report["kernels"] == 0
    # Another prompt length, size, window and variant than the warm-up's: not one graph traced again.
    assert report["graphs"] == report["after_start"]["graphs"]
    assert list(report["timings"]) == [
        "weights check",
        "reading",
        "placement",
        "acceleration",
        "compile cache",
        "warm-up",
    ]
    assert sorted(cache.glob("torch-*.bin")) == [artifacts]


def test_the_key_changes_with_what_kernels_depend_on(tmp_path, monkeypatch):
    cpu = torch.device("cpu")
    key = artifact_key(cpu, torch.bfloat16, False, "auto")
    assert key == artifact_key(cpu, torch.bfloat16, False, "auto")
    others = {
        artifact_key(cpu, torch.float32, False, "auto"),
        artifact_key(cpu, torch.bfloat16, True, "auto"),
        artifact_key(cpu, torch.bfloat16, False, "flash_attention_4"),
    }
    with monkeypatch.context() as patch:  # another torch build
        patch.setattr(torch, "__version__", torch.__version__ + "+other")
        others.add(artifact_key(cpu, torch.bfloat16, False, "auto"))
    edited = tmp_path / "framepack"  # this package with one line of one module changed
    shutil.copytree(compile_cache._PACKAGE, edited)
    (edited / "runtime" / "transformer.py").write_text(
        (edited / "runtime" / "transformer.py").read_text() + "\n# edited\n"
    )
    monkeypatch.setattr(compile_cache, "_PACKAGE", edited)
    others.add(artifact_key(cpu, torch.bfloat16, False, "auto"))
    assert key not in others and len(others) == 5


def test_no_file_means_nothing_loaded_and_an_unwritable_folder_is_not_an_error(tmp_path, caplog):
    cache = CompileCache(tmp_path / "cache", "k")
    assert cache.load() is False and not cache.loaded
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    unwritable = CompileCache(blocked / "cache", "k")
    unique = float(time.time_ns() % 1_000_003)  # a graph no earlier run cached: compiled here, so there is a file
    torch.compile(lambda x: x * unique)(torch.ones(3))
    assert unwritable.save() is None
    assert "could not write" in caplog.text
    assert not list(tmp_path.glob("**/*.partial"))


def test_warm_cache_fails_before_compiling_when_no_file_could_be_written(run_cli, tmp_path, monkeypatch):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("FRAMEPACK_COMPILE_CACHE", str(blocked / "cache"))
    result = run_cli(
        "warm-cache", "--weights", str(TINY_WEIGHTS), "--device", "cpu", "--dtype", "float32", "--compile", "on"
    )
    assert result.code == 2, result.stderr[-2000:]
    expected = (
        f"'FRAMEPACK_COMPILE_CACHE': no compiled kernels could be written to {blocked / 'cache'}: "
        f"{blocked} is not a folder"
    )
    assert expected in result.stderr
    assert "loading" not in result.stderr and not list(tmp_path.glob("**/*.partial"))  # failed before the engine


def test_a_missing_folder_under_a_folder_is_writable_and_the_check_creates_nothing(tmp_path):
    assert compile_cache.unwritable_reason(tmp_path / "new" / "deeper") is None
    assert not (tmp_path / "new").exists()


def test_warm_cache_refuses_when_nothing_compiles(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("FRAMEPACK_COMPILE_CACHE", str(tmp_path / "cache"))
    result = run_cli("warm-cache", "--weights", str(TINY_WEIGHTS), "--device", "cpu", "--compile", "off")
    assert result.code == 2 and "nothing was compiled with these settings" in result.stderr
    assert not (tmp_path / "cache").exists()
