"""Speed: the attention kernel of the 60 joint-attention blocks, FP8 layers, and compiled blocks.

Half of a forward's FLOPs are attention over about 18k tokens. Kernels are tried fastest first, and one is kept
only if it runs and agrees with the math reference on a probe: FlashAttention 4 (`attention.py`), then SDPA's
cuDNN backend, then its flash backend (their measured order is in BENCHMARKS.md). SageAttention 1.0.6, the
version on PyPI, was slower than cuDNN on this shape and less exact, so it is never chosen automatically; it runs
when asked for (`FRAMEPACK_ATTENTION=sage`), for GPUs FA4 does not support. A kernel asked for that fails its
probe falls back to the automatic choice, with the reason logged. The token refiner keeps the default backend:
it needs a boolean mask.
Optionally the blocks' Linear layers run in FP8 (`float8.py`) before compiling (`compilation.py`). Everything
falls back to eager PyTorch (and bf16) when a backend, the compiler or FP8 support is missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0

from ..config import EngineConfig
from ..models import FramePackModels, all_blocks
from ..models.attention import (
    JointAttnProcessor,
    flash_attention4,
    flash_attention4_unavailable,
    sage_attention,
    sage_attention_unavailable,
)
from ..models.float8 import Float8Linear, float8_layer_count, float8_unsupported_reason, quantize_transformer_blocks
from .compilation import CompileRecord, capture_problem, compile_blocks, compile_decision, compiler_missing

if TYPE_CHECKING:
    from .placement import Placement

FLASH_ATTENTION_4 = "flash_attention_4"
SAGE_ATTENTION = "sage"
# The automatic choice, best first for Hopper: our FA4 processor, then diffusers' attention-dispatch names.
ATTENTION_PREFERENCE = (FLASH_ATTENTION_4, "_native_cudnn", "_native_flash", "native")
# Kernels behind our own processor (the rest are diffusers' backends).
_OWN_KERNELS = {
    FLASH_ATTENTION_4: (flash_attention4, flash_attention4_unavailable),
    SAGE_ATTENTION: (sage_attention, sage_attention_unavailable),
}
_SDPA_BACKENDS = {
    "_native_cudnn": "CUDNN_ATTENTION",
    "_native_flash": "FLASH_ATTENTION",
}


@dataclass
class Acceleration:
    """What `accelerate` applied, for logs and benchmark reports."""

    attention: str = "native"
    compiled: bool = False
    float8_layers: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One log line: 'attention X, compiled Y, FP8 layers N' and the notes (skipped kernels, fallbacks)."""
        line = f"attention {self.attention}, compiled {self.compiled}, FP8 layers {self.float8_layers}"
        return "; ".join([line, *self.notes])


