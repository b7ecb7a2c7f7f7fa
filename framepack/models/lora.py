"""LoRA for the packed transformer: three key formats, merged into the weights per request, restored exactly.

Formats FramePack LoRAs come in, all mapped onto diffusers' module paths:
- musubi-tuner: `lora_unet_<module path with _>.lora_down.weight` / `.lora_up.weight` / `.alpha`;
- diffusers / PEFT: `transformer.<module path>.lora_A.weight` / `.lora_B.weight`;
- original HunyuanVideo names (`double_blocks.N.img_attn_qkv`, `single_blocks.N.linear1`, ...), with fused
  projections split onto diffusers' separate q/k/v (and MLP) layers; prefixes `diffusion_model.` or
  `lora_unet_` (underscored) are accepted too.

A LoRA adds scale * (alpha / rank) * up @ down to a Linear layer's weight. The update is merged into the
weights in place for the duration of one request (`merged_loras`), and the touched layers' original tensors are
copied back afterwards, so the base weights are bit-identical after every request. Merging, rather than forward
hooks or extra modules, is what survives `torch.compile`: a compiled block reads its weights as graph inputs,
so new values need no recompilation, while dynamo does not guard on hooks (a hook added after compiling is
silently ignored or half-applied). It also costs nothing per step, works on FP8 layers (dequantised, updated
and quantised again) and on streamed weights (updated in their host copy). Files are only ever read as
safetensors; URLs are downloaded once into a cache, bounded in size and time (`downloads.py`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..config import LoraDownloads
from ..core.downloads import cache_path, cached_download
from ..core.lora_sources import download_url, parse_lora_source
from ..core.weights import CheckpointMismatch, safetensors_shapes
from ..errors import InvalidInput
from .float8 import Float8Linear, quantize_rows

logger = logging.getLogger(__name__)


_PARTS = (
    (".lora_down.weight", "down"),
    (".lora_A.weight", "down"),
    (".lora_up.weight", "up"),
    (".lora_B.weight", "up"),
    (".alpha", "alpha"),
)
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
            return base[len(prefix) :]
    return base


def _targets(base: str, linear_names: dict[str, str]) -> list[str] | None:
    """Diffusers module paths a LoRA base name updates (several for a fused original layer), or None."""
    underscored = base.startswith("lora_unet_")
    name = base[len("lora_unet_") :] if underscored else _strip_prefix(base)
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
    """Map a LoRA state dict onto `model`'s Linear layers; raises InvalidInput naming any key that matches nothing."""
    linears = {
        path: module for path, module in model.named_modules() if isinstance(module, (torch.nn.Linear, Float8Linear))
    }
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
            raise InvalidInput(
                name, f"{base}: shapes up {list(up.shape)}, down {list(down.shape)} do not fit {', '.join(targets)}"
            )
        for target, part in zip(targets, up.split(sizes, dim=0)):
            layers.append(LoraLayer(target, down, part.contiguous(), factor))
    if unmatched:
        shown = ", ".join(sorted(unmatched)[:8])
        raise InvalidInput(
            name,
            f"{len(unmatched)} of {len(state)} keys match no transformer layer "
            f"(first: {shown}); expected musubi-tuner, diffusers/PEFT or HunyuanVideo names",
        )
    if not layers:
        raise InvalidInput(name, "the file holds no LoRA weights")
    return layers


class WeightBackup:
    """Copies of the tensors a merge overwrites, taken once per layer; `restore()` writes them back in place.

    In place, so that whatever holds the tensors (compiled graphs, streaming views into a host buffer) keeps
    seeing the same storage. Copies live in host memory, where there is room for a LoRA over every layer.
    """

    def __init__(self):
        self.saved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def keep(self, tensor: torch.Tensor) -> None:
        if id(tensor) not in self.saved:
            self.saved[id(tensor)] = (tensor, tensor.detach().to("cpu", copy=True))

    @torch.no_grad()
    def restore(self) -> None:
        for tensor, copy in self.saved.values():
            tensor.copy_(copy)
        self.saved.clear()


