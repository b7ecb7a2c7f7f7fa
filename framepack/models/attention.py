"""The transformer blocks' joint attention with a pluggable kernel, and FlashAttention 4 as that kernel.

FlashAttention 4 (PyPI `flash-attn-4`, kernels written in NVIDIA's CuTe DSL and compiled just in time) is the
fastest kernel we measured for the forward's attention shape, ahead of SDPA's cuDNN and flash backends, and as
exact as they are (BENCHMARKS.md, "Measurements behind the design").

diffusers chooses a block's attention kernel by backend name, and it has no name for a locally installed FA4
(only a Hub download). So the blocks get `JointAttnProcessor`: the same steps as diffusers'
`HunyuanVideoAttnProcessor2_0`, which are projections, QK norms, RoPE on the video tokens and the split of the
output, but it calls a (B, S, H, D) attention kernel that it is given. FA4 sits behind `torch.library.custom_op`,
so a compiled block sees it as one opaque call.

SageAttention (PyPI `sageattention`; 1.0.6, Triton kernels with INT8 Q and K) is the second kernel behind the same
processor, for GPUs that FA4 does not run on (Ampere, Ada). It is only used when asked for: on Hopper it was
slower than cuDNN at this shape and less exact (BENCHMARKS.md).

PyTorch also has its own FA4 switch, `torch.nn.attention.activate_flash_attention_impl("FA4")`. It is not used
here for two reasons. It replaces SDPA's flash kernel in the whole process, the image and text encoders
included. And in torch 2.11 it expects `_flash_attn_fwd` to return two values, while flash-attn-4 4.0.0b36
returns five.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers.models.embeddings import apply_rotary_emb

# A kernel: query, key, value (B, S, H, D) -> output (B, S, H, D).
AttentionKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# query, key, value (B, S, H, D)
QKV = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@torch.library.custom_op("framepack::flash_attention4", mutates_args=())
def flash_attention4(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """FlashAttention 4 forward, with no mask and a scale of 1/sqrt(D).

    query, key, value (B, S, H, D) in bf16 or fp16, on a Hopper or Blackwell GPU. Returns a contiguous
    (B, S, H, D) tensor.
    """
    from flash_attn.cute import flash_attn_func

    out = flash_attn_func(query.contiguous(), key.contiguous(), value.contiguous())
    return out[0] if isinstance(out, tuple) else out


@flash_attention4.register_fake
def _(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return query.new_empty(*query.shape[:-1], value.shape[-1])


def flash_attention4_unavailable(device: torch.device) -> str | None:
    """Why FA4 cannot run on `device`, or None if it can."""
    if device.type != "cuda":
        return "FlashAttention 4 needs a CUDA GPU"
    major, _ = torch.cuda.get_device_capability(device)
    if major not in (9, 10):
        return f"FlashAttention 4 needs compute capability 9.x or 10.x, not {major}.x"
    try:
        import flash_attn.cute  # noqa: F401  (imports the CuTe DSL compiler: takes seconds)
    except ImportError as error:
        return f"flash-attn-4 is not installed ({error})"
    # Broad on purpose: a broken optional kernel must not fail the prediction.
    except Exception as error:  # noqa: BLE001
        return f"flash-attn-4 does not load ({type(error).__name__}: {str(error).splitlines()[0]})"
    return None


@torch.library.custom_op("framepack::sage_attention", mutates_args=())
def sage_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """SageAttention forward, with no mask and a scale of 1/sqrt(D): query, key, value (B, S, H, D) on CUDA."""
    from sageattention import sageattn

    return sageattn(query.contiguous(), key.contiguous(), value.contiguous(), tensor_layout="NHD").contiguous()


@sage_attention.register_fake
def _(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return query.new_empty(*query.shape[:-1], value.shape[-1])


def sage_attention_unavailable(device: torch.device) -> str | None:
    """Why SageAttention cannot run on `device`, or None if it can."""
    if device.type != "cuda":
        return "SageAttention needs a CUDA GPU"
    try:
        import sageattention  # noqa: F401
    except ImportError as error:
        return f"sageattention is not installed ({error})"
    # Broad on purpose: a broken optional kernel must not fail the prediction.
    except Exception as error:  # noqa: BLE001
        return f"sageattention does not load ({type(error).__name__}: {str(error).splitlines()[0]})"
    return None


class JointAttnProcessor:
    """HunyuanVideo's block attention (dual- and single-stream) with a given (B, S, H, D) kernel.

    It takes the same steps as diffusers' `HunyuanVideoAttnProcessor2_0`, with no attention mask. The staged
    forward crops the text padding, so it never needs one.
    - Dual-stream blocks (`attn.add_q_proj` set) project the video tokens and the context separately and
      concatenate them as [video ; context].
    - Single-stream blocks get both as one sequence.
    RoPE covers the video tokens only. Returns (video tokens, context tokens), the context None when none is given.
    The steps are methods (`project`, `attend`, `project_out`) so that sequence parallelism
    (`sequence_parallel.py`) can exchange tokens around the kernel and reuse the rest.
    """

    def __init__(self, kernel: AttentionKernel):
        self.kernel = kernel

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        if attention_mask is not None:
            raise ValueError("JointAttnProcessor takes no attention mask: crop the text padding instead")
        video, context = self.project(attn, hidden_states, encoder_hidden_states, image_rotary_emb)
        return self.project_out(attn, *self.attend(video, context))

    def project(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[QKV, QKV | None]:
        """Query, key and value (B, S, H, D) of the video tokens (QK-normed, RoPE applied) and of the context.

        Args:
            hidden_states: video tokens (B, S, H*D).
            encoder_hidden_states: context tokens (B, C, H*D), or None.
            image_rotary_emb: RoPE (cos, sin), each (S, D), for the video tokens.
        """
        single_stream = attn.add_q_proj is None
        video_tokens = hidden_states.shape[1]
        if single_stream and encoder_hidden_states is not None:
            hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)

        def heads(tensor: torch.Tensor) -> torch.Tensor:  # (B, S, H*D) -> (B, S, H, D)
            return tensor.unflatten(2, (attn.heads, -1))

        def project(tokens, to_q, to_k, to_v, norm_q, norm_k):  # -> query, key, value (B, S, H, D), QK-normed
            query, key, value = heads(to_q(tokens)), heads(to_k(tokens)), heads(to_v(tokens))
            return (query if norm_q is None else norm_q(query)), (key if norm_k is None else norm_k(key)), value

        query, key, value = project(hidden_states, attn.to_q, attn.to_k, attn.to_v, attn.norm_q, attn.norm_k)
        context = None
        if encoder_hidden_states is not None:
            if single_stream:  # one projection of [video ; context], split again
                context = tuple(tensor[:, video_tokens:] for tensor in (query, key, value))
                query, key, value = (tensor[:, :video_tokens] for tensor in (query, key, value))
            else:
                context = project(
                    encoder_hidden_states,
                    attn.add_q_proj,
                    attn.add_k_proj,
                    attn.add_v_proj,
                    attn.norm_added_q,
                    attn.norm_added_k,
                )
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        return (query, key, value), context

    def attend(self, video: QKV, context: QKV | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The kernel over [video ; context]: outputs (B, S, H, D) for the video and (B, C, H, D) for the context,
        in the query's dtype."""
        if context is None:
            return self.kernel(*video).to(video[0].dtype), None
        out = self.kernel(*(torch.cat([v, c], dim=1) for v, c in zip(video, context))).to(video[0].dtype)
        video_tokens = video[0].shape[1]
        return out[:, :video_tokens], out[:, video_tokens:]

    def project_out(self, attn, video: torch.Tensor, context: torch.Tensor | None):
        """The output projections of the attention outputs (B, S, H, D) and (B, C, H, D) (or None)."""
        hidden_states = video.flatten(2, 3)
        if getattr(attn, "to_out", None) is not None:
            hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if context is None:
            return hidden_states, None
        encoder_hidden_states = context.flatten(2, 3)
        if getattr(attn, "to_add_out", None) is not None:
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        return hidden_states, encoder_hidden_states
