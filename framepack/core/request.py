"""The generation request: the prediction API's inputs as one pydantic model, and their validation.

`GenerationRequest` is the single source of truth for input names, order, types, defaults, ranges, choices
and descriptions: its fields generate `predict.py`'s Cog inputs (scripts/write_cog_files.py), the local
command's parsing and the schema tests, through `INPUT_SPECS`, a plain view of the fields. The engine only ever
sees a validated request. Everything here is cheap (no torch) so bad input is rejected before any model loads,
and every error is our one `InvalidInput`, naming the input and what is allowed.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from ..config import MODEL_VARIANTS, ModelVariant  # noqa: F401 (MODEL_VARIANTS: the API's choices)
from ..errors import InvalidInput
from .continuation import MAX_INPUT_VIDEO_BYTES, MAX_INPUT_VIDEO_SECONDS, VideoProbe, check_input_video, probe_video
from .controls import SectionSchedule, plan_schedule
from .lora_sources import parse_lora_source
from .planner import HISTORY_FRAMES, section_count
from .weights import CheckpointMismatch, safetensors_shapes

MAX_SEED = 2**32 - 1
RANDOM_SEED = -1
IMAGE_SIZE_MULTIPLE = 16
# Checked from an image's header before decoding: a phone's 50 MP photo passes; the largest output is 4.2 MP.
MAX_IMAGE_PIXELS = 50_000_000
# Text limits, checked before any work. The text encoder reads 256 tokens of a prompt (about 1,000 characters
# of English); the limits leave room for other scripts and stop megabyte-sized requests.
MAX_PROMPT_CHARS = 4000
MAX_SECTION_PROMPTS_CHARS = 40000
MAX_SOURCE_CHARS = 2048
MAX_PROMPT_BLEND_SECTIONS = 4
MAX_MAGCACHE_RATIOS_CHARS = 2000  # 101 entries of up to 18 characters and their commas


class GenerationRequest(BaseModel):
    """A validated request. Field names are the API input names, in the API's order; `seed` is always resolved.

    Values are coerced as Cog and JSON clients send them: strings of numbers and booleans, integral floats for
    integers, strings for paths. A boolean is never taken for a number.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    # Planned once, at validation, and carried with the request to every stage that needs them.
    _schedule: SectionSchedule | None = PrivateAttr(None)
    _video_probe: VideoProbe | None = PrivateAttr(None)
    _step_cache: str = PrivateAttr("none")

    input_image: Path | None = Field(
        None,
        description="Start frame of the video: any image PIL can open. Optional with input_video: then it is "
        "the image the model is shown instead of the video's last frame.",
    )
    prompt: str = Field(
        max_length=MAX_PROMPT_CHARS,
        description="What happens in the video. The text encoder reads its first 256 tokens; the rest is ignored.",
    )
    negative_prompt: str = Field(
        "", max_length=MAX_PROMPT_CHARS, description="What to avoid; used only when cfg_scale > 1."
    )
    # -1 rather than null for "random": Cog's server refuses null for an integer input although its schema
    # says nullable, so a null seed could never arrive.
    seed: int = Field(
        RANDOM_SEED,
        ge=RANDOM_SEED,
        le=MAX_SEED,
        validate_default=True,
        description="Random seed; -1 (the default) picks a random one. The seed used is logged and stored in the "
        "MP4 metadata.",
    )
    total_video_length_seconds: float = Field(
        5.0,
        ge=0.1,
        le=120.0,
        description="Requested video length in seconds (rounded to whole sections of latent_window_size * 4 / 30 s).",
    )
    model_variant: ModelVariant = Field(
        "original",
        description="'original': inverted anti-drifting FramePack (lllyasviel/FramePackI2V_HY); 'f1': forward "
        "FramePack-F1 (lllyasviel/FramePack_F1_I2V_HY_20250503).",
    )
    resolution: int = Field(
        640,
        ge=128,
        le=1536,
        description="Bucket family: the output size is the bucket of this family nearest to the image's aspect "
        "ratio. 640 is the reference table.",
    )
    width: int = Field(
        0, ge=0, le=2048, description="Output width; 0 picks the bucket. Otherwise a multiple of 16 (set height too)."
    )
    height: int = Field(
        0, ge=0, le=2048, description="Output height; 0 picks the bucket. Otherwise a multiple of 16 (set width too)."
    )
    latent_window_size: int = Field(
        9, ge=1, le=33, description="Latent frames generated per section (9 is what the models were trained with)."
    )
    steps: int = Field(25, ge=1, le=100, description="Sampling steps per section.")
    cfg_scale: float = Field(
        1.0,
        ge=1.0,
        le=32.0,
        description="Real classifier-free guidance; 1 disables it (and the negative prompt), values above 1 double "
        "the cost.",
    )
    distilled_cfg_scale: float = Field(
        10.0, ge=1.0, le=32.0, description="Distilled guidance strength fed to the model."
    )
    cfg_rescale: float = Field(
        0.0, ge=0.0, le=1.0, description="Guidance rescale (only has an effect when cfg_scale > 1)."
    )
    step_cache: Literal["auto", "none", "teacache", "magcache"] = Field(
        "auto",
        description="Skip transformer passes that would change little (about 2x faster, slightly different "
        "output): 'teacache' decides from each step's input, 'magcache' from a calibrated table (FramePack-Studio's "
        "default), 'none' runs every pass (exact). 'auto': TeaCache, or none when use_teacache is false.",
    )
    use_teacache: bool | None = Field(
        None,
        description="Earlier clients' switch, still honoured: true is step_cache 'teacache', false is no TeaCache. "
        "Leave empty to let step_cache decide.",
    )
    teacache_threshold: float = Field(
        0.15, ge=0.01, le=1.0, description="TeaCache: accumulated change that makes a pass run; higher skips more."
    )
    magcache_threshold: float = Field(
        0.1, ge=0.0, le=1.0, description="MagCache: accumulated error allowed while skipping; higher skips more."
    )
    magcache_max_skips: int = Field(3, ge=1, le=10, description="MagCache: most passes skipped in a row (K).")
    magcache_retention_ratio: float = Field(
        0.2, ge=0.0, le=1.0, description="MagCache: this fraction of the first steps always runs."
    )
    magcache_ratios: str = Field(
        "",
        max_length=MAX_MAGCACHE_RATIOS_CHARS,
        description="MagCache: a calibrated table of one's own, comma-separated (what `python -m framepack "
        "calibrate-magcache` prints, e.g. for a fine-tune); empty uses the variant's.",
    )
    mp4_crf: int = Field(
        16,
        ge=0,
        le=51,
        description="H.264 constant rate factor: 0 is lossless (not playable in browsers), higher is smaller and "
        "blurrier.",
    )
    section_prompts: str = Field(
        "",
        max_length=MAX_SECTION_PROMPTS_CHARS,
        description="One prompt per line, line i for section i (0 = start of the video). Empty or missing lines "
        "keep the previous section's prompt; section 0 falls back to prompt. Or every line starts with a time, "
        "'[2s] text' or '[2s-4s] text' (or FP-Studio's '[2s: text]', several on one line): the prompt applies "
        "from that time (to the end time), snapped to the section grid the log prints; times no line covers use "
        "prompt.",
    )
    prompt_blend_sections: int = Field(
        0,
        ge=0,
        le=MAX_PROMPT_BLEND_SECTIONS,
        description="Over this many sections after each prompt change, the text embeddings move linearly from "
        "the old prompt to the new one. 0 = switch at once.",
    )
    section_images: tuple[Path, ...] = Field(
        (),
        description="Keyframe images; each fills the start slot of its section and of later sections until the "
        "next keyframe.",
    )
    section_image_indices: str = Field(
        "", description="Comma-separated section number of each section_images entry (empty: 0, 1, 2, ...)."
    )
    end_image: Path | None = Field(None, description="End frame (original variant only): guides the end of the video.")
    end_image_strength: float = Field(
        1.0, ge=0.0, le=1.0, description="How strongly the end frame is imposed (0 = ignored)."
    )
    input_video: Path | None = Field(
        None,
        description=f"An MP4 to continue from its last frame for total_video_length_seconds more (read at 30 fps; "
        f"at most {MAX_INPUT_VIDEO_BYTES // 2**20} MiB, {MAX_INPUT_VIDEO_SECONDS:g} s and 3840x2160).",
    )
    video_context_frames: int = Field(
        0,
        ge=0,
        le=HISTORY_FRAMES,
        description="How many of input_video's last latent frames (4 video frames each) condition the "
        "continuation. 0: what the variant's context holds: f1 19 (its 1x, 2x and 4x history), original 1 (its "
        "start slot; more go before it at full resolution, as in FP-Studio's Video model, each adding "
        "1/latent_window_size of the window's tokens).",
    )
    include_input_video: bool = Field(
        True,
        description="Return input_video followed by the continuation, at the input's resolution (its frames as "
        "decoded: exactly at mp4_crf 0, encoded once more at the CRF otherwise); else the continuation alone.",
    )
    camera_movement: float = Field(
        0.0,
        ge=0.0,
        le=0.5,
        description="Experimental: rolls each section's latents sideways once, after 20% of the steps, by up to "
        "this fraction of the width; later steps heal it. 0 = off.",
    )
    lora_weights: str = Field(
        "",
        max_length=MAX_SOURCE_CHARS,
        description="LoRA for the transformer (musubi-tuner, diffusers/PEFT or HunyuanVideo key names): a Hugging "
        "Face repository, owner/repo or owner/repo/file.safetensors (or its huggingface.co URL), a CivitAI model, "
        "civitai.com/models/<id>[?modelVersionId=<version>], an https URL of a .safetensors file, or a local path.",
    )
    lora_scale: float = Field(1.0, ge=-2.0, le=2.0, description="Strength of lora_weights.")
    extra_lora: str = Field("", max_length=MAX_SOURCE_CHARS, description="A second LoRA, same formats as lora_weights.")
    extra_lora_scale: float = Field(1.0, ge=-2.0, le=2.0, description="Strength of extra_lora.")
    hf_api_token: SecretStr | None = Field(
        None,
        description="Hugging Face token for LoRAs in private or gated Hub repositories (default: HF_TOKEN on the "
        "server); sent only to the Hub, never logged or stored.",
    )
    civitai_api_token: SecretStr | None = Field(
        None,
        description="CivitAI API key for LoRAs that need a login; sent only to CivitAI, never logged or stored.",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, values: Any) -> Any:
        """Python counts True as 1, and pydantic follows; a client sending true for `steps` made a mistake."""
        if isinstance(values, Mapping):
            for name, value in values.items():
                spec = INPUT_SPECS.get(name)
                if isinstance(value, bool) and spec is not None and spec.type in (int, float):
                    raise InvalidInput(name, f"expected {spec.type.__name__}, got bool")
        return values

    @field_validator("seed")
    @classmethod
    def _resolve_seed(cls, seed: int) -> int:
        return secrets.randbelow(MAX_SEED + 1) if seed == RANDOM_SEED else seed

    @field_validator("prompt")
    @classmethod
    def _prompt_not_empty(cls, prompt: str) -> str:
        if not prompt.strip():
            raise InvalidInput("prompt", "must not be empty")
        return prompt

    @model_validator(mode="after")
    def _rules_across_inputs(self) -> GenerationRequest:
        """Width and height together and multiples of 16, the end frame's variant, keyframes against sections."""
        for name in ("width", "height", "resolution"):
            if getattr(self, name) % IMAGE_SIZE_MULTIPLE:
                raise InvalidInput(name, f"{getattr(self, name)} is not a multiple of {IMAGE_SIZE_MULTIPLE}")
        if (self.width == 0) != (self.height == 0):
            missing = "height" if self.height == 0 else "width"
            raise InvalidInput(missing, "set both width and height, or leave both 0 to pick a bucket")
        self._check_end_image()
        if self.input_image is None and self.input_video is None:
            raise InvalidInput("input_image", "is required unless input_video is given")
        if self.video_context_frames and self.input_video is None:
            raise InvalidInput("video_context_frames", "given without input_video")
        if self.section_image_indices.strip() and not self.section_images:
            raise InvalidInput("section_image_indices", "given without section_images")
        self._step_cache = resolve_step_cache(self.step_cache, self.use_teacache)
        parse_magcache_ratios(self.magcache_ratios)
        self._schedule = plan_schedule(
            self.num_sections,
            self.latent_window_size,
            prompt=self.prompt,
            section_prompts=self.section_prompts,
            prompt_blend_sections=self.prompt_blend_sections,
            keyframe_indices=self.section_image_indices,
            keyframe_count=len(self.section_images),
            continues=self.input_video is not None,
        )
        return self

    def _check_end_image(self) -> None:
        from .variants import variant_named  # torch: imported when a request is validated, not with the API table

        if self.end_image is not None and not variant_named(self.model_variant).has_end_slot:
            raise InvalidInput(
                "end_image",
                f"is only supported by model_variant 'original' ({self.model_variant} generates forwards and "
                "has no end slot)",
            )

    @property
    def num_sections(self) -> int:
        """How many sections the video has (the length rounded to whole sections of the window)."""
        return section_count(self.total_video_length_seconds, self.latent_window_size)

    @property
    def step_cache_settings(self):
        """The step cache that samples this request (`core.step_cache.StepCacheSettings`), `auto` resolved."""
        from .magcache import MagCacheSettings  # torch: imported when a request runs, not with the API table
        from .step_cache import StepCacheSettings

        ratios = parse_magcache_ratios(self.magcache_ratios)
        magcache = MagCacheSettings(
            self.magcache_threshold, self.magcache_max_skips, self.magcache_retention_ratio, ratios
        )
        return StepCacheSettings(self._step_cache, self.teacache_threshold, magcache)

    @property
    def lora_tokens(self) -> dict[str, str | None]:
        """The tokens LoRA downloads may send: "hf" (the input, else the server's HF_TOKEN) and "civitai"."""
        hub = self.hf_api_token.get_secret_value() if self.hf_api_token else os.environ.get("HF_TOKEN")
        civitai = self.civitai_api_token.get_secret_value() if self.civitai_api_token else None
        return {"hf": hub or None, "civitai": civitai or None}

    @property
    def schedule(self) -> SectionSchedule:
        """Each video section's time span, prompt, blend and keyframe (planned at validation)."""
        return self._schedule

    @property
    def video_probe(self) -> VideoProbe | None:
        """What input_video's container says (probed once, when the request's files were checked), or None."""
        if self.input_video is not None and self._video_probe is None:  # built without checking its files
            self._video_probe = probe_video(self.input_video)
        return self._video_probe

    def to_json_dict(self) -> dict[str, Any]:
        """The request as JSON-serialisable values (image files by their names only)."""
        values = self.model_dump()
        values["step_cache"], values["use_teacache"] = self._step_cache, None  # resolved: the MP4 says what ran
        for name in SECRET_INPUTS:  # tokens are never stored
            values.pop(name)
        for name in ("input_image", "end_image", "input_video"):
            values[name] = Path(values[name]).name if values[name] else None
        values["section_images"] = [Path(p).name for p in self.section_images]
        for name in ("lora_weights", "extra_lora"):  # URLs without their tokens; local files by name
            source = values[name].strip()
            values[name] = parse_lora_source(name, source).shown if source else ""
        return values


