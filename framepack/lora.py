"""LoRA for the packed transformer: three key formats, applied as forward hooks, removed exactly.

Formats FramePack LoRAs come in, all mapped onto diffusers' module paths:
- musubi-tuner: `lora_unet_<module path with _>.lora_down.weight` / `.lora_up.weight` / `.alpha`;
- diffusers / PEFT: `transformer.<module path>.lora_A.weight` / `.lora_B.weight`;
- original HunyuanVideo names (`double_blocks.N.img_attn_qkv`, `single_blocks.N.linear1`, ...), with fused
  projections split onto diffusers' separate q/k/v (and MLP) layers; prefixes `diffusion_model.` or
  `lora_unet_` (underscored) are accepted too.

A LoRA adds scale * (alpha / rank) * up(down(x)) to a Linear layer's output through a forward hook, so the
base weights are never modified and removing the hooks restores the model exactly. Files are only ever read
as safetensors; URLs are downloaded once into a cache, bounded in size and time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from .float8 import Float8Linear
from .weights import CheckpointMismatch, safetensors_shapes

logger = logging.getLogger(__name__)

CACHE_ENV = "FRAMEPACK_LORA_CACHE"
MAX_BYTES_ENV = "FRAMEPACK_LORA_MAX_BYTES"
DEFAULT_MAX_BYTES = 4 * 2**30
DOWNLOAD_TIMEOUT_S = 600.0

_PARTS = ((".lora_down.weight", "down"), (".lora_A.weight", "down"), (".lora_up.weight", "up"),
          (".lora_B.weight", "up"), (".alpha", "alpha"))
_PREFIXES = ("base_model.model.", "transformer.", "diffusion_model.", "model.diffusion_model.")

# Original HunyuanVideo layer -> diffusers layers; each fused output is split in this order.
_DOUBLE = {
    "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "img_attn_proj": ("attn.to_out.0",),
    "img_mlp.fc1": ("ff.net.0.proj",),
    "img_mlp.fc2": ("ff.net.2",),
    "img_mod.linear": ("norm1.linear",),
    "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "txt_attn_proj": ("attn.to_add_out",),
    "txt_mlp.fc1": ("ff_context.net.0.proj",),
    "txt_mlp.fc2": ("ff_context.net.2",),
    "txt_mod.linear": ("norm1_context.linear",),
}
_SINGLE = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
    "modulation.linear": ("norm.linear",),
}
_ORIGINAL = re.compile(r"^(double|single)_blocks[._](\d+)[._](.+)$")


class LoraError(ValueError):
    """A LoRA cannot be used; `name` is the API input it came from."""

    def __init__(self, name: str, message: str):
        super().__init__(f"Invalid input '{name}': {message}")
        self.name = name


@dataclass
class LoraLayer:
    """One diffusers Linear's low-rank update: down (rank, in), up (out, rank), factor = alpha / rank."""

    module: str
    down: torch.Tensor
    up: torch.Tensor
    factor: float


def _split_key(key: str) -> tuple[str, str] | None:
    for suffix, part in _PARTS:
        if key.endswith(suffix):
            return key[: -len(suffix)], part
    return None


def _strip_prefix(base: str) -> str:
    for prefix in _PREFIXES:
        if base.startswith(prefix):
            return base[len(prefix):]
    return base


def _targets(base: str, linear_names: dict[str, str]) -> list[str] | None:
    """Diffusers module paths a LoRA base name updates (several for a fused original layer), or None."""
    underscored = base.startswith("lora_unet_")
    name = base[len("lora_unet_"):] if underscored else _strip_prefix(base)
    if not underscored and name in linear_names.values():
        return [name]
    if underscored and name in linear_names:
        return [linear_names[name]]
    match = _ORIGINAL.match(name)
    if match:
        kind, index, layer = match.groups()
        table = _DOUBLE if kind == "double" else _SINGLE
        lookup = {k.replace(".", "_") if underscored else k: v for k, v in table.items()}
        if layer in lookup:
            block = "transformer_blocks" if kind == "double" else "single_transformer_blocks"
            return [f"{block}.{index}.{target}" for target in lookup[layer]]
    return None


