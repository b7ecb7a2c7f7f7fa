"""Speed for the HunyuanVideo VAE decode: exact copy-based padding and upsampling, optionally compiled GroupNorm.

A section decode's time went mostly to three things (profile in BENCHMARKS.md): GroupNorm's statistics kernel,
which reduces each of the 32 groups in one thread block (32 blocks on a GPU of 132 SMs), `F.pad(mode=
"replicate")`'s generic 3-D kernel, and the convolutions.
- Every causal convolution pads with plain slice copies instead (`replicate_pad`). Copies are exact, so the
  pixels stay bit-identical; this applies in every mode.
- When compiling, the decoder's GroupNorms run compiled, as `group_norm_scale_shift`: one graph with dynamic
  shapes serves every section length and resolution. The statistics then reduce in parallel, with float32
  accumulation in another order, so a few pixels move by one uint8 level.
- Each upsampler writes its nearest-neighbour upsampling straight into its convolution's padded input
  (`upsample_replicate_pad`), one copy instead of interpolation, concatenation and padding; bit-identical, in
  every mode.
"""

from __future__ import annotations

import functools
import logging
import types

import torch
import torch.nn.functional as F

from .compilation import compiler_missing, use_symbolic_sizes

logger = logging.getLogger(__name__)


def replicate_pad(x: torch.Tensor, pad: tuple[int, int, int, int, int, int]) -> torch.Tensor:
    """`F.pad(x, pad, mode="replicate")` for (B, C, T, H, W) `x`, built from slice copies (bit-identical).

    `pad` is (left, right, top, bottom, front, back) as F.pad takes it, last dimension first. Returns
    (B, C, T + front + back, H + top + bottom, W + left + right).
    """
    out, interior = _padded_empty(x, x.shape[2:], pad)
    interior.copy_(x)
    _replicate_edges(out, pad, *x.shape[2:])
    return out


def upsample_replicate_pad(
    x: torch.Tensor, factors: tuple[int, int, int], pad: tuple[int, int, int, int, int, int]
) -> torch.Tensor:
    """The causal upsampler's nearest upsampling, written straight into its convolution's replicate padding.

    (B, C, T, H, W) -> `replicate_pad` of (B, C, 1 + (T - 1) ft, H fh, W fw): the first frame is upsampled in
    space only, the others in time and space, as diffusers' HunyuanVideoUpsampleCausal3D does with
    F.interpolate, torch.cat and F.pad. Every element is a copy, so the result is bit-identical; one pass
    replaces four.
    """
    ft, fh, fw = factors
    batch, channels, frames, height, width = x.shape
    out, interior = _padded_empty(x, (1 + (frames - 1) * ft, height * fh, width * fw), pad)
    first = interior[:, :, :1].unflatten(3, (height, fh)).unflatten(5, (width, fw))
    first.copy_(x[:, :, :1, :, None, :, None].expand(first.shape))
    if frames > 1:
        others = interior[:, :, 1:].unflatten(2, (frames - 1, ft))
        others = others.unflatten(4, (height, fh)).unflatten(6, (width, fw))
        others.copy_(x[:, :, 1:, None, :, None, :, None].expand(others.shape))
    _replicate_edges(out, pad, *interior.shape[2:])
    return out


def _padded_empty(x: torch.Tensor, size: tuple[int, int, int], pad: tuple[int, int, int, int, int, int]):
    """An empty padded (B, C, *size + pad) buffer like `x`, and the view of its interior."""
    left, right, top, bottom, front, back = pad
    frames, height, width = size
    out = x.new_empty(x.shape[0], x.shape[1], frames + front + back, height + top + bottom, width + left + right)
    return out, out[:, :, front : front + frames, top : top + height, left : left + width]


def _replicate_edges(
    out: torch.Tensor, pad: tuple[int, int, int, int, int, int], frames: int, height: int, width: int
) -> None:
    """Fill the padding of `out` from its written interior: columns, then rows, then frames."""
    left, right, top, bottom, front, back = pad
    rows = out[:, :, front : front + frames, top : top + height]
    if left:
        rows[..., :left] = rows[..., left : left + 1]
    if right:
        rows[..., left + width :] = rows[..., left + width - 1 : left + width]
    frames_view = out[:, :, front : front + frames]  # rows are complete now: replicate them upwards and down
    if top:
        frames_view[:, :, :, :top] = frames_view[:, :, :, top : top + 1]
    if bottom:
        frames_view[:, :, :, top + height :] = frames_view[:, :, :, top + height - 1 : top + height]
    if front:  # frames are complete now
        out[:, :, :front] = out[:, :, front : front + 1]
    if back:
        out[:, :, front + frames :] = out[:, :, front + frames - 1 : front + frames]