SECRET_INPUTS = ("hf_api_token", "civitai_api_token")
# Inputs kept for earlier clients: the studio and presets show what replaced them (step_cache).
EARLIER_INPUTS = ("use_teacache",)


def with_step_cache(values: Mapping[str, Any]) -> dict[str, Any]:
    """`values` (input name -> value) with an earlier `use_teacache` stated as `step_cache`, for settings stored
    before step_cache existed (videos' metadata, presets)."""
    values = dict(values)
    use_teacache = values.pop("use_teacache", None)
    if use_teacache is not None and values.get("step_cache", "auto") == "auto":
        values["step_cache"] = "teacache" if use_teacache else "none"
    return values


def parse_magcache_ratios(text: str) -> tuple[float, ...] | None:
    """A MagCache table from "1.0, 1.26, ...": 2 to 101 positive finite numbers; None when empty."""
    if not text.strip():
        return None
    try:
        ratios = tuple(float(item) for item in text.split(","))
    except ValueError:
        raise InvalidInput("magcache_ratios", "expected comma-separated numbers, like 1.0, 1.26, 1.23") from None
    if not 2 <= len(ratios) <= 101:
        raise InvalidInput("magcache_ratios", f"expected 2 to 101 numbers, got {len(ratios)}")
    if bad := [ratio for ratio in ratios if not 0 < ratio < float("inf")]:
        raise InvalidInput("magcache_ratios", f"every entry must be a positive finite number, got {bad[0]}")
    return ratios


