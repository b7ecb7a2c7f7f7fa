"""The packed transformer's forward pass in stages, built from diffusers' own submodules.

`HunyuanVideoFramepackTransformer3DModel.forward` recomputes everything on every call. Within a section the
history tokens (clean latents through `clean_x_embedder`), the RoPE tables and the image projection do not
change, so `prepare_section` computes them once; `velocity` then runs only what depends on the step, and lets a
step cache (TeaCache, MagCache) replace the block stack. In float32 the result is bit-identical to the stock
forward (tested).

Shapes (B = batch, D = model width, T/H/W = latent frames/height/width of the noisy window):
noisy latents (B, 16, T, H, W) -> N_noisy = T * H/2 * W/2 tokens; history tokens (B, N_hist, D) packed as
[4x ; 2x ; 1x]; context = [image tokens (B, N_img, D) ; valid text tokens]; output velocity (B, 16, T, H, W).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from ..core.step_cache import StepCache
from ..models import all_blocks
from .streaming import BlockStreamer

_RESIDENT = nullcontext()  # reusable: entering it does nothing


@dataclass
class SectionInputs:
    """Per-section inputs. Index tensors are 1-D int64 RoPE time positions; latents are float32 history.

    clean_latents (B, 16, 2, H, W); clean_latents_2x (B, 16, 2, H, W); clean_latents_4x (B, 16, 16, H, W);
    image_embeds (B, N_img, D_siglip).
    """

    latent_indices: torch.Tensor
    clean_latents: torch.Tensor
    clean_latent_indices: torch.Tensor
    clean_latents_2x: torch.Tensor
    clean_latent_2x_indices: torch.Tensor
    clean_latents_4x: torch.Tensor
    clean_latent_4x_indices: torch.Tensor
    image_embeds: torch.Tensor


@dataclass
class TextInputs:
    """One CFG branch's text conditioning: embeds (B, 512, D_llama), mask (B, 512) bool, pooled (B, D_clip).

    `valid_tokens` is counted once here, so the step loop never waits on the GPU for it.
    """

    embeds: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor
    valid_tokens: int = -1

    def __post_init__(self):
        if self.valid_tokens < 0:
            self.valid_tokens = int(self.mask.sum())


@dataclass
class PreparedSection:
    """Section constants: history tokens (B, N_hist, D), RoPE (cos, sin) over all video tokens, image tokens."""

    history_tokens: torch.Tensor
    rotary_emb: tuple[torch.Tensor, torch.Tensor]
    image_tokens: torch.Tensor
    latent_height: int
    latent_width: int


class TransformerRunner(Protocol):
    """What the section loop needs of a transformer: `PackedTransformer`, or the benchmark's stock forward.

    Built as `runner(model, device, streamer)` for each generation.
    """

    device: torch.device
    dtype: torch.dtype

    def on_device(self) -> AbstractContextManager: ...

    def prepare_section(self, section: SectionInputs, latent_height: int, latent_width: int): ...

    def velocity(self, latents, timestep, guidance, text: TextInputs, section, step_cache=None) -> torch.Tensor: ...


class PackedTransformer:
    """Runs a diffusers `HunyuanVideoFramepackTransformer3DModel` section by section (batch 1 per branch).

    Args:
        model: the packed transformer.
        device: where the computation runs (default: where the weights are).
        streamer: in low-VRAM mode, the `streaming.BlockStreamer` installed on `model`; the weights then sit on
            the host and are on the device only inside `on_device()`, one block at a time for the blocks.
    """

    def __init__(self, model, device: torch.device | None = None, streamer: BlockStreamer | None = None):
        self.model = model
        self.device = device if device is not None else model.x_embedder.proj.weight.device
        self.streamer = streamer
        # Per block and step: resident weights get one shared no-op context, not a new one each call.
        self._block_weights = self.streamer.weights_of if self.streamer is not None else lambda _index: _RESIDENT
        self.blocks = all_blocks(model)
        # The reference runs the output head in float32 ("high quality fp32 output"); a float32 copy of this
        # small layer (D x 64) on the compute device also works when the weights stream from the host.
        self.head = (
            model.proj_out.weight.detach().float().to(self.device),
            model.proj_out.bias.detach().float().to(self.device),
        )

    @property
    def dtype(self) -> torch.dtype:
        return self.model.x_embedder.proj.weight.dtype

    def on_device(self):
        """Context in which the weights are usable on the device (a no-op unless they stream)."""
        return self.streamer.on_device() if self.streamer is not None else nullcontext()

    @torch.no_grad()
    def prepare_section(self, section: SectionInputs, latent_height: int, latent_width: int) -> PreparedSection:
        """Embed the history latents, build the RoPE tables and project the image features once."""
        model, device, dtype = self.model, self.device, self.dtype
        rope = model.rope
        noisy_rope = rope(frame_indices=section.latent_indices, height=latent_height, width=latent_width, device=device)
        clean, clean_2x, clean_4x = model.clean_x_embedder(
            section.clean_latents.to(device=device, dtype=dtype),
            section.clean_latents_2x.to(device=device, dtype=dtype),
            section.clean_latents_4x.to(device=device, dtype=dtype),
        )
        clean_rope, rope_2x, rope_4x = (
            rope(frame_indices=indices, height=latent_height, width=latent_width, device=device)
            for indices in (
                section.clean_latent_indices,
                section.clean_latent_2x_indices,
                section.clean_latent_4x_indices,
            )
        )
        # Packing with an empty noisy group gives the history tokens alone, in the model's own order.
        empty = clean.new_zeros(clean.shape[0], 0, clean.shape[2])
        history_tokens, rotary_emb = model._pack_history_states(
            empty,
            clean,
            clean_2x,
            clean_4x,
            noisy_rope,
            clean_rope,
            rope_2x,
            rope_4x,
            latent_height // model.config.patch_size,
            latent_width // model.config.patch_size,
        )
        image_tokens = model.image_projection(section.image_embeds.to(device=device, dtype=dtype))
        return PreparedSection(history_tokens, rotary_emb, image_tokens, latent_height, latent_width)

    @torch.no_grad()
    def velocity(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        guidance: torch.Tensor,
        text: TextInputs,
        section: PreparedSection,
        step_cache: StepCache | None = None,
    ) -> torch.Tensor:
        """Flow velocity (B, 16, T, H, W) in float32 for noisy latents (compute dtype) at `timestep` (B,).

        With a `step_cache` that decides to skip, the block stack does not run (nor stream its weights): the last
        computed residual is added to this step's input tokens instead.
        """
        model = self.model
        batch, _, frames, height, width = latents.shape
        patch, patch_t = model.config.patch_size, model.config.patch_size_t
        noisy_tokens = (frames // patch_t) * (height // patch) * (width // patch)

        hidden = torch.cat([section.history_tokens, model.x_embedder(latents)], dim=1)
        temb, _ = model.time_text_embed(timestep, text.pooled, guidance)
        context = model.context_embedder(text.embeds, timestep, text.mask)
        # Text padding sits at the tail, so with batch 1 cropping it is exact and needs no attention mask.
        context = torch.cat([section.image_tokens, context], dim=1)[
            :, : section.image_tokens.shape[1] + text.valid_tokens
        ]

        if step_cache is None:
            hidden = self._run_blocks(hidden, context, temb, section, None)
        else:
            modulated = None
            if step_cache.reads_modulated_input:
                with self._block_weights(0):
                    modulated = model.transformer_blocks[0].norm1(hidden, emb=temb)[0]
            if step_cache.should_compute(modulated):
                hidden = self._run_blocks(hidden, context, temb, section, step_cache)
            else:
                hidden = hidden + step_cache.previous_residual

        hidden = model.norm_out(hidden[:, -noisy_tokens:], temb)
        hidden = F.linear(hidden.float(), *self.head)
        hidden = hidden.reshape(batch, frames // patch_t, height // patch, width // patch, -1, patch_t, patch, patch)
        hidden = hidden.permute(0, 4, 1, 5, 2, 6, 3, 7)
        return hidden.flatten(6, 7).flatten(4, 5).flatten(2, 3)

    def _run_blocks(self, hidden, context, temb, section, step_cache):
        original = hidden
        hidden = self.block_stack(hidden, context, temb, section.rotary_emb)
        if step_cache is not None:
            step_cache.previous_residual = hidden - original
        return hidden

    def block_stack(
        self,
        hidden: torch.Tensor,
        context: torch.Tensor,
        temb: torch.Tensor,
        rotary_emb: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """The 60 blocks: video tokens (B, S, D) out for video tokens (B, S, D), context (B, C, D), temb (B, D)
        and RoPE (cos, sin) (S, head_dim) each. Sequence parallelism (`parallel.py`) splits the tokens around it."""
        for index, block in enumerate(self.blocks):
            with self._block_weights(index):
                hidden, context = block(hidden, context, temb, None, rotary_emb)
        return hidden
