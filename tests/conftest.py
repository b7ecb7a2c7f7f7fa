"""The tests' shared fixtures; the helpers they use are in `helpers/`."""

from __future__ import annotations

import http.server
import os
import ssl
from dataclasses import dataclass

# Under pytest-xdist each worker takes its share of the cores, set before torch starts its thread pool (here, and
# in the processes tests start): OpenMP threads spin while they wait, so more threads than cores slow every test.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers.hosts import HostileHosts, HostileRoutes, serve
from helpers.paths import TINY_WEIGHTS


@pytest.fixture(autouse=True, scope="session")
def compile_cache_outside_the_fixtures(tmp_path_factory):
    """Compiled mode writes its kernels beside the weights by default: keep the fixtures folder clean."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FRAMEPACK_COMPILE_CACHE", str(tmp_path_factory.mktemp("compile-cache")))
        yield


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


@pytest.fixture(scope="session")
def tiny_engine():
    """The engine as every entry point starts it, on the tiny weights: both variants, float32 on the CPU, eager."""
    from framepack.config import EngineConfig
    from framepack.serving.engine import load_engine

    return load_engine(EngineConfig(weights_dir=TINY_WEIGHTS, device="cpu", dtype="float32", compile="off"))


@pytest.fixture
def block_stack_runs(monkeypatch):
    """Real runs of the transformer's block stack per section (TeaCache skips run none).

    Counted where the stack is entered, in eager Python, so the count is the same when the blocks themselves
    are compiled (a global module hook would be traced into the compiled blocks, and its counter guarded on).
    The compiled engine's start-up warm-up generation is not part of the case, so its runs are forgotten.
    """
    runs: list[int] = []
    from framepack.core.progress import ProgressReporter
    from framepack.runtime.transformer import PackedTransformer
    from framepack.serving.engine import Engine

    original_warm_up = Engine.warm_up

    def warm_up(self, *args):
        original_warm_up(self, *args)
        runs.clear()

    original_section_started = ProgressReporter.section_started
    original_run_blocks = PackedTransformer._run_blocks

    def section_started(self, generation_index, description=""):
        runs.append(0)
        return original_section_started(self, generation_index, description)

    def run_blocks(self, *args):
        runs[-1] += 1
        return original_run_blocks(self, *args)

    monkeypatch.setattr(ProgressReporter, "section_started", section_started)
    monkeypatch.setattr(PackedTransformer, "_run_blocks", run_blocks)
    monkeypatch.setattr(Engine, "warm_up", warm_up)
    return runs


@pytest.fixture(scope="session")
def tiny_models():
    """Both variants' components from the tiny weights, float32 on the CPU (loaded once per session)."""
    from framepack.models import load_models

    return load_models(TINY_WEIGHTS, ("original", "f1"), torch.device("cpu"), torch.float32)


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
    yield HostileHosts(serve(secure), serve(plain), ca_file)
    HostileRoutes.release.set()
    secure.shutdown()
    plain.shutdown()
