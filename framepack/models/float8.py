"""Optional FP8 mode: the token-wise Linear layers of the 60 transformer blocks run as float8 matrix products.

Each weight is stored once as float8_e4m3fn with one float32 scale per output row; each activation row (token)
is scaled to e4m3's range at run time. `torch._scaled_mm` multiplies the two with row-wise scales and adds the
bf16 bias, accumulating in float32:

    y[m, n] = sx[m] * sw[n] * sum_k q(x[m, k] / sx[m]) * q(w[n, k] / sw[n]) + b[n],
    sx[m] = max_k |x[m, k]| / 448,  sw[n] = max_k |w[n, k]| / 448.

On Hopper that runs the projections and MLPs, about half of a forward's FLOPs, on FP8 tensor cores at up to
twice the bf16 rate, and halves the transformer's weight memory. The output moves by e4m3's 3-bit mantissa
(a few percent relative), well beyond bf16 noise, so it is opt-in. AdaLN modulation layers (one token per
call) and everything outside the blocks stay in their original dtype.
"""

from __future__ import annotations

import torch

from .loading import all_blocks

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
_MIN_SCALE = 1e-12


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) float -> (M, K) float8_e4m3fn and (M, 1) float32 scales with x ~= q * scale row by row."""
    scale = (x.abs().amax(dim=1, keepdim=True).float() / FP8_MAX).clamp(min=_MIN_SCALE)
    quantized = (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return quantized, scale


class Float8Linear(torch.nn.Module):
    """Drop-in for an `nn.Linear` over (..., in_features) inputs; output in the original weight's dtype.

    weight (out, in) float8_e4m3fn, weight_scale (1, out) float32, bias (out,) in the compute dtype or None.
    """

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.compute_dtype = linear.weight.dtype
        weight, scale = quantize_rows(linear.weight.detach())
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale", scale.t().contiguous())
        bias = linear.bias.detach() if linear.bias is not None else None
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        quantized, scale = quantize_rows(rows)
        # The weight's transpose is column-major, the layout _scaled_mm needs for its second operand.
        out = torch._scaled_mm(
            quantized,
            self.weight.t(),
            scale_a=scale,
            scale_b=self.weight_scale,
            bias=self.bias,
            out_dtype=self.compute_dtype,
        )
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8=e4m3 row-wise"


def _token_linears(block: torch.nn.Module) -> list[tuple[torch.nn.Module, str, torch.nn.Linear]]:
    """(parent, attribute, linear) for every Linear of `block` that runs on tokens (not the AdaLN layers)."""
    found = []
    for path, parent in block.named_modules():
        if path.split(".")[-1].startswith("norm"):
            continue
        for name, child in parent.named_children():
            if isinstance(child, torch.nn.Linear):
                found.append((parent, name, child))
    return found


@torch.no_grad()
def quantize_transformer_blocks(model: torch.nn.Module, via: torch.device | None = None) -> int:
    """Replace the token-wise Linears of every block of `model` in place; returns how many were replaced.

    Works block by block, so only one block's layers exist in both precisions at a time. `via`: quantise each
    block on this device and move it back where it was (host weights quantised on the GPU, in seconds).
    """
    replaced = 0
    for block in all_blocks(model):
        home = next(block.parameters()).device
        if via is not None:
            block.to(via)
        for parent, name, linear in _token_linears(block):
            setattr(parent, name, Float8Linear(linear))
            replaced += 1
        if via is not None:
            block.to(home)
    return replaced


def float8_layer_count(model: torch.nn.Module) -> int:
    """How many of `model`'s block layers run in FP8."""
    return sum(isinstance(module, Float8Linear) for block in all_blocks(model) for module in block.modules())


def float8_unsupported_reason(device: torch.device) -> str | None:
    """Why FP8 matrix products cannot run on `device`, or None when they can (CUDA compute capability >= 8.9)."""
    if device.type != "cuda":
        return f"FP8 mode needs an NVIDIA GPU with FP8 tensor cores; running on {device.type}"
    capability = torch.cuda.get_device_capability(device)
    if capability < (8, 9):
        return f"FP8 mode needs compute capability 8.9 or newer (Ada, Hopper); this GPU has {capability}"
    return None