def convert_lora(state: dict[str, torch.Tensor], model: torch.nn.Module, name: str) -> list[LoraLayer]:
    """Map a LoRA state dict onto `model`'s Linear layers; raises LoraError naming any key that matches nothing."""
    linears = {path: module for path, module in model.named_modules()
               if isinstance(module, (torch.nn.Linear, Float8Linear))}
    linear_names = {path.replace(".", "_"): path for path in linears}
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    keys_of: dict[str, list[str]] = {}
    unmatched = []
    for key, tensor in state.items():
        split = _split_key(key)
        if split is None:
            unmatched.append(key)
            continue
        grouped.setdefault(split[0], {})[split[1]] = tensor
        keys_of.setdefault(split[0], []).append(key)
    layers = []
    for base, parts in grouped.items():
        targets = _targets(base, linear_names)
        if targets is None or "down" not in parts or "up" not in parts:
            unmatched.extend(keys_of[base])
            continue
        down, up = parts["down"].float(), parts["up"].float()
        rank = down.shape[0]
        factor = float(parts["alpha"]) / rank if "alpha" in parts else 1.0
        sizes = [linears[t].out_features for t in targets]
        if up.shape[0] != sum(sizes) or any(linears[t].in_features != down.shape[1] for t in targets):
            raise LoraError(name, f"{base}: shapes up {list(up.shape)}, down {list(down.shape)} do not fit "
                                  f"{', '.join(targets)}")
        for target, part in zip(targets, up.split(sizes, dim=0)):
            layers.append(LoraLayer(target, down, part.contiguous(), factor))
    if unmatched:
        shown = ", ".join(sorted(unmatched)[:8])
        raise LoraError(name, f"{len(unmatched)} of {len(state)} keys match no transformer layer "
                              f"(first: {shown}); expected musubi-tuner, diffusers/PEFT or HunyuanVideo names")
    if not layers:
        raise LoraError(name, "the file holds no LoRA weights")
    return layers


class LoraHooks:
    """Forward hooks adding LoRA updates to a model's Linear layers; `remove()` restores the model exactly."""

    def __init__(self):
        self.handles: list[torch.utils.hooks.RemovableHandle] = []

    def add(self, model: torch.nn.Module, layers: list[LoraLayer], scale: float, device: torch.device) -> None:
        modules = dict(model.named_modules())
        for layer in layers:
            module = modules[layer.module]
            dtype = module.compute_dtype if isinstance(module, Float8Linear) else module.weight.dtype
            down = layer.down.to(device=device, dtype=dtype)
            up = (layer.up * (scale * layer.factor)).to(device=device, dtype=dtype)

            def hook(_module, args, output, down=down, up=up):
                return output + F.linear(F.linear(args[0].to(down.dtype), down), up).to(output.dtype)

            self.handles.append(module.register_forward_hook(hook))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def read_safetensors(path: Path, name: str) -> dict[str, torch.Tensor]:
    """Load a LoRA file; anything that is not a valid safetensors file is refused (never unpickled)."""
    try:
        safetensors_shapes(path)
        return load_file(str(path))
    except (CheckpointMismatch, ValueError, OSError, UnicodeDecodeError, RuntimeError) as error:
        raise LoraError(name, f"{path.name} is not a valid .safetensors file ({error})") from None


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "framepack" / "loras"))


def fetch(source: str, name: str, max_bytes: int | None = None, timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """A local path as is; a URL downloaded once into the cache (by URL hash), at most `max_bytes`."""
    if "://" not in source:
        return Path(source)
    max_bytes = max_bytes or int(os.environ.get(MAX_BYTES_ENV, DEFAULT_MAX_BYTES))
    target = cache_dir() / (hashlib.sha256(source.encode()).hexdigest()[:32] + ".safetensors")
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    logger.info("downloading %s for %s", source, name)
    try:
        with urllib.request.urlopen(source, timeout=timeout) as response, open(partial, "wb") as out:
            declared = int(response.headers.get("Content-Length") or 0)
            if declared > max_bytes:
                raise LoraError(name, f"{source} is {declared} bytes, more than the {max_bytes} allowed")
            received = 0
            while chunk := response.read(1 << 20):
                received += len(chunk)
                if received > max_bytes:
                    raise LoraError(name, f"{source} is larger than the {max_bytes} bytes allowed")
                out.write(chunk)
        read_safetensors(partial, name)
        os.replace(partial, target)
    except LoraError:
        raise
    except OSError as error:
        raise LoraError(name, f"could not download {source}: {error}") from None
    finally:
        partial.unlink(missing_ok=True)
    return target


def apply_request_loras(model: torch.nn.Module, loras: list[tuple[str, str, float]],
                        device: torch.device) -> LoraHooks:
    """Fetch, check and hook every (input name, source, scale) LoRA; all checks happen before any hook."""
    converted = []
    for name, source, scale in loras:
        source = source.strip()
        if source:
            converted.append((convert_lora(read_safetensors(fetch(source, name), name), model, name), scale))
    hooks = LoraHooks()
    for layers, scale in converted:
        hooks.add(model, layers, scale, device)
    return hooks
