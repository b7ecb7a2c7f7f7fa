"""Compiled kernels kept between processes, so a new container starts without compiling.

The first start on a machine compiles the transformer blocks and the VAE's GroupNorms (about a minute on an
H200). `CompileCache.save` then writes PyTorch's cache artifacts (`torch.compiler.save_cache_artifacts`:
inductor's compiled graphs, their Triton kernels and the autograd cache) to one file, and a later process
loads it with `CompileCache.load` before it compiles: dynamo still traces each block kind (seconds), but
inductor and Triton build nothing.

The file is named by `artifact_key`, a hash of everything the kernels depend on: torch, Triton, CUDA,
diffusers, the GPU (or the CPU's vector instruction set), dtype, FP8, the attention kernel and this package's
source. A different version or GPU looks for another file, so stale artifacts are never loaded; old files stay
until removed. FlashAttention 4 compiles its own kernels with the CuTe DSL, which has a disk cache keyed by its
source and versions; `use_flash_attention_cache` keeps it in a subfolder of the same folder.

`python -m framepack warm-cache` starts the engine once to write both (README, "Cold start").
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
import os
import sys
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

_PACKAGE = Path(__file__).resolve().parent.parent  # framepack/
FLASH_ATTENTION_SUBFOLDER = "flash-attention-4"


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        return f"{properties.name} sm{properties.major}{properties.minor} cuda{torch.version.cuda}"
    return f"cpu {torch.backends.cpu.get_cpu_capability()}"


def artifact_key(device: torch.device, dtype: torch.dtype, float8: bool, attention: str) -> str:
    """A short hash of what compiled kernels depend on (versions, hardware, settings, our source)."""
    digest = hashlib.sha256()
    parts = [
        f"python {sys.version_info.major}.{sys.version_info.minor}",
        f"torch {torch.__version__}",
        f"triton {_version('triton')}",
        f"diffusers {_version('diffusers')}",
        _hardware(device),
        f"{dtype} fp8 {float8} attention {attention}",
    ]
    digest.update("\n".join(parts).encode())
    for source in sorted(_PACKAGE.rglob("*.py")):
        digest.update(source.relative_to(_PACKAGE).as_posix().encode() + source.read_bytes())
    return digest.hexdigest()[:20]


class CompileCache:
    """One artifact file, `<folder>/torch-<key>.bin`, loaded before compiling and written after compiling
    something from scratch (`kernels_compiled`)."""

    def __init__(self, folder: Path, key: str):
        self.folder = Path(folder)
        self.path = self.folder / f"torch-{key}.bin"
        self.loaded = False

    def load(self) -> bool:
        """Hand the artifacts to PyTorch's caches, if the file exists; True if it did."""
        if not self.path.is_file():
            logger.info(f"compile cache: no artifacts at {self.path}; the first generation compiles")
            return False
        artifacts = self.path.read_bytes()
        torch.compiler.load_cache_artifacts(artifacts)
        self.loaded = True
        logger.info(f"compile cache: loaded {len(artifacts) / 2**20:.1f} MiB of compiled kernels from {self.path}")
        return True

    def save(self) -> Path | None:
        """Write the artifacts of this process's compilations, if any were built here; the file's path, or None.

        Written to a temporary name first, so a reader never sees half a file. An unwritable folder is logged,
        not raised: the engine works without the cache.
        """
        saved = torch.compiler.save_cache_artifacts()
        if saved is None:
            return None
        artifacts, _info = saved
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            partial.write_bytes(artifacts)
            partial.replace(self.path)
        except OSError as error:
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
            logger.warning(f"compile cache: could not write {self.path} ({error}); the next start compiles again")
            return None
        logger.info(f"compile cache: wrote {len(artifacts) / 2**20:.1f} MiB of compiled kernels to {self.path}")
        return self.path


def unwritable_reason(folder: Path) -> str | None:
    """Why files could not be created in `folder` (made if missing), or None if they could; creates nothing.

    Checked before the minutes of compiling that `warm-cache` spends, so an unusable folder fails at once.
    """
    existing = Path(folder)
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def kernels_compiled() -> int:
    """How many graphs inductor compiled from scratch in this process (its cache misses)."""
    from torch._dynamo.utils import counters

    return counters["inductor"]["fxgraph_cache_miss"]


def use_flash_attention_cache(folder: Path) -> bool:
    """Point FlashAttention 4's kernel cache at `<folder>/flash-attention-4`; False if FA4 is already imported.

    FA4 reads these variables when it is imported, so this must run first; a variable set by the user wins.
    """
    if "flash_attn.cute" in sys.modules:
        return False
    os.environ.setdefault("FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED", "1")
    os.environ.setdefault("FLASH_ATTENTION_CUTE_DSL_CACHE_DIR", str(Path(folder) / FLASH_ATTENTION_SUBFOLDER))
    return True