def resolve_step_cache(step_cache: str, use_teacache: bool | None) -> str:
    """The step cache to run: `step_cache`, with 'auto' following the earlier `use_teacache` switch (TeaCache
    unless it is false). Both given and disagreeing is refused, naming both."""
    if step_cache == "auto":
        return "none" if use_teacache is False else "teacache"
    if use_teacache is not None and use_teacache != (step_cache == "teacache"):
        switch = "true" if use_teacache else "false"
        raise InvalidInput(
            "step_cache",
            f"'{step_cache}' contradicts use_teacache={switch}; leave use_teacache empty (step_cache replaces it) "
            "or make them agree",
        )
    return step_cache


@dataclass(frozen=True)
class InputSpec:
    """One API input as the generators of predict.py, the CLI and the schema tests read it (from its field).

    `type` is str, int, float, bool, Path, or list (of `item_type`); `choices` lists a Literal's values.
    """

    name: str
    type: type
    default: Any
    description: str
    ge: float | None = None
    le: float | None = None
    choices: tuple[Any, ...] | None = None
    required: bool = False
    item_type: type | None = None
    max_length: int | None = None


def _input_spec(name: str, field) -> InputSpec:
    annotation, item_type, choices = field.annotation, None, None
    if get_origin(annotation) in (Union, UnionType):  # `X | None`: an optional X
        annotation = next(arg for arg in get_args(annotation) if arg is not type(None))
    if get_origin(annotation) is Literal:
        choices = get_args(annotation)
        annotation = type(choices[0])
    elif get_origin(annotation) is tuple:
        annotation, item_type = list, get_args(annotation)[0]
    bound = lambda kind: next((getattr(m, kind) for m in field.metadata if hasattr(m, kind)), None)  # noqa: E731
    return InputSpec(
        name=name,
        type=annotation,
        default=None if field.is_required() else field.default,
        description=field.description,
        ge=bound("ge"),
        le=bound("le"),
        max_length=bound("max_length"),
        choices=choices,
        required=field.is_required(),
        item_type=item_type,
    )


