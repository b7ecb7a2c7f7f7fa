"""Weights layout: which Hugging Face subfolders FramePack needs and where they live on disk.

`<weights>/<owner>/<repo>/<subfolder>` mirrors the hub. Only the subfolders listed here are used (the
HunyuanVideo repository also holds a 25 GB transformer that FramePack does not need). Cheap to import.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

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
    """Some components are not in the weights folder; the message lists each with the path looked at, then what
    to do: the exact download command for this folder and `variants`, or, when a download stopped, `note`."""

    def __init__(
        self,
        weights_dir: Path,
        missing: list[tuple[Component, list[str]]],
        note: str = "",
        variants: tuple[str, ...] = (),
    ):
        lines = [f"  {c.name}: {c.path(weights_dir)} (missing {', '.join(files)})" for c, files in missing]
        if note:
            advice = note
        else:
            command = f"python -m framepack download-weights --weights {weights_dir}"
            command += f" --variants {','.join(variants)}" if variants else ""
            advice = (
                "Point --weights (or FRAMEPACK_WEIGHTS) at a folder in the hub layout <owner>/<repo>/<subfolder>, "
                f"or download them into this folder (only the missing files):\n  {command}"
            )
        super().__init__(f"Weights missing in {weights_dir}:\n" + "\n".join(lines) + f"\n{advice}")
        self.missing = missing


def find_missing(weights_dir: Path, components: list[Component]) -> list[tuple[Component, list[str]]]:
    """Each component that is not complete in `weights_dir`, with the file patterns it lacks."""
    return [(c, files) for c in components if (files := c.missing_files(weights_dir))]


def check_weights(weights_dir: Path, variants: tuple[str, ...]) -> None:
    """Raise MissingWeights unless every component for `variants` is present."""
    missing = find_missing(weights_dir, required_components(variants))
    if missing:
        raise MissingWeights(Path(weights_dir), missing, variants=variants)


def download_patterns(component: Component) -> list[str]:
    """Hub file patterns for one component: its subfolder only (never the rest of the repository)."""
    if component.subfolder:
        return [f"{component.subfolder}/*"]
    return ["*.json", "*.safetensors"]


def download_components(weights_dir: Path, components: list[Component]) -> None:
    """Fetch components from the Hugging Face Hub into the hub layout under `weights_dir`.

    Resumable (the hub client continues partial files) and with progress bars on stderr. Raises
    MissingWeights listing what is still absent when offline (HF_HUB_OFFLINE=1) or when a download fails.
    """
    weights_dir = Path(weights_dir)
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise MissingWeights(
            weights_dir,
            find_missing(weights_dir, components),
            note="HF_HUB_OFFLINE is set, so nothing was downloaded: unset it to download them.",
        )
    from huggingface_hub import snapshot_download

    by_repo: dict[str, list[str]] = {}
    for component in components:
        by_repo.setdefault(component.repo, []).extend(download_patterns(component))
    try:
        for repo, patterns in by_repo.items():
            logger.info("downloading %s (%s) into %s", repo, ", ".join(patterns), weights_dir / repo)
            snapshot_download(repo_id=repo, allow_patterns=patterns, local_dir=weights_dir / repo)
    except Exception as error:  # any hub or network failure ends in the same clear report
        note = (
            f"The download stopped: {type(error).__name__}: {error}\nThe files already fetched are kept: once the "
            "network (or HF_TOKEN, for a gated repository) works, the same command fetches only the rest."
        )
        raise MissingWeights(weights_dir, find_missing(weights_dir, components), note=note) from error


def ensure_weights(weights_dir: Path, variants: tuple[str, ...], download: bool = True) -> None:
    """Make sure every component for `variants` is present, downloading only what is missing."""
    components = required_components(variants)
    missing = find_missing(weights_dir, components)
    if missing and download:
        download_components(weights_dir, [component for component, _ in missing])
        missing = find_missing(weights_dir, components)
    if missing:
        raise MissingWeights(Path(weights_dir), missing, variants=variants)


def prepare_weights(weights_dir: Path, variants: tuple[str, ...]) -> None:
    """Download what is missing for `variants`, then check each transformer checkpoint against its config."""
    ensure_weights(weights_dir, variants)
    for variant in variants:
        tensors = verify_transformer_checkpoint(transformer_component(variant).path(weights_dir))
        logger.info(f"{variant} transformer: {tensors} tensors match its config")


class CheckpointMismatch(ValueError):
    """A transformer checkpoint's tensors do not match the architecture its config describes."""


