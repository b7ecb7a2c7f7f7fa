"""Weights layout: which Hugging Face subfolders FramePack needs and where they live on disk.

`<weights>/<owner>/<repo>/<subfolder>` mirrors the hub. Only the subfolders listed here are used (the
HunyuanVideo repository also holds a 25 GB transformer that FramePack does not need). Cheap to import.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HUNYUAN_REPO = "hunyuanvideo-community/HunyuanVideo"
REDUX_REPO = "lllyasviel/flux_redux_bfl"
TRANSFORMER_REPOS = {
    "original": "lllyasviel/FramePackI2V_HY",
    "f1": "lllyasviel/FramePack_F1_I2V_HY_20250503",
}


@dataclass(frozen=True)
class Component:
    """One loadable component: a hub repository, an optional subfolder, and the files that show it is there.

    Each entry of `required` is a glob; the component is present when every glob matches a file.
    """

    name: str
    repo: str
    subfolder: str
    required: tuple[str, ...]

    def path(self, weights_dir: Path) -> Path:
        base = Path(weights_dir) / self.repo
        return base / self.subfolder if self.subfolder else base

    def missing_files(self, weights_dir: Path) -> list[str]:
        folder = self.path(weights_dir)
        return [pattern for pattern in self.required if not any(folder.glob(pattern))]


_MODEL_FILES = ("config.json", "*.safetensors")
ENCODER_COMPONENTS = (
    Component("text_encoder", HUNYUAN_REPO, "text_encoder", _MODEL_FILES),
    Component("text_encoder_2", HUNYUAN_REPO, "text_encoder_2", _MODEL_FILES),
    Component("tokenizer", HUNYUAN_REPO, "tokenizer", ("tokenizer_config.json",)),
    Component("tokenizer_2", HUNYUAN_REPO, "tokenizer_2", ("tokenizer_config.json",)),
    Component("vae", HUNYUAN_REPO, "vae", _MODEL_FILES),
    Component("feature_extractor", REDUX_REPO, "feature_extractor", ("preprocessor_config.json",)),
    Component("image_encoder", REDUX_REPO, "image_encoder", _MODEL_FILES),
)


def transformer_component(variant: str) -> Component:
    return Component(f"transformer_{variant}", TRANSFORMER_REPOS[variant], "", _MODEL_FILES)


def required_components(variants: tuple[str, ...]) -> list[Component]:
    """The encoders, the VAE and the transformer of each requested variant."""
    return list(ENCODER_COMPONENTS) + [transformer_component(v) for v in variants]


class MissingWeights(FileNotFoundError):
    """Some components are not in the weights folder; the message lists each with the path looked at."""

    def __init__(self, weights_dir: Path, missing: list[tuple[Component, list[str]]]):
        lines = [f"  {c.name}: {c.path(weights_dir)} (missing {', '.join(files)})" for c, files in missing]
        super().__init__(
            f"Weights missing in {weights_dir}:\n" + "\n".join(lines)
            + "\nPoint --weights (or FRAMEPACK_WEIGHTS) at a folder in the hub layout <owner>/<repo>/<subfolder>."
        )
        self.missing = missing


def find_missing(weights_dir: Path, components: list[Component]) -> list[tuple[Component, list[str]]]:
    """Each component that is not complete in `weights_dir`, with the file patterns it lacks."""
    return [(c, files) for c in components if (files := c.missing_files(weights_dir))]


def check_weights(weights_dir: Path, variants: tuple[str, ...]) -> None:
    """Raise MissingWeights unless every component for `variants` is present."""
    missing = find_missing(weights_dir, required_components(variants))
    if missing:
        raise MissingWeights(Path(weights_dir), missing)
