"""Creative controls as pure planning: section prompts, keyframes, camera movement, the section grid.

Sections are numbered in video order (0 = the start of the video). A setting cascades forward: a section
without its own value takes the nearest earlier section's. The "original" variant generates sections in
reverse video order; the plans here are per video section and the loop looks them up by
`SectionPlan.video_index`, so the rules read the same for both variants.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from .errors import InvalidInput
from .planner import LATENT_FRAMES_TO_PIXELS, VIDEO_FPS

T = TypeVar("T")
CAMERA_STEP_FRACTION = 0.2  # roll the latents once, after 20% of the steps (step 5 of 25)


def cascade(values: dict[int, T], num_sections: int, default: T) -> list[T]:
    """Per video section: its own value, else the nearest earlier section's, else `default`."""
    result, current = [], default
    for section in range(num_sections):
        current = values.get(section, current)
        result.append(current)
    return result


@dataclass(frozen=True)
class PromptPlan:
    """prompts[i] is the prompt of video section i; `ignored` lists 1-based line numbers past the last section."""

    prompts: list[str]
    ignored: list[int]


def plan_section_prompts(section_prompts: str, prompt: str, num_sections: int) -> PromptPlan:
    """Line i of `section_prompts` is section i's prompt; empty lines cascade; section 0 falls back to `prompt`."""
    lines = section_prompts.splitlines() if section_prompts.strip() else []
    own = {i: line.strip() for i, line in enumerate(lines) if line.strip() and i < num_sections}
    ignored = [i + 1 for i, line in enumerate(lines) if line.strip() and i >= num_sections]
    return PromptPlan(cascade(own, num_sections, prompt), ignored)


def parse_keyframe_indices(text: str, num_images: int, num_sections: int) -> list[int]:
    """Section number of each keyframe image: the comma-separated list, or 0, 1, 2, ... when empty."""
    name = "section_image_indices"
    if not text.strip():
        indices = list(range(num_images))
    else:
        try:
            indices = [int(part) for part in text.split(",")]
        except ValueError:
            raise InvalidInput(name, f"expected comma-separated section numbers, got {text!r}") from None
        if len(indices) != num_images:
            raise InvalidInput(name, f"{len(indices)} indices for {num_images} section_images; give one per image")
    for index in indices:
        if not 0 <= index < num_sections:
            raise InvalidInput(
                name, f"section {index} is out of range; this video has sections 0 to {num_sections - 1}"
            )
    if len(set(indices)) != len(indices):
        raise InvalidInput(name, f"each section can have one keyframe, got {indices}")
    return indices


def plan_keyframes(indices: list[int], num_sections: int) -> list[int | None]:
    """Per video section: which keyframe image (position in section_images) fills its start slot, or None."""
    return cascade({section: image for image, section in enumerate(indices)}, num_sections, None)


def camera_step(steps: int) -> int:
    """The sampling step before which the latents are rolled: 20% of the steps, at least the second."""
    return max(1, round(CAMERA_STEP_FRACTION * steps))


def camera_shifts(num_frames: int, latent_width: int, amount: float) -> list[int]:
    """Horizontal roll of each latent frame j: round(sin(2 pi j / T) * latent width * amount)."""
    return [round(math.sin(2 * math.pi * j / num_frames) * latent_width * amount) for j in range(num_frames)]


def section_grid(num_sections: int, latent_window_size: int) -> list[tuple[float, float]]:
    """(start, end) seconds of each video section in the final video (section 0 also holds the start frame)."""
    frames = latent_window_size * LATENT_FRAMES_TO_PIXELS
    return [
        (0.0 if i == 0 else (1 + i * frames) / VIDEO_FPS, (1 + (i + 1) * frames) / VIDEO_FPS)
        for i in range(num_sections)
    ]


def describe_grid(
    grid: Sequence[tuple[float, float]], prompts: Sequence[str], keyframes: Sequence[int | None]
) -> list[str]:
    """One log line per video section."""
    lines = []
    for i, ((start, end), prompt, keyframe) in enumerate(zip(grid, prompts, keyframes)):
        image = "start image" if keyframe is None else f"keyframe {keyframe}"
        lines.append(f"section {i} covers {start:.2f} to {end:.2f} s: {image}, prompt {prompt!r}")
    return lines