def attention_unavailable(name: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why attention kernel `name` cannot serve the blocks on `device`, or None.

    Runs a small attention through it and compares it with the math backend in float32.
    """
    if name == "native":
        return None
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = (torch.randn(1, 24, 256, 128, device=device, dtype=dtype) for _ in range(3))
    try:
        if name in _OWN_KERNELS:
            kernel, unavailable = _OWN_KERNELS[name]
            reason = unavailable(device)
            if reason is not None:
                return reason
            out = kernel(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
        else:
            with sdpa_kernel(getattr(SDPBackend, _SDPA_BACKENDS[name])):
                out = F.scaled_dot_product_attention(q, k, v)
        with sdpa_kernel(SDPBackend.MATH):
            ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    # Broad on purpose: FA4's just-in-time compiler raises its own error types.
    except Exception as error:  # noqa: BLE001
        return f"{type(error).__name__}: {str(error).splitlines()[0]}"
    error = float((out.float() - ref).norm() / ref.norm())
    return None if error < 2e-2 else f"relative L2 {error:.2e} from the math backend on a probe"


def block_attention_modules(model) -> list[torch.nn.Module]:
    return [block.attn for block in all_blocks(model)]


def set_block_attention(model, name: str | None) -> None:
    """Route the joint-attention blocks through FA4 or SageAttention, or diffusers' dispatcher backend `name`.

    None restores diffusers' processor with its default backend.
    """
    for attention in block_attention_modules(model):
        if name in _OWN_KERNELS:
            attention.processor = JointAttnProcessor(_OWN_KERNELS[name][0])
        else:
            attention.processor = HunyuanVideoAttnProcessor2_0()
            attention.processor._attention_backend = name


def float8_problem(device: torch.device, dtype: torch.dtype) -> str | None:
    """None if an FP8 layer runs on `device` and agrees with bf16 on a probe, else the reason it does not."""
    reason = float8_unsupported_reason(device)
    if reason is not None:
        return reason
    linear = torch.nn.Linear(256, 128, device=device, dtype=dtype)
    x = torch.randn(37, 256, device=device, dtype=dtype)  # an odd token count, as in real sections
    try:
        out = Float8Linear(linear)(x)
    except (RuntimeError, TypeError) as error:
        return f"FP8 matrix product unavailable: {str(error).splitlines()[0]}"
    ref = linear(x)
    error = float((out.float() - ref.float()).norm() / ref.float().norm())
    return None if error < 0.1 else f"FP8 probe disagrees with {dtype} (relative L2 {error:.3f})"


def accelerate(
    model,
    device: torch.device,
    attention: str = "auto",
    compile_blocks_with: CompileRecord | None = None,
    float8: bool = False,
) -> Acceleration:
    """Pick the fastest working attention backend (on CUDA), optionally switch the blocks to FP8, compile them.

    `compile_blocks_with`: the backend to compile the blocks through (shared by all models of a service, so
    the variants share their graphs); None keeps them eager. Off CUDA the attention stays the default and FP8
    is refused; compiling works on the CPU too.
    """
    result = Acceleration()
    if device.type == "cuda":
        _choose_attention(model, device, attention, result)
    else:
        note = "not on CUDA: default attention" + (f" ({attention} needs a CUDA GPU)" if attention != "auto" else "")
        result.notes.append(note + ("; FP8 mode needs a CUDA GPU" if float8 else ""))
    if float8 and device.type == "cuda":
        dtype = model.x_embedder.proj.weight.dtype
        reason = float8_problem(device, dtype)
        if reason is None:
            quantize_transformer_blocks(model)  # none left to replace where placement quantised them for streaming
            result.float8_layers = float8_layer_count(model)
        else:
            result.notes.append(f"{reason}; staying in {dtype}")
    if compile_blocks_with is not None:
        problem = compiler_missing(device) or capture_problem(model, device)
        if problem is None:
            compile_blocks(model, compile_blocks_with)
            result.compiled = True
        else:
            result.notes.append(f"blocks not compiled: {problem}; running eager")
    return result


def _choose_attention(model, device: torch.device, attention: str, result: Acceleration) -> None:
    """`attention` if it passes its probe, else the first of the preference that does; installed in the blocks."""
    dtype = model.x_embedder.proj.weight.dtype
    candidates = ATTENTION_PREFERENCE if attention == "auto" else dict.fromkeys((attention, *ATTENTION_PREFERENCE))
    for name in candidates:
        reason = attention_unavailable(name, device, dtype)
        if reason is None:
            result.attention = name
            break
        result.notes.append(f"attention {name} skipped: {reason}")
    set_block_attention(model, result.attention)


def accelerate_models(models: FramePackModels, placement: Placement, config: EngineConfig) -> None:
    """The configured attention for every transformer (by default the fastest); compiled blocks and VAE norms and
    FP8 layers where `config` asks for them and they apply.

    What was applied to each variant goes to `placement.accelerations` (an `Acceleration` per variant name).
    Compilation follows `compilation.compile_decision` (by default: resident weights on a GPU); the variants share
    one `CompileRecord`, `placement.compile_record`, for the per-prediction log.

    In low-VRAM mode the streamed blocks compile too, and FP8 layers were put in at placement.
    The VAE gets its exact padding everywhere and compiled GroupNorms when compiling (`vae_acceleration.py`).
    """
    from .vae_acceleration import accelerate_vae

    compiling, reason = compile_decision(config.compile, placement.plan.mode)
    accelerate_vae(models.vae, compile_norms=compiling)
    placement.compile_record = CompileRecord() if compiling else None
    placement.accelerations = {
        variant: accelerate(
            model,
            models.device,
            attention=config.attention,
            compile_blocks_with=placement.compile_record,
            float8=config.fp8,
        )
        for variant, model in models.transformers.items()
    }
    if not compiling:
        for acceleration in placement.accelerations.values():
            acceleration.notes.append(reason)
