"""Ulysses sequence parallelism for the blocks' joint attention: tokens split across ranks, heads inside attention.

Each of N ranks (processes, one GPU each; `parallel.py` starts them) runs the 60 blocks on a contiguous 1/N slice
of the video tokens (history and noisy, in the packed order), and on the whole context (image and text tokens,
replicated: it is small). Everything in a block but attention works token by token, so only attention needs the
other ranks:
- the local video tokens' query, key and value (B, S/N, H, D), RoPE applied with this slice's rows of the tables,
  go through one all-to-all (q, k and v stacked) that turns the token split into a head split: (B, S, H/N, D);
- the context's query, key and value are computed for every token on every rank and sliced to this rank's heads;
- the kernel (FA4, cuDNN, SDPA: whichever the engine chose) attends over [video ; context] for H/N heads;
- a second all-to-all turns the video output back into a token split, and an all-gather gives every rank the
  context output of all heads, so the replicated context stays identical on every rank.

Padding: the video tokens are padded with zero tokens to a multiple of N (their RoPE rows: cos 1, sin 0), and the
pads are dropped after the first all-to-all, so they never act as keys. The heads are padded with zero heads to a
multiple of N (24 heads on 5 GPUs: 5 per rank), dropped after the exchange. The processor learns the real token
count from the RoPE tables, which it receives whole: a tensor's size stays a symbol when the blocks are compiled
with dynamic shapes, where a Python number would be a constant to recompile for.

The exchanges are custom operators, opaque to torch.compile: a compiled block is still one graph.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..models import all_blocks
from ..models.attention import QKV, AttentionKernel, JointAttnProcessor
from .transformer import PackedTransformer

HOST = "127.0.0.1"  # where the processes' store and collectives rendezvous


@torch.library.custom_op("framepack::all_to_all", mutates_args=())
def all_to_all(tensor: torch.Tensor) -> torch.Tensor:
    """Chunk r of `tensor` (N, ...) goes to rank r; returns (N, ...) with chunk r received from rank r."""
    tensor = tensor.contiguous()  # and so is what it is received into: empty_like keeps a view's strides
    received = torch.empty_like(tensor)
    dist.all_to_all_single(received, tensor)
    return received


@all_to_all.register_fake
def _(tensor: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(tensor, memory_format=torch.contiguous_format)


@torch.library.custom_op("framepack::all_gather", mutates_args=())
def all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's `tensor` (...): returns (N, ...), row r from rank r."""
    tensor = tensor.contiguous()
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor)
    return torch.stack(parts)


