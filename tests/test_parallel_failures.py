"""Sequence parallelism compiled (inductor on the CPU), and a worker that dies: a clear error, never a hang.

Each test starts its own 2-process engine and closes it (a process holds one process group at a time).
"""

from __future__ import annotations

import os
import signal

import pytest
from test_parallel import MAX_RELATIVE_L2, latents, parallel_config

from benchmarks.measure import relative_l2
from framepack.models import all_blocks
from framepack.serving.engine import load_engine
from framepack.serving.parallel import ParallelError

pytestmark = pytest.mark.e2e  # gloo processes, compiled with inductor


def test_compiled_blocks_on_two_processes_match_one_eager_process(tiny_models):
    engine = load_engine(parallel_config(2, compile="on", variants=("original",)))
    try:
        record = engine.placement.compile_record
        assert record is not None and record.graphs >= 2 and not record.failures  # the warm-up compiled them
        assert all(
            hasattr(block, "_compiled_call_impl") for block in all_blocks(engine.models.transformers["original"])
        )
        assert relative_l2(latents(engine), latents(tiny_models)) < MAX_RELATIVE_L2
    finally:
        engine.close()


def test_a_killed_worker_gives_a_clear_error_at_once_and_again_after(tiny_models):
    engine = load_engine(parallel_config(2, variants=("original",), parallel_timeout=5))
    try:
        worker = engine.placement.parallel.processes[0]
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(10)
        message = r"worker 1 stopped \(exit code -9\); restart the service"
        with pytest.raises(ParallelError, match=message):
            latents(engine)
        with pytest.raises(ParallelError, match=message):  # the next prediction fails at once, the same way
            latents(engine)
    finally:
        engine.close()
    assert not worker.is_alive()


def test_a_stalled_worker_fails_the_forward_after_the_timeout(tiny_models):
    """A worker that stops answering (SIGSTOP: alive, but silent) leaves rank 0 waiting in a collective: after
    the timeout (5 s here) the forward fails with a clear error instead of hanging."""
    engine = load_engine(parallel_config(2, variants=("original",), parallel_timeout=5))
    worker = engine.placement.parallel.processes[0]
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        with pytest.raises(ParallelError, match=r"a collective between the 2 processes failed or stalled for 5 s"):
            latents(engine)
        with pytest.raises(ParallelError, match="restart the service"):
            latents(engine)
    finally:
        os.kill(worker.pid, signal.SIGKILL)
        engine.close()