MAX_HEADER_BYTES = 100 * 2**20  # the safetensors format's own limit


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor names and shapes from a safetensors header, read without loading any tensor.

    Raises CheckpointMismatch saying what is wrong with a file that is not a whole safetensors file: too short,
    a header larger than the file or the format allows, a header that is not a JSON object of tensor entries,
    or data missing at the end (truncated).
    """
    size = path.stat().st_size
    if size < 8:
        raise CheckpointMismatch(f"{size} bytes, shorter than the 8-byte header length")
    with open(path, "rb") as handle:
        header_length = struct.unpack("<Q", handle.read(8))[0]
        if header_length > min(size - 8, MAX_HEADER_BYTES):
            raise CheckpointMismatch(f"its header length ({header_length} bytes) exceeds the file or the format")
        try:
            header = json.loads(handle.read(header_length))
        except (ValueError, RecursionError):
            raise CheckpointMismatch("its header is not valid JSON") from None
    if not isinstance(header, dict):
        raise CheckpointMismatch(f"its header is a JSON {type(header).__name__}, not an object of tensors")
    header.pop("__metadata__", None)
    for name, info in header.items():
        if not _tensor_entry(info):
            raise CheckpointMismatch(f"its header entry {name[:80]!r} is not a tensor (dtype, shape, data_offsets)")
    data_end = max((info["data_offsets"][1] for info in header.values()), default=0)
    if 8 + header_length + data_end > size:
        raise CheckpointMismatch(f"{size} bytes, the header promises {8 + header_length + data_end} (truncated)")
    return {name: info["shape"] for name, info in header.items()}


def _tensor_entry(info) -> bool:
    """A header entry: {"dtype": str, "shape": [int, ...], "data_offsets": [begin, end]}."""
    if not isinstance(info, dict):
        return False
    shape, offsets = info.get("shape"), info.get("data_offsets")
    return (
        isinstance(info.get("dtype"), str)
        and isinstance(shape, list)
        and all(isinstance(d, int) and d >= 0 for d in shape)
        and isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) and o >= 0 for o in offsets)
    )


def verify_transformer_checkpoint(folder: Path) -> int:
    """Check the checkpoint's keys and shapes against the model its config.json builds, before loading it.

    Reads only safetensors headers and builds the model on the `meta` device, so it costs milliseconds even
    for the 26 GB checkpoint. Returns the number of tensors; raises CheckpointMismatch naming the differences.
    """
    import torch
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    with torch.device("meta"):
        model = HunyuanVideoFramepackTransformer3DModel.from_config(config)
    expected = {name: list(t.shape) for name, t in model.state_dict().items()}
    actual: dict[str, list[int]] = {}
    for file in sorted(folder.glob("*.safetensors")):
        try:
            actual.update(safetensors_shapes(file))
        except CheckpointMismatch as error:
            raise CheckpointMismatch(f"{file}: {error}") from None
    problems = []
    if missing := sorted(set(expected) - set(actual)):
        problems.append(f"{len(missing)} missing (first: {', '.join(missing[:5])})")
    if unexpected := sorted(set(actual) - set(expected)):
        problems.append(f"{len(unexpected)} unexpected (first: {', '.join(unexpected[:5])})")
    if wrong := [n for n in expected if n in actual and actual[n] != expected[n]]:
        problems.append("wrong shapes: " + ", ".join(f"{n} {actual[n]} != {expected[n]}" for n in wrong[:5]))
    if problems:
        raise CheckpointMismatch(f"transformer checkpoint {folder} does not match its config: " + "; ".join(problems))
    return len(expected)
