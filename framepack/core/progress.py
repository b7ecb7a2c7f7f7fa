"""Progress of a generation: section i/N, step j/M, elapsed and estimated remaining time, and stage timings.

Each sampling step also writes a tqdm-style line over all steps of the generation
(` 40%|████      | 30/75 [00:12<00:18]`), the form Replicate's web UI and clients parse progress from.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def format_seconds(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_interval(seconds: float) -> str:
    """A duration as tqdm writes it: MM:SS, or H:MM:SS from an hour on."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def tqdm_bar(done: int, total: int, width: int = 10) -> str:
    r"""The start of a tqdm line, `' 40%|████      | 30/75'`: floored percent, a `width`-cell bar, done/total.

    Replicate's clients read progress from the last log line matching `^\s*(\d+)%\s*\|.+?\|\s*(\d+)/(\d+)`.
    Integer flooring shows 100% and a full bar only at the very end; a zero total counts as complete.
    """
    if total > 0:
        filled, percent = min(done, total) * width // total, min(done, total) * 100 // total
    else:
        filled, percent = width, 100
    return f"{percent:3d}%|{'█' * filled}{' ' * (width - filled)}| {done}/{total}"


logger = logging.getLogger(__name__)


class ProgressReporter:
    """Reports sampling progress and collects stage timings (seconds per stage name).

    The remaining-time estimate extrapolates the mean time per completed step over the steps left, so it
    settles after the first section (which also pays one-off costs such as compilation).
    """

    def __init__(
        self,
        num_sections: int,
        steps: int,
        write: Callable[[str], None] = logger.info,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.num_sections = num_sections
        self.steps = steps
        self.write = write
        self.clock = clock
        self.started = clock()
        self.sampling_started: float | None = None
        self.steps_done = 0
        self.section = 0
        self.timings: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage; repeated stages (one per section) add up."""
        start = self.clock()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + self.clock() - start

    def section_started(self, generation_index: int, description: str = "") -> None:
        self.section = generation_index
        if self.sampling_started is None:
            self.sampling_started = self.clock()
        suffix = f" ({description})" if description else ""
        self.write(f"section {generation_index + 1}/{self.num_sections}{suffix}")

    def step_done(self, step: int) -> None:
        """Count a finished sampling step (`step`: its index within the section) and write its progress lines."""
        self.steps_done += 1
        now = self.clock()
        sampling_elapsed = now - (self.sampling_started if self.sampling_started is not None else self.started)
        remaining_steps = self.num_sections * self.steps - self.steps_done
        remaining = sampling_elapsed / self.steps_done * remaining_steps
        elapsed = now - self.started
        # Two lines: callers watch for lines that start with "section i/N, step j/M", and Replicate only reads
        # progress from lines that start with the percentage.
        self.write(
            f"section {self.section + 1}/{self.num_sections}, step {step + 1}/{self.steps}, "
            f"elapsed {format_seconds(elapsed)}, remaining ~{format_seconds(remaining)}"
        )
        self.write(
            f"{tqdm_bar(self.steps_done, self.num_sections * self.steps)} "
            f"[{format_interval(elapsed)}<{format_interval(remaining)}]"
        )
