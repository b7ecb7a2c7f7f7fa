"""The tiny requests the tests run, and the local command's arguments for them.

`tiny_request` is the one definition: every test's request starts from it and overrides what it is about.
"""

from __future__ import annotations

from pathlib import Path

from .paths import START_IMAGE, TINY_WEIGHTS

# (width, height) of the tiny requests. 48x32: the VAE decode is most of a tiny generation's time on the CPU, and
# costs 7 times less than at 96x64.
TINY_WIDTH, TINY_HEIGHT = 48, 32


def tiny_request(**overrides) -> dict:
    """A request small enough for the tiny weights on the CPU: windows of 3 latents at 48x32, 2 steps, no step cache,
    4 sections; `overrides` replace or add inputs (API names)."""
    return {
        "input_image": START_IMAGE,
        "prompt": "a cat",
        "seed": 7,
        "total_video_length_seconds": 1.6,
        "latent_window_size": 3,
        "steps": 2,
        "width": TINY_WIDTH,
        "height": TINY_HEIGHT,
        "step_cache": "none",
        **overrides,
    }


# The local command's request in the CLI tests: 3 sections, with TeaCache on (the API's default).
CLI_REQUEST = tiny_request(
    prompt="A cat walks along the beach at sunset.", seed=1, total_video_length_seconds=1.2, step_cache="teacache"
)


def input_args(inputs: dict[str, object]) -> list[str]:
    """-i name=value arguments; booleans as true/false, files as @path, lists of files comma-separated."""
    args = []
    for name, value in inputs.items():
        if isinstance(value, bool):
            value = str(value).lower()
        elif isinstance(value, Path):
            value = f"@{value}"
        elif isinstance(value, (list, tuple)):
            value = ",".join(f"@{item}" if isinstance(item, Path) else str(item) for item in value)
        args += ["-i", f"{name}={value}"]
    return args


def predict_args(inputs: dict[str, object], output: Path, *extra: str) -> list[str]:
    return [
        "predict",
        *input_args(inputs),
        "--weights",
        str(TINY_WEIGHTS),
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "-o",
        str(output),
        *extra,
    ]
