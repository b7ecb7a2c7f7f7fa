"""The reference's transformer path and random inputs for one section, shared by the benchmarks and the tests.

`StockTransformer` calls diffusers' whole forward at every step with nothing cached per section, as the
reference does; our `PackedTransformer` must give the same velocity (bit for bit in float32 on the CPU).
"""

from __future__ import annotations

import contextlib

import torch

from framepack.core import planner
from framepack.runtime.transformer import SectionInputs, TextInputs


class StockTransformer:
    """The reference's per-call path, behind the section loop's `TransformerRunner` interface."""

    def __init__(self, model, device: torch.device | None = None, streamer=None):
        if streamer is not None:
            raise ValueError("the stock forward runs resident weights only")
        self.model = model
        self.device = device or model.x_embedder.proj.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.x_embedder.proj.weight.dtype

    def on_device(self):
        return contextlib.nullcontext()

    def prepare_section(self, section: SectionInputs, latent_height: int, latent_width: int) -> SectionInputs:
        return section

    @torch.no_grad()
    def velocity(self, latents, timestep, guidance, text: TextInputs, section: SectionInputs, step_cache=None):
        """The model's output (B, 16, T, h, w) as float32, like `PackedTransformer.velocity`."""
        if step_cache is not None:
            raise ValueError("the stock forward has no step cache; use the eager staged path for that comparison")
        to = lambda t: t.to(device=self.device, dtype=self.dtype)  # noqa: E731
        dev = lambda t: t.to(self.device)  # noqa: E731
        return self.model(
            hidden_states=latents,
            timestep=timestep,
            encoder_hidden_states=text.embeds,
            encoder_attention_mask=text.mask,
            pooled_projections=text.pooled,
            image_embeds=to(section.image_embeds),
            indices_latents=dev(section.latent_indices),
            guidance=guidance,
            latents_clean=to(section.clean_latents),
            indices_latents_clean=dev(section.clean_latent_indices),
            latents_history_2x=to(section.clean_latents_2x),
            indices_latents_history_2x=dev(section.clean_latent_2x_indices),
            latents_history_4x=to(section.clean_latents_4x),
            indices_latents_history_4x=dev(section.clean_latent_4x_indices),
            return_dict=False,
        )[0].float()


def random_section(
    model,
    generator: torch.Generator,
    *,
    window: int,
    latent_height: int,
    latent_width: int,
    text_tokens: int,
    image_tokens: int,
    total_sections: int,
    dtype: torch.dtype = torch.float32,
) -> tuple[SectionInputs, TextInputs, torch.Tensor]:
    """Random inputs of the original variant's first section, on the generator's device.

    Returns the section (history latents (1, 16, 2 | 2 | 16, h, w) float32, image embeddings
    (1, image_tokens, D_image)), the text (embeddings (1, 512, D_text) zero past `text_tokens`, its mask, pooled
    (1, D_pooled)) and the noisy latents (1, 16, window, h, w). Values are drawn in float32 and then cast to
    `dtype`, so a float32 draw is the same on every run.
    """
    device = generator.device
    section = planner.inverted_sections(total_sections, window)[0]
    shape = (latent_height, latent_width)
    draw = lambda *size: torch.randn(*size, generator=generator, device=device)  # noqa: E731
    indices = lambda values: torch.tensor(values, dtype=torch.long, device=device)  # noqa: E731
    inputs = SectionInputs(
        latent_indices=indices(section.latent_indices),
        clean_latents=draw(1, 16, 2, *shape),
        clean_latent_indices=indices(section.clean_latent_indices),
        clean_latents_2x=draw(1, 16, 2, *shape),
        clean_latent_2x_indices=indices(section.clean_latent_2x_indices),
        clean_latents_4x=draw(1, 16, 16, *shape),
        clean_latent_4x_indices=indices(section.clean_latent_4x_indices),
        image_embeds=draw(1, image_tokens, model.config.image_proj_dim).to(dtype),
    )
    mask = torch.zeros(1, 512, dtype=torch.bool, device=device)
    mask[:, :text_tokens] = True
    text = TextInputs(
        embeds=(draw(1, 512, model.config.text_embed_dim) * mask[..., None]).to(dtype),
        mask=mask,
        pooled=draw(1, model.config.pooled_projection_dim).to(dtype),
    )
    latents = draw(1, 16, window, *shape).to(dtype)
    return inputs, text, latents
