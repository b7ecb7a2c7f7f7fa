"""The engine's configuration: one object that every entry point builds, from FRAMEPACK_* variables read once.

The service (and so predict.py) builds it from the environment alone; the local command maps its flags onto
the same fields, over the environment's values. Bad values are refused here, naming the variable.

| field | variable | values (default) |
| --- | --- | --- |
| weights_dir | FRAMEPACK_WEIGHTS | a folder in the hub layout (weights) |
| output_dir | FRAMEPACK_OUTPUT_DIR | where MP4s are written (a fresh temporary folder) |
| memory_mode | FRAMEPACK_MEMORY_MODE | auto, high, low, or a GPU memory budget in GiB such as 24 (auto) |
| compile | FRAMEPACK_COMPILE | auto, on, off (auto) |
| fp8 | FRAMEPACK_FP8 | 1/0, true/false, yes/no, on/off (off) |
| attention | FRAMEPACK_ATTENTION | auto or a kernel: flash_attention_4, _native_cudnn, _native_flash, native, sage |
| lora_dir | FRAMEPACK_LORA_DIR | the folder of local LoRA files the HTTP API may read (<weights>/loras) |
| lora_cache_dir | FRAMEPACK_LORA_CACHE | where LoRA URLs are downloaded to (~/.cache/framepack/loras) |
| lora_max_bytes | FRAMEPACK_LORA_MAX_BYTES | the largest LoRA file downloaded, in bytes (4 GiB) |
| lora_cache_max_bytes | FRAMEPACK_LORA_CACHE_MAX_BYTES | the cache's total; least recently used go first (20 GiB) |
| allow_private_urls | FRAMEPACK_ALLOW_PRIVATE_URLS | 1/0: URL inputs may be private-network hosts (off) |
| compile_cache | FRAMEPACK_COMPILE_CACHE | a folder for compiled kernels, or off (<weights>/compile-cache) |
| gpus | FRAMEPACK_GPUS | auto (every visible GPU; 1 on the CPU) or a number; on the CPU, processes (auto) |
| parallel_timeout | FRAMEPACK_PARALLEL_TIMEOUT | seconds a collective between GPUs may take before it fails (120) |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

# The released FramePack models (`variants.py`): the API's model_variant input and the engine's variants.
ModelVariant = Literal["original", "f1"]
MODEL_VARIANTS: tuple[str, ...] = get_args(ModelVariant)

MEMORY_MODES = ("auto", "high", "low")
COMPILE_MODES = ("auto", "on", "off")
# "auto" is the fastest kernel that passes its probe (acceleration.ATTENTION_PREFERENCE); sage only when asked.
ATTENTION_CHOICES = ("auto", "flash_attention_4", "_native_cudnn", "_native_flash", "native", "sage")
DEVICES = ("cpu", "cuda")
DTYPES = ("float32", "bfloat16")
ENV = {
    "weights_dir": "FRAMEPACK_WEIGHTS",
    "output_dir": "FRAMEPACK_OUTPUT_DIR",
    "memory_mode": "FRAMEPACK_MEMORY_MODE",
    "compile": "FRAMEPACK_COMPILE",
    "fp8": "FRAMEPACK_FP8",
    "attention": "FRAMEPACK_ATTENTION",
    "lora_dir": "FRAMEPACK_LORA_DIR",
    "lora_cache_dir": "FRAMEPACK_LORA_CACHE",
    "lora_max_bytes": "FRAMEPACK_LORA_MAX_BYTES",
    "lora_cache_max_bytes": "FRAMEPACK_LORA_CACHE_MAX_BYTES",
    "allow_private_urls": "FRAMEPACK_ALLOW_PRIVATE_URLS",
    "compile_cache": "FRAMEPACK_COMPILE_CACHE",
    "gpus": "FRAMEPACK_GPUS",
    "parallel_timeout": "FRAMEPACK_PARALLEL_TIMEOUT",
}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
DEFAULT_LORA_CACHE = Path.home() / ".cache" / "framepack" / "loras"
DEFAULT_LORA_MAX_BYTES = 4 * 2**30
DEFAULT_LORA_CACHE_MAX_BYTES = 20 * 2**30
DEFAULT_PARALLEL_TIMEOUT = 120.0


@dataclass(frozen=True)
class LoraDownloads:
    """Where LoRA URLs are cached, the largest file downloaded and the cache's total (bytes), and whether URL
    inputs may point into private networks (`downloads.py`)."""

    cache_dir: Path = DEFAULT_LORA_CACHE
    max_bytes: int = DEFAULT_LORA_MAX_BYTES
    cache_max_bytes: int = DEFAULT_LORA_CACHE_MAX_BYTES
    allow_private: bool = False


@dataclass(frozen=True)
class EngineConfig:
    """How to start the engine. `device`/`dtype` None: CUDA when available, bf16 there and float32 on the CPU."""

    weights_dir: Path = Path("weights")
    variants: tuple[str, ...] = MODEL_VARIANTS
    device: str | None = None
    dtype: str | None = None
    memory_mode: str = "auto"
    compile: str = "auto"
    fp8: bool = False
    attention: str = "auto"
    output_dir: Path | None = None
    lora_dir: Path | None = None
    lora_cache_dir: Path = DEFAULT_LORA_CACHE
    lora_max_bytes: int = DEFAULT_LORA_MAX_BYTES
    lora_cache_max_bytes: int = DEFAULT_LORA_CACHE_MAX_BYTES
    allow_private_urls: bool = False
    compile_cache: Path | None = None  # None: <weights>/compile-cache; Path("off"): no cache
    gpus: str = "auto"  # or a number: processes of sequence parallelism (`parallel.py`)
    parallel_timeout: float = DEFAULT_PARALLEL_TIMEOUT

    def __post_init__(self):
        if self.gpus != "auto" and not (str(self.gpus).isdigit() and int(self.gpus) >= 1):
            raise ValueError(f"{ENV['gpus']} must be auto or a number of GPUs (1 or more), got {self.gpus!r}")
        if not 0 < self.parallel_timeout < float("inf"):
            raise ValueError(
                f"{ENV['parallel_timeout']} must be a number of seconds above 0, got {self.parallel_timeout}"
            )
        if self.memory_mode not in MEMORY_MODES and memory_budget_gib(self.memory_mode) is None:
            raise ValueError(
                f"{ENV['memory_mode']} must be one of {', '.join(MEMORY_MODES)} or a budget in GiB (a number above "
                f"0, such as 24), got {self.memory_mode!r}"
            )
        choices = {"compile": COMPILE_MODES, "attention": ATTENTION_CHOICES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{ENV[name]} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name, value, allowed in (("device", self.device, DEVICES), ("dtype", self.dtype, DTYPES)):
            if value is not None and value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        for name in ("lora_max_bytes", "lora_cache_max_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{ENV[name]} must be a positive number of bytes, got {getattr(self, name)}")
        unknown = [v for v in self.variants if v not in MODEL_VARIANTS]
        if unknown or not self.variants:
            raise ValueError(f"variants must be some of {', '.join(MODEL_VARIANTS)}, got {self.variants!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> EngineConfig:
        """The FRAMEPACK_* variables of `environ` (default: os.environ); `overrides` (not None) win."""
        environ = os.environ if environ is None else environ
        values = {}
        for name, variable in ENV.items():
            text = environ.get(variable, "").strip()
            if text:
                values[name] = _parse(name, variable, text)
        values.update({name: value for name, value in overrides.items() if value is not None})
        return cls(**values)

    def local_lora_dirs(self) -> tuple[Path, Path]:
        """Where the HTTP API reads local LoRA files: the LoRA folder, and the cache of downloaded ones."""
        return (self.lora_dir or self.weights_dir / "loras", self.lora_cache_dir)

    def lora_downloads(self) -> LoraDownloads:
        return LoraDownloads(
            self.lora_cache_dir, self.lora_max_bytes, self.lora_cache_max_bytes, self.allow_private_urls
        )

    def compile_cache_dir(self) -> Path | None:
        """Where compiled kernels are kept between processes (`compile_cache.py`), or None when turned off."""
        if self.compile_cache is None:
            return self.weights_dir / "compile-cache"
        return None if str(self.compile_cache).lower() in _FALSE else self.compile_cache

    def resolved_device(self):
        import torch

        return torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def resolved_gpus(self) -> int:
        """How many processes run the transformer: `gpus`, where auto is every visible GPU (1 on the CPU)."""
        import torch

        if self.gpus != "auto":
            return int(self.gpus)
        return max(torch.cuda.device_count(), 1) if self.resolved_device().type == "cuda" else 1

    def resolved_dtype(self):
        import torch

        return getattr(torch, self.dtype or ("bfloat16" if self.resolved_device().type == "cuda" else "float32"))


def memory_budget_gib(memory_mode: str) -> float | None:
    """The GiB a memory mode such as "24" or "12.5" gives (`memory.py`), or None for a named mode or nonsense."""
    try:
        budget = float(memory_mode)
    except ValueError:
        return None
    return budget if 0 < budget < float("inf") else None


def _parse(name: str, variable: str, text: str):
    if name in ("weights_dir", "output_dir", "lora_dir", "lora_cache_dir", "compile_cache"):
        return Path(text)
    if name == "parallel_timeout":
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{variable} must be a number of seconds, got {text!r}") from None
    if name in ("lora_max_bytes", "lora_cache_max_bytes"):
        if not text.isdigit():
            raise ValueError(f"{variable} must be a whole number of bytes, got {text!r}")
        return int(text)
    if name in ("fp8", "allow_private_urls"):
        lowered = text.lower()
        if lowered not in _TRUE + _FALSE:
            raise ValueError(f"{variable} must be 1 or 0 (true/false, yes/no, on/off), got {text!r}")
        return lowered in _TRUE
    return text.lower()
