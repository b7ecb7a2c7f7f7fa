"""Cog predictor: a thin adapter from Cog's typed inputs to the FramePack service (framepack/service.py).

Input names, defaults, ranges and descriptions come from framepack/request.py, the single source of truth
shared with `python -m framepack predict`.
"""

from typing import Optional

from cog import BasePredictor, Input, Path, current_scope

from framepack.request import INPUT_SPECS
from framepack.service import FramePackService


def api_input(name: str):
    """A Cog Input built from the API table entry `name` (required inputs get no default)."""
    spec = INPUT_SPECS[name]
    default = None if spec.required else spec.default
    return Input(
        default=list(default) if isinstance(default, tuple) else default,
        description=spec.description,
        ge=spec.ge,
        le=spec.le,
        choices=list(spec.choices) if spec.choices else None,
    )


class Predictor(BasePredictor):
    def setup(self) -> None:
        """Load all encoders, the VAE and both transformers once; FRAMEPACK_WEIGHTS selects the folder."""
        self.service = FramePackService.setup()

    def predict(
        self,
        input_image: Path = api_input("input_image"),
        prompt: str = api_input("prompt"),
        negative_prompt: str = api_input("negative_prompt"),
        seed: Optional[int] = api_input("seed"),
        total_video_length_seconds: float = api_input("total_video_length_seconds"),
        model_variant: str = api_input("model_variant"),
        resolution: int = api_input("resolution"),
        width: int = api_input("width"),
        height: int = api_input("height"),
        latent_window_size: int = api_input("latent_window_size"),
        steps: int = api_input("steps"),
        cfg_scale: float = api_input("cfg_scale"),
        distilled_cfg_scale: float = api_input("distilled_cfg_scale"),
        cfg_rescale: float = api_input("cfg_rescale"),
        use_teacache: bool = api_input("use_teacache"),
        mp4_crf: int = api_input("mp4_crf"),
        section_prompts: str = api_input("section_prompts"),
        section_images: list[Path] = api_input("section_images"),
        section_image_indices: str = api_input("section_image_indices"),
        end_image: Optional[Path] = api_input("end_image"),
        end_image_strength: float = api_input("end_image_strength"),
        camera_movement: float = api_input("camera_movement"),
        lora_weights: str = api_input("lora_weights"),
        lora_scale: float = api_input("lora_scale"),
        extra_lora: str = api_input("extra_lora"),
        extra_lora_scale: float = api_input("extra_lora_scale"),
    ) -> Path:
        # The parameters are exactly the API table's inputs (tests/test_predict.py checks it).
        inputs = {name: value for name, value in locals().items() if name in INPUT_SPECS}
        return Path(self.service.predict(inputs, record_metric=current_scope().record_metric))
