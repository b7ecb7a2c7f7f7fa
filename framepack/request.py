"""The generation request: the prediction API's inputs, their ranges, parsing and validation.

This module is the single source of truth for input names, defaults and ranges: the local predict command
parses with it, `predict.py` builds its Cog inputs from it, and the engine only ever sees a validated
`GenerationRequest`. Everything here is cheap (no torch) so bad input is rejected before any model loads.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .controls import parse_keyframe_indices
from .errors import InvalidInput
from .planner import section_count
from .weights import CheckpointMismatch, safetensors_shapes

MAX_SEED = 2**32 - 1
MODEL_VARIANTS = ("original", "f1")


@dataclass(frozen=True)
class InputSpec:
    """One input of the prediction API: its Python type, default, range or choices and description."""

    name: str
    type: type
    default: Any
    description: str
    ge: float | None = None
    le: float | None = None
    choices: tuple[Any, ...] | None = None
    required: bool = False
    item_type: type | None = None  # for list inputs


INPUT_SPECS: dict[str, InputSpec] = {
    spec.name: spec
    for spec in (
        InputSpec("input_image", Path, None, "Start frame of the video: any image PIL can open.", required=True),
        InputSpec("prompt", str, None, "What happens in the video.", required=True),
        InputSpec("negative_prompt", str, "", "What to avoid; used only when cfg_scale > 1."),
        InputSpec(
            "seed",
            int,
            None,
            "Random seed; leave empty for a random one. The seed used is logged and stored in the MP4 metadata.",
            ge=0,
            le=MAX_SEED,
        ),
        InputSpec(
            "total_video_length_seconds",
            float,
            5.0,
            "Requested video length in seconds (rounded to whole sections of latent_window_size * 4 / 30 s).",
            ge=0.1,
            le=120.0,
        ),
        InputSpec(
            "model_variant",
            str,
            "original",
            "'original': inverted anti-drifting FramePack "
            "(lllyasviel/FramePackI2V_HY); 'f1': forward FramePack-F1 "
            "(lllyasviel/FramePack_F1_I2V_HY_20250503).",
            choices=MODEL_VARIANTS,
        ),
        InputSpec(
            "resolution",
            int,
            640,
            "Bucket family: the output size is the bucket of this family nearest to "
            "the image's aspect ratio. 640 is the reference table.",
            ge=128,
            le=1536,
        ),
        InputSpec(
            "width",
            int,
            0,
            "Output width; 0 picks the bucket. Otherwise a multiple of 16 (set height too).",
            ge=0,
            le=2048,
        ),
        InputSpec(
            "height",
            int,
            0,
            "Output height; 0 picks the bucket. Otherwise a multiple of 16 (set width too).",
            ge=0,
            le=2048,
        ),
        InputSpec(
            "latent_window_size",
            int,
            9,
            "Latent frames generated per section (9 is what the models were trained with).",
            ge=1,
            le=33,
        ),
        InputSpec("steps", int, 25, "Sampling steps per section.", ge=1, le=100),
        InputSpec(
            "cfg_scale",
            float,
            1.0,
            "Real classifier-free guidance; 1 disables it (and the negative prompt), values above 1 double the cost.",
            ge=1.0,
            le=32.0,
        ),
        InputSpec("distilled_cfg_scale", float, 10.0, "Distilled guidance strength fed to the model.", ge=1.0, le=32.0),
        InputSpec(
            "cfg_rescale", float, 0.0, "Guidance rescale (only has an effect when cfg_scale > 1).", ge=0.0, le=1.0
        ),
        InputSpec(
            "use_teacache",
            bool,
            True,
            "TeaCache: skip transformer passes whose input barely changed "
            "(about 2x faster, slightly different output).",
        ),
        InputSpec(
            "mp4_crf",
            int,
            16,
            "H.264 constant rate factor: 0 is lossless (not playable in browsers), higher is smaller and blurrier.",
            ge=0,
            le=51,
        ),
        InputSpec(
            "section_prompts",
            str,
            "",
            "One prompt per line, line i for section i (0 = start of the video). "
            "Empty or missing lines keep the previous section's prompt; section 0 falls back to prompt.",
        ),
        InputSpec(
            "section_images",
            list,
            (),
            "Keyframe images; each fills the start slot of its section and of later sections until the next keyframe.",
            item_type=Path,
        ),
        InputSpec(
            "section_image_indices",
            str,
            "",
            "Comma-separated section number of each section_images entry (empty: 0, 1, 2, ...).",
        ),
        InputSpec("end_image", Path, None, "End frame (original variant only): guides the end of the video."),
        InputSpec(
            "end_image_strength", float, 1.0, "How strongly the end frame is imposed (0 = ignored).", ge=0.0, le=1.0
        ),
        InputSpec(
            "camera_movement",
            float,
            0.0,
            "Experimental: rolls each section's latents sideways once, after "
            "20% of the steps, by up to this fraction of the width; later steps heal it. 0 = off.",
            ge=0.0,
            le=0.5,
        ),
        InputSpec(
            "lora_weights",
            str,
            "",
            "LoRA for the transformer: an https URL or a local path to a "
            ".safetensors file (musubi-tuner, diffusers/PEFT or HunyuanVideo key names).",
        ),
        InputSpec("lora_scale", float, 1.0, "Strength of lora_weights.", ge=-2.0, le=2.0),
        InputSpec("extra_lora", str, "", "A second LoRA, same formats as lora_weights."),
        InputSpec("extra_lora_scale", float, 1.0, "Strength of extra_lora.", ge=-2.0, le=2.0),
    )
}

IMAGE_SIZE_MULTIPLE = 16


@dataclass(frozen=True)
class GenerationRequest:
    """A validated request. Field names are the API input names; `seed` is always resolved."""

    input_image: Path
    prompt: str
    seed: int
    negative_prompt: str = ""
    total_video_length_seconds: float = 5.0
    model_variant: str = "original"
    resolution: int = 640
    width: int = 0
    height: int = 0
    latent_window_size: int = 9
    steps: int = 25
    cfg_scale: float = 1.0
    distilled_cfg_scale: float = 10.0
    cfg_rescale: float = 0.0
    use_teacache: bool = True
    mp4_crf: int = 16
    section_prompts: str = ""
    section_images: tuple[Path, ...] = ()
    section_image_indices: str = ""
    end_image: Path | None = None
    end_image_strength: float = 1.0
    camera_movement: float = 0.0
    lora_weights: str = ""
    lora_scale: float = 1.0
    extra_lora: str = ""
    extra_lora_scale: float = 1.0

    @property
    def num_sections(self) -> int:
        """How many sections the video has (the length rounded to whole sections of the window)."""
        return section_count(self.total_video_length_seconds, self.latent_window_size)

    def to_json_dict(self) -> dict[str, Any]:
        """The request as JSON-serialisable values (image files by their names only)."""
        values = dataclasses.asdict(self)
        values["input_image"] = Path(self.input_image).name
        values["section_images"] = [Path(p).name for p in self.section_images]
        values["end_image"] = Path(self.end_image).name if self.end_image else None
        return values

    def to_json(self) -> str:
        return json.dumps(self.to_json_dict(), sort_keys=True)


def parse_text_value(spec: InputSpec, text: str) -> Any:
    """Convert one command-line value (`name=value`) to the input's type, or raise InvalidInput."""
    if spec.type is bool:
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise InvalidInput(spec.name, f"expected true or false, got {text!r}")
    if spec.type is int:
        try:
            return int(text)
        except ValueError:
            raise InvalidInput(spec.name, f"expected an integer, got {text!r}") from None
    if spec.type is float:
        try:
            return float(text)
        except ValueError:
            raise InvalidInput(spec.name, f"expected a number, got {text!r}") from None
    if spec.type is Path:
        return _file_path(text)
    if spec.type is list:
        return [_file_path(part.strip()) for part in text.split(",") if part.strip()]
    return text


