"""Conditioning: prompt template and text encoders, image bucket and crop, SigLIP features, VAE start latent,
and `encode_conditioning`, which encodes everything the sections of one request share, once.

docs/ALGORITHM.md §3.1 (text) and §3.2-§3.4 (image). Everything returned is float on the encoder's device;
the generation loop casts it to the transformer's compute dtype.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ..core import continuation, controls
from ..core.planner import output_size, pixel_frames
from ..core.request import GenerationRequest
from ..core.variants import StartSlots, variant_named
from ..errors import InvalidInput
from ..models import FramePackModels
from .streaming import weights_on_device
from .transformer import TextInputs

logger = logging.getLogger(__name__)

Recorder = Callable[[str, torch.Tensor], None]

# HunyuanVideo's Llama prompt template (diffusers' DEFAULT_PROMPT_TEMPLATE). The missing spaces before
# "2.", "3.", ... are in the original and change the tokens, so they stay.
PROMPT_TEMPLATE = (
    "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following aspects: "
    "1. The main content and theme of the video."
    "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
    "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
    "4. background environment, light, style and atmosphere."
    "5. camera angles, movements, and transitions used in the video:<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
)
MAX_PROMPT_TOKENS = 256
PADDED_PROMPT_TOKENS = 512
CLIP_MAX_TOKENS = 77


def load_rgb_image(path: Path, name: str = "input_image") -> np.ndarray:
    """Read an image as (H, W, 3) uint8 RGB, applying its EXIF orientation so phone photos stand upright.

    Its header was checked with the request (`request.check_image_file`); a body that does not decode raises
    InvalidInput naming input `name`.
    """
    try:
        with Image.open(path) as image:
            return np.array(ImageOps.exif_transpose(image).convert("RGB"))
    except (OSError, ValueError, SyntaxError) as error:
        raise InvalidInput(name, f"could not read {Path(path).name} as an image ({error})") from None


def resize_and_center_crop(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale (LANCZOS) so the target fits inside, then centre-crop to (height, width, 3). No-op at that size."""
    if image.shape[0] == height and image.shape[1] == width:
        return image
    pil_image = Image.fromarray(image)
    original_width, original_height = pil_image.size
    scale = max(width / original_width, height / original_height)
    resized_width, resized_height = round(original_width * scale), round(original_height * scale)
    resized = pil_image.resize((resized_width, resized_height), Image.LANCZOS)
    box = (
        (resized_width - width) / 2,
        (resized_height - height) / 2,
        (resized_width + width) / 2,
        (resized_height + height) / 2,
    )
    return np.array(resized.crop(box))


def template_crop_start(tokenizer) -> int:
    """Number of tokens before the user prompt in the template, BOS included (95 for the real Llama-3).

    Computed rather than hard-coded so that any tokenizer (the tiny test one gives 191) crops correctly.
    """
    prefix = PROMPT_TEMPLATE.split("{}")[0]
    return len(tokenizer(prefix).input_ids)


@dataclass
class PromptEmbedding:
    """Text conditioning for one prompt.

    embeds: (1, L, D_llama) Llama hidden states of the prompt tokens (L <= 256, template prefix cropped).
    pooled: (1, D_clip) CLIP pooler output of the raw prompt.
    """

    embeds: torch.Tensor
    pooled: torch.Tensor

    def zeros_like(self) -> PromptEmbedding:
        return PromptEmbedding(torch.zeros_like(self.embeds), torch.zeros_like(self.pooled))


@torch.no_grad()
def encode_prompt(
    prompt: str, text_encoder, text_encoder_2, tokenizer, tokenizer_2, crop_start: int
) -> PromptEmbedding:
    """Llama third-from-last hidden states of the templated prompt, and the CLIP pooler of the raw prompt."""
    llama_inputs = tokenizer(
        [PROMPT_TEMPLATE.format(prompt)],
        padding="max_length",
        max_length=MAX_PROMPT_TOKENS + crop_start,
        truncation=True,
        return_tensors="pt",
        return_attention_mask=True,
    )
    input_ids = llama_inputs.input_ids.to(text_encoder.device)
    attention_mask = llama_inputs.attention_mask.to(text_encoder.device)
    valid_length = int(attention_mask.sum())
    outputs = text_encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    # hidden_states = (embeddings, layer 1, ..., layer n-1, norm(layer n)): [-3] is layer n-2's raw output.
    embeds = outputs.hidden_states[-3][:, crop_start:valid_length]
    if not bool(attention_mask[:, crop_start:valid_length].all()):
        raise RuntimeError("the Llama tokenizer must pad on the right; load it with AutoTokenizer")

    clip_ids = tokenizer_2(
        [prompt], padding="max_length", max_length=CLIP_MAX_TOKENS, truncation=True, return_tensors="pt"
    ).input_ids
    pooled = text_encoder_2(clip_ids.to(text_encoder_2.device), output_hidden_states=False).pooler_output
    return PromptEmbedding(embeds=embeds, pooled=pooled)