@torch.no_grad()
def merge_layer(module: torch.nn.Module, delta: torch.Tensor, backup: WeightBackup) -> None:
    """weight += delta for an nn.Linear or a Float8Linear (out, in), computed in float32 on delta's device.

    A Float8Linear's weight is dequantised (q * row scale), updated and quantised again row by row.
    """
    if isinstance(module, Float8Linear):
        backup.keep(module.weight)
        backup.keep(module.weight_scale)
        weight = module.weight.to(delta.device, torch.float32) * module.weight_scale.to(delta.device).t()
        quantized, scale = quantize_rows(weight + delta)
        module.weight.copy_(quantized)
        module.weight_scale.copy_(scale.t())
    else:
        backup.keep(module.weight)
        module.weight.copy_(module.weight.to(delta.device, torch.float32) + delta)


@contextmanager
def merged_loras(
    model: torch.nn.Module, loras: list[tuple[list[LoraLayer], float]], device: torch.device
) -> Iterator[None]:
    """Inside: every (layers, scale) LoRA merged into `model`'s weights; on exit, the weights as they were.

    The update of each layer is scale * (alpha / rank) * up @ down, summed over the LoRAs, in float32 on
    `device` (the execution device), then rounded once into the weight's dtype.
    """
    modules = dict(model.named_modules())
    updates: dict[str, list[tuple[LoraLayer, float]]] = {}
    for layers, scale in loras:
        for layer in layers:
            if scale != 0.0:
                updates.setdefault(layer.module, []).append((layer, scale))
    backup = WeightBackup()
    try:
        for path, parts in updates.items():  # one layer's float32 update at a time, never all of them
            delta = sum(
                (scale * layer.factor) * (layer.up.to(device) @ layer.down.to(device)) for layer, scale in parts
            )
            merge_layer(modules[path], delta, backup)
        yield
    finally:
        backup.restore()


def read_safetensors(path: Path, name: str, shown: str | None = None) -> dict[str, torch.Tensor]:
    """Load a LoRA file; anything that is not a valid safetensors file is refused (never unpickled).

    `shown` is how errors name the file (default: its name; a download's public URL, never the cache path).
    """
    try:
        safetensors_shapes(path)
        return load_file(str(path))
    except (CheckpointMismatch, ValueError, OSError, UnicodeDecodeError, RuntimeError) as error:
        raise InvalidInput(name, f"{shown or path.name} is not a valid .safetensors file ({error})") from None


@dataclass(frozen=True)
class LoadedLora:
    """A request's LoRA, checked against the model: its layer updates, strength, and the local file it came from
    (a download's file in the cache), which other processes merge in turn (`parallel.py`)."""

    name: str
    layers: list[LoraLayer]
    scale: float
    file: Path


def lora_layers(
    source: str,
    name: str,
    model: torch.nn.Module,
    downloads: LoraDownloads,
    tokens: dict[str, str | None] | None = None,
) -> tuple[list[LoraLayer], Path]:
    """The LoRA at `source` (`lora_sources.parse_lora_source`: a local file, an https URL, a Hub or CivitAI
    reference, downloads through the cache) as `model`'s layer updates, and its local file.

    `tokens`: the "hf" and "civitai" tokens, sent only to their own hosts.
    """

    def convert(path: Path, shown: str) -> list[LoraLayer]:
        return convert_lora(read_safetensors(path, name, shown), model, name)

    parsed = parse_lora_source(name, source)
    if parsed.kind == "file":
        return convert(Path(source), parsed.shown), Path(source)
    url, headers = download_url(parsed, name, downloads, tokens or {})
    return cached_download(url, name, downloads, convert, headers), cache_path(url, downloads)


def load_request_loras(
    model: torch.nn.Module,
    loras: list[tuple[str, str, float]],
    downloads: LoraDownloads,
    tokens: dict[str, str | None] | None = None,
) -> list[LoadedLora]:
    """Fetch and check every (input name, source, scale) LoRA against `model`; empty sources are skipped.

    Everything is checked before any weight changes, so a bad second LoRA never leaves the first merged.
    """
    loaded = []
    for name, source, scale in loras:
        source = source.strip()
        if source:
            layers, file = lora_layers(source, name, model, downloads, tokens)
            loaded.append(LoadedLora(name, layers, scale, file))
    return loaded
