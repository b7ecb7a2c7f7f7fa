"""The engine's configuration: one object that every entry point builds, from FRAMEPACK_* variables read once.

Each setting is declared once, in `SETTINGS`: its field of `EngineConfig`, its variable, what it accepts, its
default as the docs say it, and its help. From that declaration come the parsing of the variables
(`EngineConfig.from_env`), the validation of every value (naming the variable, or the flag), the local
command's flags (`add_flags`) and the README's table of settings (`settings_table`; a test keeps the README in
step). The service (and so predict.py) builds the config from the environment alone; the local command maps its
flags onto the same fields, over the environment's values.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

# The released FramePack models (`core/variants.py`): the API's model_variant input and the engine's variants.
ModelVariant = Literal["original", "f1"]
MODEL_VARIANTS: tuple[str, ...] = get_args(ModelVariant)

MEMORY_MODES = ("auto", "high", "low")
COMPILE_MODES = ("auto", "on", "off")
# "auto" is the fastest kernel that passes its probe (acceleration.ATTENTION_PREFERENCE); sage only when asked.
ATTENTION_CHOICES = ("auto", "flash_attention_4", "_native_cudnn", "_native_flash", "native", "sage")
DEVICES = ("cpu", "cuda")
DTYPES = ("float32", "bfloat16")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
DEFAULT_LORA_CACHE = Path.home() / ".cache" / "framepack" / "loras"
DEFAULT_LORA_MAX_BYTES = 4 * 2**30
DEFAULT_LORA_CACHE_MAX_BYTES = 20 * 2**30
DEFAULT_PARALLEL_TIMEOUT = 120.0


@dataclass(frozen=True)
class Kind:
    """How a setting's text becomes its value and which values are allowed.

    `parse(text)` -> value, raising ValueError with the reason; `check(value)` -> the reason a value is refused,
    or None; `accepts`: what the docs say it takes.
    """

    parse: Callable[[str], Any]
    check: Callable[[Any], str | None]
    accepts: str
    metavar: str | None = None  # how --help shows a flag's value (choices: each of them)


def _choice(*allowed: str) -> Kind:
    return Kind(
        parse=str.lower,
        check=lambda value: None if value in allowed else f"must be one of {', '.join(allowed)}, got {value!r}",
        accepts=", ".join(allowed),
        metavar="|".join(allowed),
    )


def _switch(text: str) -> bool:
    if text.lower() not in _TRUE + _FALSE:
        raise ValueError(f"must be 1 or 0 (true/false, yes/no, on/off), got {text!r}")
    return text.lower() in _TRUE


def _whole_bytes(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"must be a whole number of bytes, got {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"must be a number of seconds, got {text!r}") from None


def _gpus_problem(value: str) -> str | None:
    if str(value) == "auto" or (str(value).isdigit() and int(value) >= 1):
        return None
    return f"must be auto or a number of GPUs (1 or more), got {value!r}"


def _memory_mode_problem(value: str) -> str | None:
    if value in MEMORY_MODES or memory_budget_gib(value) is not None:
        return None
    return f"must be one of {', '.join(MEMORY_MODES)} or a budget in GiB (a number above 0, such as 24), got {value!r}"


def _nothing(value: Any) -> None:
    return None


PATH = Kind(Path, _nothing, "a folder", "DIR")
HTTPS_URL = Kind(
    str,
    lambda value: None if value.lower().startswith("https://") else f"must be an https URL, got {value!r}",
    "an https URL",
    "URL",
)
SWITCH = Kind(_switch, _nothing, "1/0, true/false, yes/no, on/off")
BYTES = Kind(
    _whole_bytes, lambda value: None if value > 0 else f"must be a positive number of bytes, got {value}", "bytes"
)
SECONDS = Kind(
    _seconds,
    lambda value: None if 0 < value < float("inf") else f"must be a number of seconds above 0, got {value}",
    "seconds",
)
GPUS = Kind(str.lower, _gpus_problem, "auto or a number", "auto|N")
MEMORY_MODE = Kind(str.lower, _memory_mode_problem, "auto, high, low, or a budget in GiB such as 24")


@dataclass(frozen=True)
class Setting:
    """One engine setting: `name` is its EngineConfig field; `variable` its FRAMEPACK_* variable (None: a flag
    only); `flag` the local command's option for it, if it has one."""

    name: str
    variable: str | None
    kind: Kind
    default: str
    help: str
    flag: str | None = None

    def parse(self, text: str) -> Any:
        """The value of the variable's `text`; ValueError naming the variable."""
        try:
            return self.kind.parse(text.strip())
        except ValueError as error:
            raise ValueError(f"{self.variable} {error}") from None

    def problem(self, value: Any) -> str | None:
        """Why `value` is refused, naming the variable (or the field), or None."""
        reason = self.kind.check(value)
        return None if reason is None else f"{self.variable or self.name} {reason}"


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "weights_dir", "FRAMEPACK_WEIGHTS", PATH, "weights", "the weights folder, in the hub layout", flag="--weights"
    ),
    Setting("device", None, _choice(*DEVICES), "cuda when available", "where the models run", flag="--device"),
    Setting(
        "dtype", None, _choice(*DTYPES), "bfloat16 on cuda, float32 on cpu", "the transformer's dtype", flag="--dtype"
    ),
    Setting("output_dir", "FRAMEPACK_OUTPUT_DIR", PATH, "a fresh temporary folder", "where MP4s are written"),
    Setting(
        "memory_mode",
        "FRAMEPACK_MEMORY_MODE",
        MEMORY_MODE,
        "auto",
        "high keeps every model on the GPU, low streams every block, a number is a GPU memory budget in GiB",
    ),
    Setting(
        "compile",
        "FRAMEPACK_COMPILE",
        _choice(*COMPILE_MODES),
        "auto",
        "compile the transformer blocks: auto (resident weights on a GPU), on (also on the CPU), off",
        flag="--compile",
    ),
    Setting(
        "fp8",
        "FRAMEPACK_FP8",
        SWITCH,
        "off",
        "run the transformer blocks' Linear layers in FP8 (faster on Ada/Hopper GPUs, output differs by a few "
        "percent; in low-VRAM mode half the bytes are held or streamed)",
        flag="--fp8",
    ),
    Setting(
        "attention",
        "FRAMEPACK_ATTENTION",
        _choice(*ATTENTION_CHOICES),
        "auto",
        "the blocks' attention kernel: auto (the fastest that passes its probe on this GPU) or one by name; sage "
        "(SageAttention) is for GPUs without FlashAttention 4 and is only used when asked for",
        flag="--attention",
    ),
    Setting("lora_dir", "FRAMEPACK_LORA_DIR", PATH, "<weights>/loras", "the local LoRA files the HTTP API may read"),
    Setting("lora_cache_dir", "FRAMEPACK_LORA_CACHE", PATH, "~/.cache/framepack/loras", "where LoRA URLs are kept"),
    Setting("lora_max_bytes", "FRAMEPACK_LORA_MAX_BYTES", BYTES, "4 GiB", "the largest LoRA file downloaded"),
    Setting(
        "lora_cache_max_bytes",
        "FRAMEPACK_LORA_CACHE_MAX_BYTES",
        BYTES,
        "20 GiB",
        "the LoRA cache's total; the least recently used files go first",
    ),
    Setting(
        "allow_private_urls", "FRAMEPACK_ALLOW_PRIVATE_URLS", SWITCH, "off", "URL inputs may be private-network hosts"
    ),
    Setting(
        "civitai_endpoint",
        "FRAMEPACK_CIVITAI_ENDPOINT",
        HTTPS_URL,
        "https://civitai.com",
        "where civitai.com/models/... LoRA inputs are looked up (a mirror; the Hub's is HF_ENDPOINT)",
    ),
    Setting(
        "compile_cache",
        "FRAMEPACK_COMPILE_CACHE",
        Kind(Path, _nothing, "a folder, or off"),
        "<weights>/compile-cache",
        "where compiled kernels are kept between processes",
    ),
    Setting(
        "gpus",
        "FRAMEPACK_GPUS",
        GPUS,
        "auto",
        "GPUs that generate each video together (sequence parallel; high-VRAM mode only): auto (every visible "
        "GPU) or a number; with device cpu, that many CPU processes",
        flag="--gpus",
    ),
    Setting(
        "parallel_timeout",
        "FRAMEPACK_PARALLEL_TIMEOUT",
        SECONDS,
        "120",
        "seconds a collective between GPUs may take before it fails",
    ),
)
SETTING = {setting.name: setting for setting in SETTINGS}
ENV = {setting.name: setting.variable for setting in SETTINGS if setting.variable}


