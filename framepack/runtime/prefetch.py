"""Reading the weight files into the page cache in the background, while Python imports torch and diffusers.

A cold container spends seconds importing (torch, diffusers, the model classes) before it reads a byte of its
~40 GiB of weights, and the disk then sets the pace (1.5 GiB/s on the H200 machine, BENCHMARKS.md). Started
before those imports (predict.py's first lines; `engine.load_engine` starts it otherwise), `start` has a few
threads read every weight file the engine will load, in loading order, with large reads; the loader then finds
the pages in memory. The files are read once either way: whichever of the prefetcher and the loader reaches a
page first reads it from disk.

Only the standard library is used, so it can start before torch is imported. It skips, and says so, when the
files do not fit in the memory this process may still fill (the host's, or its container's limit): prefetched
pages would only evict each other.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..core.weights import required_components

logger = logging.getLogger(__name__)

READ_BYTES = 16 * 2**20
THREADS = 8
# The files must fit in this share of the host's available memory, or prefetching is skipped.
MEMORY_SHARE = 0.8


def weight_files(weights_dir: Path, variants: tuple[str, ...]) -> list[Path]:
    """The safetensors files `load_models` reads, in the order it reads them (encoders, VAE, transformers)."""
    files = []
    for component in required_components(variants):
        files += sorted(component.path(weights_dir).glob("*.safetensors"))
    return files


def available_memory_bytes() -> int | None:
    """Memory this process may still fill: the host's MemAvailable, or less under a container's cgroup limit
    (cgroup v2: memory.max less memory.current); None where neither can be read."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    cgroup = Path("/sys/fs/cgroup")
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int((cgroup / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


@dataclass
class Prefetch:
    """A running (or finished) prefetch of `files`; `wait()` returns the bytes read and the seconds taken."""

    files: list[Path]
    bytes_read: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, threads: int = THREADS) -> Prefetch:
        chunks = iter([(path, offset) for path in self.files for offset in range(0, path.stat().st_size, READ_BYTES)])
        remaining = [threads]

        def read_chunks():
            buffer = bytearray(READ_BYTES)
            descriptors = {}
            try:
                while (chunk := self._next(chunks)) is not None:
                    path, offset = chunk
                    if path not in descriptors:
                        descriptors[path] = os.open(path, os.O_RDONLY)
                    count = os.preadv(descriptors[path], [buffer], offset)
                    with self._lock:
                        self.bytes_read += count
            except OSError as error:  # a file removed or unreadable: the loader reports it properly
                logger.debug(f"prefetch stopped: {error}")
            finally:
                for descriptor in descriptors.values():
                    os.close(descriptor)
                with self._lock:
                    remaining[0] -= 1
                    if remaining[0] == 0:
                        self.finished = time.monotonic()

        self._threads = [
            threading.Thread(target=read_chunks, name="weights-prefetch", daemon=True) for _ in range(threads)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def _next(self, chunks):
        with self._lock:
            return next(chunks, None)

    def wait(self) -> tuple[int, float]:
        for thread in self._threads:
            thread.join()
        return self.bytes_read, (self.finished or time.monotonic()) - self.started


_running: dict[Path, Prefetch] = {}


def skip_reason(total_bytes: int, available_bytes: int | None) -> str | None:
    """Why not to prefetch `total_bytes` of files with `available_bytes` of memory free (None: unknown), or None."""
    if total_bytes == 0:
        return "no weight files"
    if available_bytes is not None and total_bytes > MEMORY_SHARE * available_bytes:
        return (
            f"{total_bytes / 2**30:.1f} GiB of weights, {available_bytes / 2**30:.1f} GiB of memory available "
            "(they would evict each other from the page cache)"
        )
    return None


def start(weights_dir: Path, variants: tuple[str, ...]) -> Prefetch | None:
    """Prefetch the weights of `variants` in `weights_dir`, once per folder per process; None if skipped."""
    key = Path(weights_dir).resolve()
    if key in _running:
        return _running[key]
    # Resolved and once each: a variant folder linked to another's files is read once.
    files = list(dict.fromkeys(path.resolve() for path in weight_files(weights_dir, variants) if path.is_file()))
    reason = skip_reason(sum(path.stat().st_size for path in files), available_memory_bytes())
    if reason is not None:
        logger.info(f"weights prefetch skipped: {reason}")
        return None
    _running[key] = Prefetch(files).run()
    return _running[key]


def start_from_env() -> Prefetch | None:
    """`start` for the folder and variants the FRAMEPACK_* variables name (predict.py calls this first).

    A bad variable is left for the engine's start-up to report.
    """
    from ..config import EngineConfig

    # Broad on purpose: this only saves time, so nothing it meets (a bad variable, an unreadable folder) may stop
    # the import; the engine's start-up reports such problems properly.
    try:
        config = EngineConfig.from_env()
        return start(config.weights_dir, config.variants)
    except Exception as error:  # noqa: BLE001
        logger.info(f"weights prefetch skipped: {type(error).__name__}: {error}")
        return None