def blend_embeddings(source: PromptEmbedding, target: PromptEmbedding, weight: float) -> PromptEmbedding:
    """(1 - weight) source + weight target, in float32, for the Llama states and the pooled CLIP vector.

    Args:
        source, target: embeds (1, L_s, D_llama) and (1, L_t, D_llama); pooled (1, D_clip) each.
        weight: how far towards `target`, 0 .. 1.

    Returns embeds (1, max(L_s, L_t), D_llama): the shorter prompt's states are zero past its end, as the
    model's padding is, so the blend's valid tokens are the longer prompt's.
    """
    length = max(source.embeds.shape[1], target.embeds.shape[1])

    def padded(embeds: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(embeds.float(), (0, 0, 0, length - embeds.shape[1]))

    return PromptEmbedding(
        embeds=(1 - weight) * padded(source.embeds) + weight * padded(target.embeds),
        pooled=(1 - weight) * source.pooled.float() + weight * target.pooled.float(),
    )


def pad_prompt_embeds(embeds: torch.Tensor, length: int = PADDED_PROMPT_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad (1, L, D) to (1, length, D) and return it with its (1, length) bool mask of valid tokens."""
    batch, valid, dim = embeds.shape
    padded = torch.zeros(batch, length, dim, dtype=embeds.dtype, device=embeds.device)
    padded[:, :valid] = embeds
    mask = torch.zeros(batch, length, dtype=torch.bool, device=embeds.device)
    mask[:, :valid] = True
    return padded, mask


@torch.no_grad()
def encode_image_siglip(image: np.ndarray, feature_extractor, image_encoder) -> torch.Tensor:
    """SigLIP last hidden state (1, N_patches, D_siglip) of a (H, W, 3) uint8 image."""
    pixels = feature_extractor.preprocess(images=image, return_tensors="pt").pixel_values
    pixels = pixels.to(device=image_encoder.device, dtype=image_encoder.dtype)
    return image_encoder(pixel_values=pixels).last_hidden_state


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, 1, H, W) float32 in [-1, 1], the VAE's input layout."""
    pixels = torch.from_numpy(image).float() / 127.5 - 1
    return pixels.permute(2, 0, 1)[None, :, None]


def video_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (1, 3, T, H, W) float32 in [-1, 1], the VAE's input layout."""
    pixels = torch.from_numpy(frames).float() / 127.5 - 1
    return pixels.permute(3, 0, 1, 2)[None].contiguous()


@torch.no_grad()
def vae_encode_mean(image: np.ndarray, vae) -> torch.Tensor:
    """Start latent (1, 16, 1, H/8, W/8): the VAE posterior mean times the scaling factor.

    The reference samples the posterior with the unseeded global RNG; the mean makes a seed reproducible.
    """
    return _posterior_mean(image_to_tensor(image), vae)


@torch.no_grad()
def vae_encode_video_mean(frames: np.ndarray, vae) -> torch.Tensor:
    """Latents (1, 16, (T - 1) / 4 + 1, H/8, W/8) of (T, H, W, 3) uint8 frames, T = 4k + 1: the posterior mean
    times the scaling factor. The causal VAE encodes the first frame alone and each later 4 together."""
    return _posterior_mean(video_to_tensor(frames), vae)


def _posterior_mean(pixels: torch.Tensor, vae) -> torch.Tensor:
    pixels = pixels.to(device=vae.device, dtype=vae.dtype)
    return vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor


@dataclass
class Conditioning:
    """Everything the sections share.

    schedule: the request's per-section prompts, blends and keyframes; texts: positive TextInputs per distinct
    prompt; blended_texts: the TextInputs of each blend that mixes two prompts; negative: the global negative
    branch; image_embeds: SigLIP features of the start image; start_latent, keyframe_latents, end_latent:
    (1, 16, 1, h, w) float32 on the CPU (end_latent already times its strength); start_context and history_seed:
    where a continued video's latents go (`variants.StartSlots`).
    """

    schedule: controls.SectionSchedule
    texts: dict[str, TextInputs]
    blended_texts: dict[controls.PromptBlend, TextInputs]
    negative: TextInputs
    image_embeds: torch.Tensor
    start_latent: torch.Tensor
    start_context: torch.Tensor | None
    history_seed: torch.Tensor
    keyframe_latents: list[torch.Tensor]
    end_latent: torch.Tensor | None

    def positive_text(self, video_index: int) -> TextInputs:
        """The positive text conditioning of a video section: its prompt's, or its blend of two prompts."""
        blend = self.schedule.blends[video_index]
        return self.blended_texts[blend] if blend.blended else self.texts[blend.target]

    def start_slot(self, video_index: int) -> torch.Tensor:
        """The clean start group of a video section: its keyframe, else the start latent (after the continued
        video's context latents, where the variant puts them there)."""
        keyframe = self.schedule.keyframes[video_index]
        slot = self.start_latent if keyframe is None else self.keyframe_latents[keyframe]
        return slot if self.start_context is None else torch.cat([self.start_context, slot], dim=2)

    @property
    def start_group_latents(self) -> int:
        return 1 + (self.start_context.shape[2] if self.start_context is not None else 0)


def _text_inputs(embedding: PromptEmbedding, device: torch.device, dtype: torch.dtype) -> TextInputs:
    embeds, mask = pad_prompt_embeds(embedding.embeds)
    return TextInputs(
        embeds=embeds.to(device=device, dtype=dtype),
        mask=mask.to(device),
        pooled=embedding.pooled.to(device=device, dtype=dtype),
    )


def _image_latent(path, name: str, width: int, height: int, vae) -> torch.Tensor:
    image = resize_and_center_crop(load_rgb_image(path, name), width, height)
    return vae_encode_mean(image, vae).to("cpu", torch.float32)


def _read_input_video(
    request: GenerationRequest, default_context: int, log: Callable[[str], None]
) -> tuple[np.ndarray, int, int]:
    """The continued video's last frames, as many as its context latents need, cropped to the bucket of its size
    (or to width and height): (T, H, W, 3) uint8, and H and W."""
    probe = request.video_probe
    height, width = output_size(probe.height, probe.width, request.resolution, request.width, request.height)
    latents = continuation.context_latents(request.video_context_frames, default_context, probe)
    frames = continuation.read_last_frames(
        request.input_video, probe, pixel_frames(latents), lambda frame: resize_and_center_crop(frame, width, height)
    )
    log(
        f"input_video {probe.name}: {probe.frames} frames of {probe.width}x{probe.height} at 30 fps; its last "
        f"{len(frames)}, at {width}x{height}, give the {latents} context latents"
    )
    return frames, height, width


def encode_conditioning(
    request: GenerationRequest, models: FramePackModels, record: Recorder, log: Callable[[str], None] = logger.info
) -> Conditioning:
    """Crop the images to the bucket and encode every distinct prompt, the images and the latents once.

    `record(name, tensor)` receives the intermediate tensors (the CLI's --dump-tensors).
    """
    variant = variant_named(request.model_variant)
    video_frames = None
    if request.input_video is not None:  # first: an input video that does not decode fails before any model runs
        video_frames, height, width = _read_input_video(request, variant.default_video_context, log)
        image = video_frames[-1] if request.input_image is None else load_rgb_image(request.input_image)
    else:
        image = load_rgb_image(request.input_image)
        height, width = output_size(image.shape[0], image.shape[1], request.resolution, request.width, request.height)
    cropped = resize_and_center_crop(image, width, height)
    record("image_cropped_uint8", torch.from_numpy(cropped))

    schedule = request.schedule
    crop_start = template_crop_start(models.tokenizer)
    encoders = (models.text_encoder, models.text_encoder_2, models.tokenizer, models.tokenizer_2)
    embeddings = {}
    # Text encoders that visit the GPU (low-VRAM mode) come in once for all the prompts, not once a prompt.
    with weights_on_device(models.text_encoder), weights_on_device(models.text_encoder_2):
        for prompt in dict.fromkeys([request.prompt, *schedule.prompts]):
            embeddings[prompt] = encode_prompt(prompt, *encoders, crop_start)
        negative = None
        if request.cfg_scale != 1.0:
            negative = encode_prompt(request.negative_prompt, *encoders, crop_start)
    positive = embeddings[request.prompt]
    record("prompt_embeds", positive.embeds)
    record("pooled_prompt_embeds", positive.pooled)
    if negative is not None:
        record("negative_prompt_embeds", negative.embeds)
        record("negative_pooled_prompt_embeds", negative.pooled)
    else:
        negative = positive.zeros_like()

    image_embeds = encode_image_siglip(cropped, models.feature_extractor, models.image_encoder)
    record("image_embeds", image_embeds)
    image_latent = vae_encode_mean(cropped, models.vae).to("cpu", torch.float32)
    if video_frames is not None:
        context = vae_encode_video_mean(video_frames, models.vae).to("cpu", torch.float32)
        record("input_video_latents", context)
        last_frame = image_latent
        if request.input_image is not None:
            last_frame = vae_encode_mean(video_frames[-1], models.vae).to("cpu", torch.float32)
        slots = variant.continuation_slots(context, image_latent, last_frame)
    else:
        slots = StartSlots(image_latent, None, image_latent)
    record("start_latent", slots.start_latent)
    keyframe_latents = [
        _image_latent(path, "section_images", width, height, models.vae) for path in request.section_images
    ]
    end_latent = None
    if request.end_image is not None:
        end_latent = _image_latent(request.end_image, "end_image", width, height, models.vae)
        end_latent = end_latent * request.end_image_strength
    texts = {prompt: _text_inputs(emb, models.device, models.dtype) for prompt, emb in embeddings.items()}
    blended_texts = {
        blend: _text_inputs(
            blend_embeddings(embeddings[blend.source], embeddings[blend.target], blend.weight),
            models.device,
            models.dtype,
        )
        for blend in schedule.blends
        if blend.blended
    }
    return Conditioning(
        schedule=schedule,
        texts=texts,
        blended_texts=blended_texts,
        negative=_text_inputs(negative, models.device, models.dtype),
        image_embeds=image_embeds,
        start_latent=slots.start_latent,
        start_context=slots.start_context,
        history_seed=slots.history_seed,
        keyframe_latents=keyframe_latents,
        end_latent=end_latent,
    )