@all_gather.register_fake
def _(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.new_empty(dist.get_world_size(), *tensor.shape)


def padded_length(tokens: int, world: int) -> int:
    """`tokens` rounded up to a multiple of `world`."""
    return -(-tokens // world) * world


def split_tokens(hidden: torch.Tensor, world: int) -> list[torch.Tensor]:
    """hidden (B, S, D) padded with zero tokens to a multiple of `world` -> `world` slices (B, S_pad/world, D)."""
    padded = F.pad(hidden, (0, 0, 0, padded_length(hidden.shape[1], world) - hidden.shape[1]))
    return list(padded.chunk(world, dim=1))


def local_rotary(
    rotary: tuple[torch.Tensor, torch.Tensor], rank: int, local_tokens: int, world: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's rows of the RoPE tables.

    Args:
        rotary: (cos, sin), each (S, D), for all S video tokens.
        local_tokens: the tokens per rank, s; the tables are padded to world * s rows with cos 1, sin 0 (no rotation).
    Returns:
        (cos, sin), each (s, D): rows rank * s to (rank + 1) * s.
    """
    pad = world * local_tokens - rotary[0].shape[0]
    cos, sin = F.pad(rotary[0], (0, 0, 0, pad), value=1.0), F.pad(rotary[1], (0, 0, 0, pad))
    start = rank * local_tokens
    return cos[start : start + local_tokens], sin[start : start + local_tokens]


def pad_heads(tensor: torch.Tensor, heads: int, dim: int) -> torch.Tensor:
    """`tensor` with zero heads appended along `dim` up to `heads`."""
    missing = heads - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor, tensor.new_zeros(shape)], dim=dim)


class UlyssesAttnProcessor(JointAttnProcessor):
    """`JointAttnProcessor` for a rank holding a slice of the video tokens (B, s, H*D) and the whole context.

    Args:
        kernel: the attention kernel (B, S, H, D), run on this rank's heads.
        rank, world: this process's rank and the number of processes.
    The block passes the RoPE tables of all S video tokens (not only this slice's): S is their first size.
    """

    def __init__(self, kernel: AttentionKernel, rank: int, world: int):
        super().__init__(kernel)
        self.rank, self.world = rank, world

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        if attention_mask is not None or encoder_hidden_states is None or image_rotary_emb is None:
            raise ValueError("UlyssesAttnProcessor needs the context and the RoPE tables, and no attention mask")
        rotary = local_rotary(image_rotary_emb, self.rank, hidden_states.shape[1], self.world)
        video, context = self.project(attn, hidden_states, encoder_hidden_states, rotary)
        return self.project_out(attn, *self.attend_across_ranks(video, context, image_rotary_emb[0].shape[0]))

    def attend_across_ranks(self, video: QKV, context: QKV, video_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention over all ranks' video tokens and the context, for this rank's slice of the video tokens.

        Args:
            video: query, key, value (B, s, H, D) of this rank's video tokens (the last rank's may end in pads).
            context: query, key, value (B, C, H, D) of the whole context.
            video_tokens: S, the real video tokens over all ranks (without pads).
        Returns:
            outputs (B, s, H, D) for this rank's video tokens and (B, C, H, D) for the context.
        """
        world, dtype = self.world, video[0].dtype
        batch, local_tokens, heads, head_dim = video[0].shape
        per_rank = -(-heads // world)
        # (3, B, s, H_pad, D) -> (world, 3, B, s, H/N, D): head group r goes to rank r.
        stacked = pad_heads(torch.stack(video), per_rank * world, dim=3)
        received = all_to_all(stacked.unflatten(3, (world, per_rank)).permute(3, 0, 1, 2, 4, 5))
        # Chunk r holds rank r's tokens: in rank order they are the whole sequence; the pads sit at its end.
        query, key, value = received.permute(1, 2, 0, 3, 4, 5).flatten(2, 3)[:, :, :video_tokens]
        mine = slice(self.rank * per_rank, (self.rank + 1) * per_rank)
        context = [pad_heads(tensor, per_rank * world, dim=2)[:, :, mine] for tensor in context]
        out = self.kernel(*(torch.cat([v, c], dim=1) for v, c in zip((query, key, value), context))).to(dtype)
        video_out, context_out = out[:, :video_tokens], out[:, video_tokens:]

        # Back: (B, S, H/N, D) -> pads again -> (world, B, s, H/N, D), chunk r (rank r's tokens) to rank r.
        video_out = F.pad(video_out, (0, 0, 0, 0, 0, world * local_tokens - video_tokens))
        returned = all_to_all(video_out.unflatten(1, (world, local_tokens)).transpose(0, 1))
        # Chunk r now holds head group r of this rank's tokens.
        video_out = returned.permute(1, 2, 0, 3, 4).flatten(2, 3)[:, :, :heads]
        context_out = all_gather(context_out).permute(1, 2, 0, 3, 4).flatten(2, 3)[:, :, :heads]
        return video_out, context_out


def block_kernel(processor) -> AttentionKernel:
    """The attention kernel an installed block processor runs: ours, or diffusers' backend by name."""
    if isinstance(processor, JointAttnProcessor):
        return processor.kernel
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    backend = getattr(processor, "_attention_backend", None)
    return lambda query, key, value: dispatch_attention_fn(query, key, value, backend=backend)


def install_ulysses(model, rank: int, world: int) -> None:
    """Route every block's attention of `model` through Ulysses, keeping the kernel each block runs now."""
    for block in all_blocks(model):
        block.attn.processor = UlyssesAttnProcessor(block_kernel(block.attn.processor), rank, world)


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def rank_device(device: torch.device, rank: int) -> torch.device:
    """Where rank `rank` runs: cuda:rank, or the CPU."""
    return torch.device("cuda", rank) if device.type == "cuda" else device


def tensor_spec(tensor: torch.Tensor) -> tuple[tuple[int, ...], str]:
    """A tensor's shape and dtype name, for a worker to allocate the tensor it will receive."""
    return tuple(tensor.shape), str(tensor.dtype).removeprefix("torch.")


def empty_from_spec(spec: tuple[tuple[int, ...], str], device: torch.device) -> torch.Tensor:
    shape, dtype = spec
    return torch.empty(shape, dtype=getattr(torch, dtype), device=device)


class SequenceParallelTransformer(PackedTransformer):
    """`PackedTransformer` whose block stack runs on every rank, each on a slice of the video tokens.

    Everything else (embeddings, TeaCache's decision, the output head) runs on rank 0 alone, as on one GPU.
    `group` is rank 0's handle on the workers (`serving.parallel.SequenceParallel`), which sends them the work.
    """

    def __init__(self, model, group, variant: str):
        super().__init__(model)
        self.group, self.variant = group, variant

    def prepare_section(self, section, latent_height: int, latent_width: int):
        prepared = super().prepare_section(section, latent_height, latent_width)
        self.group.set_section(prepared.rotary_emb)
        return prepared

    def block_stack(self, hidden, context, temb, rotary_emb):
        local = self.group.scatter_blocks(self.variant, hidden, context, temb)
        with self.group.collectives():
            local = super().block_stack(local, context, temb, rotary_emb)
        return self.group.gather_tokens(local, hidden.shape[1])