@dataclass(frozen=True)
class LoraDownloads:
    """Where LoRA URLs are cached, the largest file downloaded and the cache's total (bytes), whether URL
    inputs may point into private networks (`downloads.py`), and where CivitAI is asked (`lora_sources.py`)."""

    cache_dir: Path = DEFAULT_LORA_CACHE
    max_bytes: int = DEFAULT_LORA_MAX_BYTES
    cache_max_bytes: int = DEFAULT_LORA_CACHE_MAX_BYTES
    allow_private: bool = False
    civitai_endpoint: str = "https://civitai.com"


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
    civitai_endpoint: str = "https://civitai.com"
    compile_cache: Path | None = None  # None: <weights>/compile-cache; Path("off"): no cache
    gpus: str = "auto"  # or a number: processes of sequence parallelism (`parallel.py`)
    parallel_timeout: float = DEFAULT_PARALLEL_TIMEOUT

    def __post_init__(self):
        for setting in SETTINGS:
            value = getattr(self, setting.name)
            problem = None if value is None else setting.problem(value)
            if problem is not None:
                raise ValueError(problem)
        unknown = [v for v in self.variants if v not in MODEL_VARIANTS]
        if unknown or not self.variants:
            raise ValueError(f"variants must be some of {', '.join(MODEL_VARIANTS)}, got {self.variants!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> EngineConfig:
        """The FRAMEPACK_* variables of `environ` (default: os.environ); `overrides` (not None) win."""
        environ = os.environ if environ is None else environ
        values = {}
        for setting in SETTINGS:
            text = environ.get(setting.variable, "").strip() if setting.variable else ""
            if text:
                values[setting.name] = setting.parse(text)
        values.update({name: value for name, value in overrides.items() if value is not None})
        return cls(**values)

    def local_lora_dirs(self) -> tuple[Path, Path]:
        """Where the HTTP API reads local LoRA files: the LoRA folder, and the cache of downloaded ones."""
        return (self.lora_dir or self.weights_dir / "loras", self.lora_cache_dir)

    def lora_downloads(self) -> LoraDownloads:
        return LoraDownloads(
            self.lora_cache_dir,
            self.lora_max_bytes,
            self.lora_cache_max_bytes,
            self.allow_private_urls,
            self.civitai_endpoint,
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


def add_flags(parser: argparse.ArgumentParser, names: tuple[str, ...] | None = None) -> None:
    """The settings that are flags (those of `names`, by default all), as options over the FRAMEPACK_* variables:
    each lands in the namespace under its field's name, None when not given."""
    for setting in SETTINGS:
        if setting.flag is None or (names is not None and setting.name not in names):
            continue
        default = f"${setting.variable} or {setting.default}" if setting.variable else setting.default
        help = f"{setting.help} (default: {default})"
        if setting.kind is SWITCH:
            parser.add_argument(setting.flag, dest=setting.name, action="store_true", default=None, help=help)
            continue
        parser.add_argument(
            setting.flag, dest=setting.name, type=_flag_parser(setting), default=None, metavar=setting.kind.metavar,
            help=help,
        )  # fmt: skip


def _flag_parser(setting: Setting) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = setting.kind.parse(text.strip())
        reason = setting.kind.check(value)
        if reason is not None:
            raise argparse.ArgumentTypeError(reason)
        return value

    return parse


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags (`add_flags`), by field name; None where a flag was not given."""
    return {setting.name: getattr(args, setting.name, None) for setting in SETTINGS if setting.flag is not None}


def settings_table() -> str:
    """The settings as the README's markdown table: variable, flag, what it accepts, default, what it sets."""
    rows = ["| variable | flag | accepts | default | what it sets |", "| --- | --- | --- | --- | --- |"]
    for setting in SETTINGS:
        variable = f"`{setting.variable}`" if setting.variable else ""
        flag = f"`{setting.flag}`" if setting.flag is not None else ""
        rows.append(f"| {variable} | {flag} | {setting.kind.accepts} | {setting.default} | {setting.help} |")
    return "\n".join(rows) + "\n"