INPUT_SPECS: dict[str, InputSpec] = {
    name: _input_spec(name, field) for name, field in GenerationRequest.model_fields.items()
}


def parse_text_value(spec: InputSpec, text: str) -> Any:
    """One command-line value (`name=value`) as the model takes it: files as `@path` or `path`, lists by commas.

    Numbers and booleans stay text; the model converts them and names the input when it cannot.
    """
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


_EXPECTED = {
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "int_type": "an integer",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "text",
    "path_type": "a file path",
    "tuple_type": "a list of files",
}


def _invalid_input(error: ValidationError) -> InvalidInput:
    """Our error for the first of pydantic's: an unknown input first, then in the API's order."""
    errors = sorted(error.errors(), key=lambda e: (e["type"] != "extra_forbidden", _position(e)))
    first = errors[0]
    cause = first.get("ctx", {}).get("error")
    if isinstance(cause, InvalidInput):
        return cause
    name = str(first["loc"][0]) if first["loc"] else "request"
    value, kind = first.get("input"), first["type"]
    spec = INPUT_SPECS.get(name)
    if kind == "missing":
        message = "is required"
    elif kind == "extra_forbidden":
        message = f"unknown input; known inputs are {', '.join(INPUT_SPECS)}"
    elif kind in ("greater_than_equal", "less_than_equal") and spec is not None:
        shown = spec.type(value) if isinstance(value, str) else value  # a command-line string: as converted
        message = f"{shown!r} is out of range; allowed {_number(spec.ge)} to {_number(spec.le)}"
    elif kind == "string_too_long" and spec is not None:
        message = f"is {len(value):,} characters long; at most {spec.max_length:,} are allowed"
    elif kind == "literal_error" and spec is not None:
        message = f"{value!r} is not one of {', '.join(repr(c) for c in spec.choices)}"
    elif kind in _EXPECTED:
        message = f"expected {_EXPECTED[kind]}, got {value!r}"
    else:
        message = first["msg"]
    return InvalidInput(name, message)


