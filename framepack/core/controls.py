"""Creative controls as pure planning: section prompts (by line or by time, with blending), keyframes, camera
movement, the section grid.

Sections are numbered in video order (0 = the start of the video). A setting cascades forward: a section
without its own value takes the nearest earlier section's. The "original" variant generates sections in
reverse video order; the plans here are per video section and the loop looks them up by
`SectionPlan.video_index`, so the rules read the same for both variants.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from ..errors import InvalidInput
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
    """prompts[i] is the prompt of video section i; `ignored` lists 1-based line numbers that reach no section;
    `notes` are the log lines saying where timestamps snapped and what was ignored."""

    prompts: list[str]
    ignored: list[int]
    notes: list[str]


@dataclass(frozen=True)
class TimedPrompt:
    """A `section_prompts` line with a timestamp: `prompt` from `start` seconds (to `end`, when given)."""

    line: int  # 1-based
    start: float
    end: float | None
    prompt: str

    def label(self) -> str:
        return f"[{self.start:g}s]" if self.end is None else f"[{self.start:g}s-{self.end:g}s]"


# FP-Studio's timestamps: `[2s] text` or `[2s-4s] text`, and its inline form `[2s: text]`, `[2s-4s: text]`,
# several of which may share one line (`[1s: a] [3s: b]`).
_NUMBER = r"\d+(?:\.\d+)?"
_STAMP = rf"\[\s*(?P<start>{_NUMBER})\s*s\s*(?:-\s*(?P<end>{_NUMBER})\s*s\s*)?"
_TIMESTAMP = re.compile(_STAMP + r"(?::(?P<inner>[^\]]*))?\](?P<rest>.*)")
_INLINE = re.compile(_STAMP + r":(?P<inner>[^\]]*)\]")
_INLINE_LINE = re.compile(rf"(?:\s*\[\s*{_NUMBER}\s*s\s*(?:-\s*{_NUMBER}\s*s\s*)?:[^\]]*\])+\s*")


def parse_timed_prompts(section_prompts: str) -> list[TimedPrompt] | None:
    """The timestamped lines of `section_prompts`, or None when no line has a timestamp (line i is section i).

    Raises InvalidInput when timestamped and plain lines are mixed, a range ends before it starts, or a
    timestamp has no prompt.
    """
    timed, plain = [], []
    for number, line in enumerate(section_prompts.splitlines(), start=1):
        if not line.strip():
            continue
        if _INLINE_LINE.fullmatch(line) and len(_INLINE.findall(line)) > 1:  # `[1s: a] [3s: b]` on one line
            timed += [_timed_entry(number, match) for match in _INLINE.finditer(line)]
            continue
        match = _TIMESTAMP.fullmatch(line.strip())
        if match is None:
            plain.append(number)
            continue
        if match["inner"] is not None and match["rest"].strip():
            label = TimedPrompt(number, float(match["start"]), None, "").label()
            raise InvalidInput(
                "section_prompts",
                f"line {number}: text both inside and after {label}; write '[2s: text]' or '[2s] text'",
            )
        timed.append(_timed_entry(number, match))
    if timed and plain:
        raise InvalidInput(
            "section_prompts",
            f"line {timed[0].line} has a timestamp ({timed[0].label()}) and line {plain[0]} has none; "
            "give every line a timestamp, or none (then line i is section i)",
        )
    return timed or None


def _timed_entry(number: int, match: re.Match) -> TimedPrompt:
    """A timestamp `match` of line `number` as a TimedPrompt; raises InvalidInput for a reversed range or no text."""
    start, end = float(match["start"]), float(match["end"]) if match["end"] else None
    inner = match["inner"]
    text = (inner if inner is not None else match["rest"]).strip()
    entry = TimedPrompt(number, start, end, text)
    if end is not None and end <= start:
        raise InvalidInput("section_prompts", f"line {number}: {entry.label()} ends before it starts")
    if not text:
        raise InvalidInput("section_prompts", f"line {number}: {entry.label()} has no prompt after it")
    return entry


def snap_to_grid(seconds: float, grid: Sequence[tuple[float, float]]) -> int:
    """The section boundary nearest to `seconds`: i is where section i starts, len(grid) the video's end.

    A time halfway between two boundaries goes to the earlier one.
    """
    boundaries = [start for start, _ in grid] + [grid[-1][1]]
    return min(range(len(boundaries)), key=lambda i: (abs(boundaries[i] - seconds), i))


def plan_section_prompts(section_prompts: str, prompt: str, grid: Sequence[tuple[float, float]]) -> PromptPlan:
    """Each video section's prompt, from `section_prompts` over the section `grid` (`section_grid`).

    Plain lines: line i is section i's prompt; empty lines cascade; section 0 falls back to `prompt`.
    Timestamped lines: a prompt applies from the section boundary nearest its start time to the boundary
    nearest its end time (at least one section), or to the end of the video; a later start overrides an
    earlier one, and sections no line covers take `prompt`.
    """
    num_sections = len(grid)
    timed = parse_timed_prompts(section_prompts)
    if timed is not None:
        return _plan_timed_prompts(timed, prompt, grid)
    lines = section_prompts.splitlines() if section_prompts.strip() else []
    own = {i: line.strip() for i, line in enumerate(lines) if line.strip() and i < num_sections}
    ignored = [i + 1 for i, line in enumerate(lines) if line.strip() and i >= num_sections]
    notes = [f"section_prompts lines {ignored} are past the last section ({num_sections - 1}); ignored"]
    return PromptPlan(cascade(own, num_sections, prompt), ignored, notes if ignored else [])


def _plan_timed_prompts(timed: list[TimedPrompt], prompt: str, grid: Sequence[tuple[float, float]]) -> PromptPlan:
    num_sections = len(grid)
    boundaries = [start for start, _ in grid] + [grid[-1][1]]
    prompts, ignored, notes = [prompt] * num_sections, [], []
    for entry in sorted(timed, key=lambda entry: entry.start):
        first = snap_to_grid(entry.start, grid)
        if first == num_sections:
            ignored.append(entry.line)
            notes.append(
                f"section_prompts line {entry.line} {entry.label()} starts at the end of the video "
                f"({boundaries[-1]:.2f} s); ignored"
            )
            continue
        stop = num_sections if entry.end is None else max(snap_to_grid(entry.end, grid), first + 1)
        prompts[first:stop] = [entry.prompt] * (stop - first)
        notes.append(
            f"section_prompts line {entry.line} {entry.label()} snapped to {boundaries[first]:.2f} to "
            f"{boundaries[stop]:.2f} s: sections {first} to {stop - 1}"
        )
    return PromptPlan(prompts, ignored, notes)


@dataclass(frozen=True)
class PromptBlend:
    """One video section's text conditioning: the embeddings of `source` interpolated linearly towards those of
    `target`, `weight` of the way (1.0: `target` alone)."""

    source: str
    target: str
    weight: float

    @property
    def blended(self) -> bool:
        return self.weight != 1.0


def plan_prompt_blends(prompts: Sequence[str], blend_sections: int) -> list[PromptBlend]:
    """Per video section: after a prompt change, `blend_sections` sections move from the old prompt to the new.

    The k-th section from the change (k = 1 .. blend_sections) has weight k / (blend_sections + 1); the next
    one is the new prompt alone. Raises InvalidInput for a change within another's blend: the embeddings would
    jump there instead of moving linearly.
    """
    blends, change = [], None
    for index, target in enumerate(prompts):
        if index and target != prompts[index - 1]:
            if change is not None and index - change < blend_sections:
                raise InvalidInput(
                    "prompt_blend_sections",
                    f"the prompt changes at video sections {change} and {index}, closer than the "
                    f"{blend_sections} sections a blend takes; lower prompt_blend_sections or space the prompts",
                )
            change, source = index, prompts[index - 1]
        step = index - change + 1 if change is not None else blend_sections + 1
        if step <= blend_sections:
            blends.append(PromptBlend(source, target, step / (blend_sections + 1)))
        else:
            blends.append(PromptBlend(target, target, 1.0))
    return blends


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


def section_grid(num_sections: int, latent_window_size: int, continues: bool = False) -> list[tuple[float, float]]:
    """(start, end) seconds of each video section in the final video. Section 0 also holds the start frame,
    unless the video `continues` an input video (whose last frame that is): then times count from the first
    new frame."""
    frames = latent_window_size * LATENT_FRAMES_TO_PIXELS
    lead = 0 if continues else 1
    return [
        (0.0 if i == 0 else (lead + i * frames) / VIDEO_FPS, (lead + (i + 1) * frames) / VIDEO_FPS)
        for i in range(num_sections)
    ]


@dataclass(frozen=True)
class SectionSchedule:
    """What each video section (0 = the start of the video) gets, planned once when a request is validated.

    grid: (start, end) seconds of each section; prompts: its prompt; blends: its text conditioning (unblended
    with prompt_blend_sections 0); keyframes: which section_images entry fills its start slot, or None for the
    start image; notes: log lines saying where timestamps snapped and which lines were ignored.
    """

    grid: tuple[tuple[float, float], ...]
    prompts: tuple[str, ...]
    blends: tuple[PromptBlend, ...]
    keyframes: tuple[int | None, ...]
    notes: tuple[str, ...] = ()

    def describe(self) -> list[str]:
        """One log line per video section: its span, image, prompt and blend."""
        lines = []
        for i, ((start, end), prompt, keyframe, blend) in enumerate(
            zip(self.grid, self.prompts, self.keyframes, self.blends)
        ):
            image = "start image" if keyframe is None else f"keyframe {keyframe}"
            line = f"section {i} covers {start:.2f} to {end:.2f} s: {image}, prompt {prompt!r}"
            if blend.blended:
                line += f", blended {blend.weight:.2f} of the way from {blend.source!r}"
            lines.append(line)
        return lines


def plan_schedule(
    num_sections: int,
    latent_window_size: int,
    prompt: str,
    section_prompts: str = "",
    prompt_blend_sections: int = 0,
    keyframe_indices: str = "",
    keyframe_count: int = 0,
    continues: bool = False,
) -> SectionSchedule:
    """The request's `SectionSchedule` (arguments as the API inputs of the same names; `keyframe_count`: how many
    section_images there are; `continues`: the video continues an input video). Raises InvalidInput naming the
    input that cannot be planned."""
    grid = section_grid(num_sections, latent_window_size, continues)
    indices = parse_keyframe_indices(keyframe_indices, keyframe_count, num_sections)
    prompt_plan = plan_section_prompts(section_prompts, prompt, grid)
    return SectionSchedule(
        grid=tuple(grid),
        prompts=tuple(prompt_plan.prompts),
        blends=tuple(plan_prompt_blends(prompt_plan.prompts, prompt_blend_sections)),
        keyframes=tuple(plan_keyframes(indices, num_sections)),
        notes=tuple(prompt_plan.notes),
    )
