"""Loading the FramePack components with their real classes (diffusers and transformers), once."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..core.weights import ENCODER_COMPONENTS, check_weights, transformer_component

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FramePackModels:
    """Every component a generation needs, as loaded. `transformers` maps a model variant to its packed
    transformer; `device` is where they run and `dtype` the transformer's. Where they sit and how they run is
    the engine's `runtime.placement.Placement`."""

    tokenizer: object
    tokenizer_2: object
    text_encoder: torch.nn.Module
    text_encoder_2: torch.nn.Module
    feature_extractor: object
    image_encoder: torch.nn.Module
    vae: torch.nn.Module
    transformers: dict[str, torch.nn.Module] = field(default_factory=dict)
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32


def all_blocks(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    """A packed transformer's blocks in forward order: the dual-stream ones, then the single-stream ones."""
    return [*transformer.transformer_blocks, *transformer.single_transformer_blocks]


def encoder_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The encoders and the VAE run in float16 on a GPU when the transformer is not float32 (as the reference)."""
    if device.type == "cuda" and dtype != torch.float32:
        return torch.float16
    return torch.float32


def load_models(
    weights_dir: Path,
    variants: tuple[str, ...],
    device: torch.device,
    dtype: torch.dtype,
    direct_variants: int | None = None,
) -> FramePackModels:
    """Load tokenizers, encoders, VAE and the requested transformers.

    `device` is where they will run (recorded in the bundle; `placement.place_models` moves or streams them
    there). The transformer runs in `dtype`; encoders in `encoder_dtype`. Raises MissingWeights before
    loading anything if a component is absent.

    By default everything is loaded into host memory. With `direct_variants` (high-VRAM mode), the encoders,
    the VAE and the first `direct_variants` transformers are read straight onto `device`, without a host copy
    of their weights to fill and copy again.
    """
    from diffusers import AutoencoderKLHunyuanVideo
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTokenizer, LlamaModel, SiglipVisionModel
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    weights_dir = Path(weights_dir)
    check_weights(weights_dir, variants)
    paths = {c.name: c.path(weights_dir) for c in ENCODER_COMPONENTS}
    side_dtype = encoder_dtype(device, dtype)

    def frozen(module: torch.nn.Module) -> torch.nn.Module:
        return module.eval().requires_grad_(False)

    direct = {} if direct_variants is None else {"device_map": str(device)}

    logger.info("loading encoders and VAE from %s (%s)", weights_dir, side_dtype)
    # AutoTokenizer, never LlamaTokenizerFast: under transformers 5 that class pads on the left.
    tokenizer = AutoTokenizer.from_pretrained(paths["tokenizer"])
    tokenizer.padding_side = "right"
    models = FramePackModels(
        tokenizer=tokenizer,
        tokenizer_2=CLIPTokenizer.from_pretrained(paths["tokenizer_2"]),
        text_encoder=frozen(LlamaModel.from_pretrained(paths["text_encoder"], dtype=side_dtype, **direct)),
        text_encoder_2=frozen(CLIPTextModel.from_pretrained(paths["text_encoder_2"], dtype=side_dtype, **direct)),
        # The PIL processor is what the reference used; the torchvision one resizes slightly differently.
        feature_extractor=SiglipImageProcessorPil.from_pretrained(paths["feature_extractor"]),
        image_encoder=frozen(SiglipVisionModel.from_pretrained(paths["image_encoder"], dtype=side_dtype, **direct)),
        vae=frozen(AutoencoderKLHunyuanVideo.from_pretrained(paths["vae"], torch_dtype=side_dtype, **direct)),
        device=device,
        dtype=dtype,
    )
    for index, variant in enumerate(variants):
        onto_device = direct_variants is not None and index < direct_variants
        models.transformers[variant] = load_transformer(weights_dir, variant, dtype, device if onto_device else None)
    return models


def load_transformer(
    weights_dir: Path, variant: str, dtype: torch.dtype, device: torch.device | None = None
) -> torch.nn.Module:
    """One variant's packed transformer in `dtype`, frozen: read into host memory, or straight onto `device`."""
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    path = transformer_component(variant).path(Path(weights_dir))
    logger.info("loading the %s transformer from %s (%s)", variant, path, dtype)
    onto_device = {} if device is None else {"device_map": str(device)}
    model = HunyuanVideoFramepackTransformer3DModel.from_pretrained(path, torch_dtype=dtype, **onto_device)
    return model.eval().requires_grad_(False)
