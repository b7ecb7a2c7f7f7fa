"""Every FramePack component with random weights: the real architectures at full size, or the tiny test ones.

No checkpoint is needed to measure speed and memory. The full-size configurations are the released models'
(the transformer's is checked against the real checkpoint's manifest by tests/test_benchmarks.py). The
tokenizers, and the tiny architecture, come from the test fixtures: the benchmarks are a repository tool.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch

from framepack.core.weights import ENCODER_COMPONENTS, transformer_component
from framepack.models import FramePackModels, encoder_dtype

TINY_WEIGHTS = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tiny-weights"
HUNYUAN = "hunyuanvideo-community/HunyuanVideo"

# lllyasviel/FramePackI2V_HY (and the F1 checkpoint: the same architecture).
FULL_TRANSFORMER = {
    "in_channels": 16,
    "out_channels": 16,
    "num_attention_heads": 24,
    "attention_head_dim": 128,
    "num_layers": 20,
    "num_single_layers": 40,
    "num_refiner_layers": 2,
    "mlp_ratio": 4.0,
    "patch_size": 2,
    "patch_size_t": 1,
    "qk_norm": "rms_norm",
    "guidance_embeds": True,
    "text_embed_dim": 4096,
    "pooled_projection_dim": 768,
    "rope_theta": 256.0,
    "rope_axes_dim": [16, 56, 56],
    "has_image_proj": True,
    "image_proj_dim": 1152,
    "has_clean_x_embedder": True,
}
FULL_LLAMA = {  # HunyuanVideo's text encoder (LLaVA-Llama-3-8B's language model)
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128320,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"},
}
FULL_CLIP = {  # CLIP ViT-L/14's text encoder
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
    "projection_dim": 768,
}
FULL_SIGLIP = {  # flux_redux_bfl's image encoder (SigLIP so400m, 384 px)
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "image_size": 384,
    "patch_size": 14,
}


def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fill every parameter: norms' weights 1, biases 0, other weights N(0, 1/fan_in) (keeps activations O(1))."""
    generator = torch.Generator(device=next(module.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim == 1:
                param.fill_(1.0 if "norm" in name and name.endswith("weight") else 0.0)
            else:
                fan_in = param[0].numel()
                param.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=generator)
        for buffer in module.buffers():
            if buffer.is_floating_point() and not torch.isfinite(buffer).all():
                buffer.zero_()
    return module


def _build(factory, device: torch.device, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    """`factory()` built without memory, then allocated on `device` in `dtype` and randomized."""
    with torch.device("meta"):
        module = factory()
    module = module.to_empty(device=device).to(dtype)
    for name, buffer in module.named_buffers():  # recompute non-persistent buffers lost on meta (e.g. RoPE)
        if "inv_freq" in name:
            dim = buffer.numel() * 2
            exponents = torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim
            buffer.copy_(1.0 / (module.config.rope_parameters["rope_theta"] ** exponents))
        elif "position_ids" in name:
            buffer.copy_(torch.arange(buffer.shape[-1], device=device).expand_as(buffer))
    return randomize_(module, seed).eval().requires_grad_(False)


def _config_json(path: Path) -> dict:
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}


def random_models(size: str, device: torch.device, dtype: torch.dtype, build_device: torch.device) -> FramePackModels:
    """All FramePack components at `size` ("full" or "tiny") with random weights, built on `build_device`."""
    from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoFramepackTransformer3DModel
    from transformers import (
        AutoTokenizer,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTokenizer,
        LlamaConfig,
        LlamaModel,
        SiglipVisionConfig,
        SiglipVisionModel,
    )
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    hunyuan = TINY_WEIGHTS / HUNYUAN
    if size == "full":
        transformer_config, vae_config, image_size = FULL_TRANSFORMER, {}, 384
        llama, clip, siglip = LlamaConfig(**FULL_LLAMA), CLIPTextConfig(**FULL_CLIP), SiglipVisionConfig(**FULL_SIGLIP)
    else:
        transformer_config = _config_json(TINY_WEIGHTS / "lllyasviel/FramePackI2V_HY/config.json")
        vae_config, image_size = _config_json(hunyuan / "vae" / "config.json"), 32
        llama = LlamaConfig.from_pretrained(hunyuan / "text_encoder")
        clip = CLIPTextConfig.from_pretrained(hunyuan / "text_encoder_2")
        siglip = SiglipVisionConfig.from_pretrained(TINY_WEIGHTS / "lllyasviel/flux_redux_bfl/image_encoder")
    side = encoder_dtype(device, dtype)
    tokenizer = AutoTokenizer.from_pretrained(hunyuan / "tokenizer")
    tokenizer.padding_side = "right"
    return FramePackModels(
        tokenizer=tokenizer,
        tokenizer_2=CLIPTokenizer.from_pretrained(hunyuan / "tokenizer_2"),
        text_encoder=_build(lambda: LlamaModel(llama), build_device, side, 1),
        text_encoder_2=_build(lambda: CLIPTextModel(clip), build_device, side, 2),
        feature_extractor=SiglipImageProcessorPil(
            size={"height": image_size, "width": image_size}, resample=3, image_mean=[0.5] * 3, image_std=[0.5] * 3
        ),
        image_encoder=_build(lambda: SiglipVisionModel(siglip), build_device, side, 3),
        vae=_build(lambda: AutoencoderKLHunyuanVideo(**vae_config), build_device, side, 4),
        transformers={
            "original": _build(
                lambda: HunyuanVideoFramepackTransformer3DModel(**transformer_config), build_device, dtype, 5
            )
        },
        device=device,
        dtype=dtype,
    )


def save_random_weights(size: str, weights_dir: Path, device: torch.device, dtype: torch.dtype) -> None:
    """Write random models of `size` into `weights_dir` in the hub layout that `load_models` reads."""
    models = random_models(size, device, dtype, device)
    paths = {c.name: c.path(weights_dir) for c in ENCODER_COMPONENTS}
    for name in ("text_encoder", "text_encoder_2", "image_encoder", "vae"):
        getattr(models, name).to("cpu").save_pretrained(paths[name])
        models = dataclasses.replace(models, **{name: None})  # free host memory before the next component
    for name in ("tokenizer", "tokenizer_2", "feature_extractor"):
        getattr(models, name).save_pretrained(paths[name])
    models.transformers["original"].to("cpu").save_pretrained(transformer_component("original").path(weights_dir))
    print(f"random {size} weights written to {weights_dir}", flush=True)