def _file_path(text: str) -> Path:
    """A file argument as `cog predict` writes it: `@photo.jpg` or `photo.jpg`."""
    return Path(text[1:] if text.startswith("@") else text)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _check_range(spec: InputSpec, value: Any) -> None:
    if spec.choices is not None and value not in spec.choices:
        allowed = ", ".join(repr(c) for c in spec.choices)
        raise InvalidInput(spec.name, f"{value!r} is not one of {allowed}")
    if spec.ge is not None and spec.le is not None and not (spec.ge <= value <= spec.le):
        raise InvalidInput(spec.name, f"{value!r} is out of range; allowed {_number(spec.ge)} to {_number(spec.le)}")


def _coerce(spec: InputSpec, value: Any) -> Any:
    """Accept already-typed values (from Cog or Python callers); reject wrong types clearly."""
    if spec.type is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if spec.type is Path and isinstance(value, str):
        return Path(value)
    if spec.type is list and isinstance(value, (list, tuple)):
        return tuple(Path(item) if isinstance(item, str) else item for item in value)
    if isinstance(value, str) and spec.type is not str:
        return parse_text_value(spec, value)
    if (spec.type is int and isinstance(value, bool)) or not isinstance(value, spec.type):
        raise InvalidInput(spec.name, f"expected {spec.type.__name__}, got {type(value).__name__}")
    return value


