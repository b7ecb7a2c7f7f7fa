"""Model-side helpers: random section inputs for the tiny transformer, and LoRA files in the three key formats."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def section_and_text(model, generator):
    """Random tiny section inputs (3-frame window on an 8x12 latent), 11-token text, and noisy latents."""
    from benchmarks.reference import random_section

    return random_section(
        model,
        generator,
        window=3,
        latent_height=8,
        latent_width=12,
        text_tokens=11,
        image_tokens=16,
        total_sections=3,
    )


# LoRA files in the three key formats, on the tiny transformer's real layer names (random low-rank factors).
RANK = 4


def _pair(out_features: int, in_features: int, generator) -> tuple[torch.Tensor, torch.Tensor]:
    down = torch.randn(RANK, in_features, generator=generator) * 0.3
    up = torch.randn(out_features, RANK, generator=generator) * 0.3
    return down, up


def musubi_lora(model, seed=1) -> dict[str, torch.Tensor]:
    """musubi-tuner naming: lora_unet_<module path with _>, lora_down/lora_up, alpha."""
    g, state = torch.Generator().manual_seed(seed), {}
    for path in ("transformer_blocks.0.attn.to_q", "single_transformer_blocks.1.proj_mlp"):
        module = model.get_submodule(path)
        down, up = _pair(module.out_features, module.in_features, g)
        key = "lora_unet_" + path.replace(".", "_")
        state.update(
            {
                f"{key}.lora_down.weight": down,
                f"{key}.lora_up.weight": up,
                f"{key}.alpha": torch.tensor(float(RANK) / 2),
            }
        )
    return state


def peft_lora(model, seed=2) -> dict[str, torch.Tensor]:
    """diffusers/PEFT naming: transformer.<module path>.lora_A/lora_B."""
    g, state = torch.Generator().manual_seed(seed), {}
    for path in ("transformer_blocks.1.ff.net.0.proj", "single_transformer_blocks.0.attn.to_k"):
        module = model.get_submodule(path)
        down, up = _pair(module.out_features, module.in_features, g)
        state.update({f"transformer.{path}.lora_A.weight": down, f"transformer.{path}.lora_B.weight": up})
    return state


def original_lora(model, seed=3) -> dict[str, torch.Tensor]:
    """Original HunyuanVideo naming with fused projections: img_attn_qkv (3D) and linear1 (3D + MLP)."""
    g, state = torch.Generator().manual_seed(seed), {}
    dim = model.config.num_attention_heads * model.config.attention_head_dim
    mlp = model.single_transformer_blocks[0].proj_mlp.out_features
    for key, out in (("double_blocks.0.img_attn_qkv", 3 * dim), ("single_blocks.1.linear1", 3 * dim + mlp)):
        down, up = _pair(out, dim, g)
        state.update({f"diffusion_model.{key}.lora_A.weight": down, f"diffusion_model.{key}.lora_B.weight": up})
    return state


def sdpa_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """PyTorch's SDPA on (B, S, H, D) tensors, with the backend that PyTorch picks: the reference attention kernel."""
    out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))
    return out.transpose(1, 2)