def _position(error: dict) -> int:
    names = list(INPUT_SPECS)
    return names.index(error["loc"][0]) if error["loc"] and error["loc"][0] in names else len(names)


@dataclass(frozen=True)
class FileInputs:
    """Where a request's files may come from.

    The local command (the default) reads any path. The HTTP API (`served`) takes images only as Cog delivers
    them: an upload, a URL or a data URI arrives as a file Cog wrote, while a path on the server arrives as
    plain text and is refused. Its local LoRA files must lie inside `lora_dirs`. Errors name the input and the
    file's name, never another server path.
    """

    served: bool = False
    lora_dirs: tuple[Path, ...] = ()
    upload_dir: Path | None = None  # when set, served images must lie inside it (the web studio's uploads)


def check_served_files(inputs: Mapping[str, Any], upload_dir: Path | None = None) -> None:
    """Refuse image inputs given as text (a path on the server) rather than as a file the server received.

    With `upload_dir`, a file must also lie inside that folder (after resolving links and `..`).
    """
    refusal = "give an upload, an https URL or a data URI; paths on the server are not read"
    for name, spec in INPUT_SPECS.items():
        if spec.type not in (Path, list) or inputs.get(name) is None:
            continue
        values = inputs[name] if spec.type is list else [inputs[name]]
        if any(not isinstance(value, Path) for value in values):
            raise InvalidInput(name, refusal)
        if upload_dir is not None and not all(v.resolve().is_relative_to(upload_dir.resolve()) for v in values):
            raise InvalidInput(name, refusal)


