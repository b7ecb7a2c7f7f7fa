"""Speed for the HunyuanVideo VAE decode: exact copy-based causal padding, optionally compiled GroupNorm.

A steady-state section decode (18 latents at 544x704) took 3.66 s on an H200. Its profile: 1.23 s in GroupNorm's
statistics kernel, which reduces each of the 32 groups in one thread block (32 blocks on a GPU of 132 SMs),
0.64 s in `F.pad(mode="replicate")`'s generic 3-D kernel, 0.82 s in the convolutions.
- Every causal convolution pads with plain slice copies instead (`replicate_pad`). Copies are exact, so the
  pixels stay bit-identical; this applies in every mode. 3.66 s -> 3.22 s.
- In high-VRAM mode the decoder's GroupNorms also run compiled, as `group_norm_scale_shift`: one graph with
  dynamic shapes serves every section length and resolution. The statistics then reduce in parallel, with
  float32 accumulation in another order, so a few pixels move by one uint8 level. 3.22 s -> 2.17 s.
"""

from __future__ import annotations

import functools
import logging
import types

import torch
import torch.nn.functional as F

from .acceleration import compiler_missing

logger = logging.getLogger(__name__)


def replicate_pad(x: torch.Tensor, pad: tuple[int, int, int, int, int, int]) -> torch.Tensor:
    """`F.pad(x, pad, mode="replicate")` for (B, C, T, H, W) `x`, built from slice copies (bit-identical).

    `pad` is (left, right, top, bottom, front, back) as F.pad takes it, last dimension first. Returns
    (B, C, T + front + back, H + top + bottom, W + left + right).
    """
    left, right, top, bottom, front, back = pad
    batch, channels, frames, height, width = x.shape
    out = x.new_empty(batch, channels, frames + front + back, height + top + bottom, width + left + right)
    rows = out[:, :, front:front + frames, top:top + height]
    rows[..., left:left + width] = x
    if left:
        rows[..., :left] = x[..., :1]
    if right:
        rows[..., left + width:] = x[..., -1:]
    frames_view = out[:, :, front:front + frames]  # rows are complete now: replicate them upwards and down
    if top:
        frames_view[:, :, :, :top] = frames_view[:, :, :, top:top + 1]
    if bottom:
        frames_view[:, :, :, top + height:] = frames_view[:, :, :, top + height - 1:top + height]
    if front:  # frames are complete now
        out[:, :, :front] = out[:, :, front:front + 1]
    if back:
        out[:, :, front + frames:] = out[:, :, front + frames - 1:front + frames]
    return out


def _causal_conv_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    """HunyuanVideoCausalConv3d.forward with the replicate padding done by `replicate_pad`."""
    if self.pad_mode != "replicate":
        return self.conv(F.pad(hidden_states, self.time_causal_padding, mode=self.pad_mode))
    return self.conv(replicate_pad(hidden_states, self.time_causal_padding))


def group_norm_scale_shift(x: torch.Tensor, num_groups: int, weight: torch.Tensor, bias: torch.Tensor,
                           eps: float) -> torch.Tensor:
    """`F.group_norm` for (N, C, *) `x`, written as statistics per group then one scale and shift per channel.

    Statistics in float32 over the (N, G, C/G * L) view; then y = x * scale + shift with (N, C, 1) float32 scale
    = gamma * rstd and shift = beta - mean * scale, rounded once to x's dtype. Compiled with N-D tiling, the
    second pass indexes scale and shift by its row, not by a division per element: 0.20 s for one decode's 180
    GroupNorms on an H200, against 0.90 s for compiled `F.group_norm` and 1.34 s eager (probe).
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
    """Install the exact padding on every causal convolution of `vae`; compile the decoder's GroupNorms if asked.

    Idempotent. Returns notes for the log.
    """
    from diffusers.models.autoencoders.autoencoder_kl_hunyuan_video import HunyuanVideoCausalConv3d

    convs = [m for m in vae.modules() if isinstance(m, HunyuanVideoCausalConv3d)]
    for conv in convs:
        conv.forward = types.MethodType(_causal_conv_forward, conv)
    notes = [f"copy-based causal padding on {len(convs)} convolutions"]
    missing = compiler_missing(next(vae.parameters()).device) if compile_norms else None
    if missing is not None:
        notes.append(f"{missing}: GroupNorm stays eager")
    elif compile_norms:
        norms = [m for m in vae.decoder.modules() if isinstance(m, torch.nn.GroupNorm) and m.affine]
        for norm in norms:
            norm.forward = types.MethodType(_compiled_group_norm_forward, norm)
        notes.append(f"{len(norms)} decoder GroupNorms compiled")
    logger.info("VAE acceleration: %s", "; ".join(notes))
    return notes