def check_image_file(name: str, path: Path) -> None:
    """Raise InvalidInput unless `path` is a file that PIL can decode as an image."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise InvalidInput(name, f"file not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise InvalidInput(name, f"could not read {path.name} as an image ({error})") from None


def _check_end_image(values: dict[str, Any]) -> None:
    from .variants import variant_named  # torch: imported when a request is validated, not with the API table

    if values["end_image"] is not None and not variant_named(values["model_variant"]).has_end_slot:
        raise InvalidInput(
            "end_image",
            f"is only supported by model_variant 'original' ({values['model_variant']} generates forwards and "
            "has no end slot)",
        )


def _check_controls(values: dict[str, Any]) -> None:
    """Keyframe indices against the number of sections (computed from the request, no models needed)."""
    num_sections = section_count(values["total_video_length_seconds"], values["latent_window_size"])
    if values["section_image_indices"].strip() and not values["section_images"]:
        raise InvalidInput("section_image_indices", "given without section_images")
    parse_keyframe_indices(values["section_image_indices"], len(values["section_images"]), num_sections)


def check_lora_source(name: str, source: str) -> None:
    """A LoRA is an https URL (fetched later) or a local safetensors file, never anything else."""
    source = source.strip()
    if not source or source.startswith("https://"):
        return
    if "://" in source:
        raise InvalidInput(name, f"only https URLs or local paths are accepted, got {source!r}")
    path = Path(source)
    if not path.is_file():
        raise InvalidInput(name, f"file not found: {path}")
    try:
        safetensors_shapes(path)
    except (CheckpointMismatch, ValueError, OSError, UnicodeDecodeError) as error:
        raise InvalidInput(name, f"{path.name} is not a valid .safetensors file ({error})") from None


def build_request(inputs: Mapping[str, Any], *, check_files: bool = True) -> GenerationRequest:
    """Validate raw inputs (typed values or command-line strings) into a GenerationRequest.

    Raises InvalidInput naming the first bad input. An omitted or None seed is replaced by a random one.
    """
    unknown = sorted(set(inputs) - set(INPUT_SPECS))
    if unknown:
        raise InvalidInput(unknown[0], f"unknown input; known inputs are {', '.join(INPUT_SPECS)}")

    values: dict[str, Any] = {}
    for name, spec in INPUT_SPECS.items():
        raw = inputs.get(name)
        if raw is None:
            if spec.required:
                raise InvalidInput(name, "is required")
            values[name] = spec.default
            continue
        value = _coerce(spec, raw)
        _check_range(spec, value)
        values[name] = value

    if not values["prompt"].strip():
        raise InvalidInput("prompt", "must not be empty")
    width, height = values["width"], values["height"]
    for name, size in (("width", width), ("height", height)):
        if size % IMAGE_SIZE_MULTIPLE:
            raise InvalidInput(name, f"{size} is not a multiple of {IMAGE_SIZE_MULTIPLE}")
    if (width == 0) != (height == 0):
        missing = "height" if height == 0 else "width"
        raise InvalidInput(missing, "set both width and height, or leave both 0 to pick a bucket")
    if values["resolution"] % IMAGE_SIZE_MULTIPLE:
        raise InvalidInput("resolution", f"{values['resolution']} is not a multiple of {IMAGE_SIZE_MULTIPLE}")
    values["section_images"] = tuple(values["section_images"])
    _check_end_image(values)
    _check_controls(values)
    if check_files:
        check_image_file("input_image", values["input_image"])
        for image in values["section_images"]:
            check_image_file("section_images", Path(image))
        if values["end_image"] is not None:
            check_image_file("end_image", values["end_image"])
        for name in ("lora_weights", "extra_lora"):
            check_lora_source(name, values[name])
    if values["seed"] is None:
        values["seed"] = secrets.randbelow(MAX_SEED + 1)
    return GenerationRequest(**values)