def check_image_file(name: str, path: Path) -> None:
    """Raise InvalidInput unless `path` is an image PIL can open, of at most MAX_IMAGE_PIXELS.

    Only the header is read, and the file's structure checked (`verify`): the pixels are decoded once, when
    the image is used (`conditioning.load_rgb_image`, which names the input if that fails).
    """
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise InvalidInput(name, f"file not found: {path.name}")
    too_large = f"more than the {MAX_IMAGE_PIXELS:,} pixels allowed"
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise InvalidInput(name, f"{path.name} is {image.width}x{image.height} pixels, {too_large}")
            image.verify()
    except Image.DecompressionBombError as error:  # PIL's own limit, far above ours, hit while reading the header
        raise InvalidInput(name, f"{path.name} has {too_large} ({error})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        if isinstance(error, InvalidInput):
            raise
        raise InvalidInput(name, f"could not read {path.name} as an image ({error})") from None


def check_lora_source(name: str, source: str, lora_dirs: tuple[Path, ...] | None = None) -> None:
    """A LoRA is a Hub or CivitAI reference or an https URL (fetched later), or a local safetensors file, never
    anything else (`lora_sources.parse_lora_source`).

    With `lora_dirs`, a local file must lie inside one of them (after resolving links and `..`).
    """
    source = source.strip()
    if not source or parse_lora_source(name, source).kind != "file":
        return
    path = Path(source)
    if lora_dirs is not None and not any(path.resolve().is_relative_to(d.resolve()) for d in lora_dirs):
        raise InvalidInput(
            name,
            "a local LoRA file must be in the server's LoRA folder; give a Hugging Face repository (owner/repo), "
            "a civitai.com/models/... page or an https URL instead",
        )
    if not path.is_file():
        raise InvalidInput(name, f"file not found: {path.name}")
    try:
        safetensors_shapes(path)
    except (CheckpointMismatch, ValueError, OSError, UnicodeDecodeError) as error:
        raise InvalidInput(name, f"{path.name} is not a valid .safetensors file ({error})") from None


def build_request(
    inputs: Mapping[str, Any], *, check_files: bool = True, files: FileInputs = FileInputs()
) -> GenerationRequest:
    """Validate raw inputs (typed values or command-line strings) into a GenerationRequest.

    Raises InvalidInput naming the first bad input. An input given as None takes its default (a random seed).
    With `check_files`, the images must decode and each LoRA must be an https URL or a safetensors file, from
    where `files` allows.
    """
    if files.served:
        check_served_files(inputs, files.upload_dir)
    try:
        request = GenerationRequest.model_validate({k: v for k, v in inputs.items() if v is not None})
    except ValidationError as error:
        raise _invalid_input(error) from None
    if check_files:
        if request.input_image is not None:
            check_image_file("input_image", request.input_image)
        if request.input_video is not None:
            request._video_probe = check_input_video(
                request.input_video, request.video_context_frames, request.include_input_video
            )
        for image in request.section_images:
            check_image_file("section_images", image)
        if request.end_image is not None:
            check_image_file("end_image", request.end_image)
        for name in ("lora_weights", "extra_lora"):
            check_lora_source(name, getattr(request, name), files.lora_dirs if files.served else None)
    return request
