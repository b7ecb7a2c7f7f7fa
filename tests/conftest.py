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


@pytest.fixture(scope="session")
def services(tmp_path_factory):
    """An eager and a compiled ("off", "on") service on the tiny weights, set up as predict.py sets them up, with
    a LoRA folder of their own. Compiling takes most of a minute, so the tests that need it share it (and run on
    one worker: `xdist_group("compiled")`)."""
    from framepack.serving.service import FramePackService

    made = {}
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FRAMEPACK_WEIGHTS", str(TINY_WEIGHTS))
        env.setenv("FRAMEPACK_LORA_DIR", str(tmp_path_factory.mktemp("loras")))
        for mode in ("off", "on"):
            env.setenv("FRAMEPACK_COMPILE", mode)
            env.setenv("FRAMEPACK_OUTPUT_DIR", str(tmp_path_factory.mktemp(f"outputs-{mode}")))
            made[mode] = FramePackService.setup()
    yield made
    for service in made.values():
        service.close()


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