def _causal_conv_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    """HunyuanVideoCausalConv3d.forward with the replicate padding done by `replicate_pad`."""
    if self.pad_mode != "replicate":
        return self.conv(F.pad(hidden_states, self.time_causal_padding, mode=self.pad_mode))
    return self.conv(replicate_pad(hidden_states, self.time_causal_padding))


def _upsample_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    """HunyuanVideoUpsampleCausal3D.forward as one `upsample_replicate_pad` and its convolution."""
    factors = tuple(int(f) for f in self.upsample_factor)
    return self.conv.conv(upsample_replicate_pad(hidden_states, factors, self.conv.time_causal_padding))


def group_norm_scale_shift(
    x: torch.Tensor, num_groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> torch.Tensor:
    """`F.group_norm` for (N, C, *) `x`, written as statistics per group then one scale and shift per channel.

    Statistics in float32 over the (N, G, C/G * L) view; then y = x * scale + shift with (N, C, 1) float32 scale
    = gamma * rstd and shift = beta - mean * scale, rounded once to x's dtype. Compiled with N-D tiling, the
    second pass indexes scale and shift by its row, not by a division per element, which made it several times
    faster than compiled `F.group_norm` (BENCHMARKS.md).
    """
    batch, channels = x.shape[0], x.shape[1]
    var, mean = torch.var_mean(x.reshape(batch, num_groups, -1).float(), dim=-1, correction=0, keepdim=True)
    per_group = channels // num_groups
    scale = torch.rsqrt(var + eps).repeat_interleave(per_group, dim=1) * weight.float().view(1, channels, 1)
    shift = bias.float().view(1, channels, 1) - mean.repeat_interleave(per_group, dim=1) * scale
    return (x.reshape(batch, channels, -1).float() * scale + shift).to(x.dtype).view(x.shape)


@functools.cache
def _compiled_group_norm():
    # Dynamic shapes: one graph for every channel count, section length and resolution.
    return torch.compile(group_norm_scale_shift, dynamic=True, options={"triton.prefer_nd_tiling": True})


def _compiled_group_norm_forward(self, x: torch.Tensor) -> torch.Tensor:
    return _compiled_group_norm()(x, self.num_groups, self.weight, self.bias, self.eps)


def accelerate_vae(vae: torch.nn.Module, compile_norms: bool = False) -> list[str]:
    """Install the exact padding on every causal convolution of `vae` and the exact one-pass upsampling on its
    upsamplers; compile the decoder's GroupNorms if asked.

    Idempotent. Returns notes for the log.
    """
    from diffusers.models.autoencoders.autoencoder_kl_hunyuan_video import (
        HunyuanVideoCausalConv3d,
        HunyuanVideoUpsampleCausal3D,
    )

    convs = [m for m in vae.modules() if isinstance(m, HunyuanVideoCausalConv3d)]
    for conv in convs:
        conv.forward = types.MethodType(_causal_conv_forward, conv)
    upsamplers = [
        m
        for m in vae.modules()
        if isinstance(m, HunyuanVideoUpsampleCausal3D)
        and m.conv.pad_mode == "replicate"
        and all(float(f).is_integer() for f in m.upsample_factor)
    ]
    for upsampler in upsamplers:
        upsampler.forward = types.MethodType(_upsample_forward, upsampler)
    notes = [
        f"copy-based causal padding on {len(convs)} convolutions",
        f"one-pass upsampling and padding on {len(upsamplers)} upsamplers",
    ]
    missing = compiler_missing(next(vae.parameters()).device) if compile_norms else None
    if missing is not None:
        notes.append(f"{missing}: GroupNorm stays eager")
    elif compile_norms:
        use_symbolic_sizes()
        norms = [m for m in vae.decoder.modules() if isinstance(m, torch.nn.GroupNorm) and m.affine]
        for norm in norms:
            norm.forward = types.MethodType(_compiled_group_norm_forward, norm)
        notes.append(f"{len(norms)} decoder GroupNorms compiled")
    logger.info("VAE acceleration: %s", "; ".join(notes))
    return notes
