"""Progress lines: the section/step text and the tqdm-style line that Replicate's clients parse."""

from __future__ import annotations

import re

import pytest

from framepack.core.progress import ProgressReporter, format_interval, tqdm_bar

# Replicate's JavaScript client (parseProgressFromLogs) reads the last log line that matches this.
REPLICATE_PROGRESS = re.compile(r"^\s*(\d+)%\s*\|.+?\|\s*(\d+)/(\d+)")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _run(num_sections: int, steps: int, seconds_per_step: float, setup_seconds: float = 0.0):
    """Every line a reporter writes over a whole generation, and the tqdm lines among them."""
    clock, lines = FakeClock(), []
    progress = ProgressReporter(num_sections, steps, write=lines.append, clock=clock)
    clock.now += setup_seconds
    for section in range(num_sections):
        progress.section_started(section)
        for step in range(steps):
            clock.now += seconds_per_step
            progress.step_done(step)
    return lines, [line for line in lines if REPLICATE_PROGRESS.match(line)]


@pytest.mark.parametrize(
    ("done", "total", "expected"),
    [
        (0, 75, "  0%|          | 0/75"),
        (30, 75, " 40%|████      | 30/75"),
        (29, 100, " 29%|██        | 29/100"),  # floored without float error (0.29 * 100 < 29)
        (74, 75, " 98%|█████████ | 74/75"),
        (75, 75, "100%|██████████| 75/75"),
    ],
)
def test_tqdm_bar(done, total, expected):
    assert tqdm_bar(done, total) == expected
    percent, current, count = REPLICATE_PROGRESS.match(expected).groups()
    assert (int(percent), int(current), int(count)) == (100 * done // total, done, total)


def test_tqdm_bar_width_and_degenerate_total():
    assert tqdm_bar(1, 2, width=4) == " 50%|██  | 1/2"
    assert tqdm_bar(0, 0) == "100%|██████████| 0/0"


def test_format_interval():
    assert [format_interval(s) for s in (0, 12.4, 61, 3600, 3725)] == ["00:00", "00:12", "01:01", "1:00:00", "1:02:05"]


def test_one_tqdm_line_per_step_over_all_sections():
    lines, bars = _run(num_sections=3, steps=25, seconds_per_step=1.0)
    matches = [REPLICATE_PROGRESS.match(line).groups() for line in bars]
    assert [(int(c), int(t)) for _, c, t in matches] == [(done, 75) for done in range(1, 76)]
    assert [int(p) for p, _, _ in matches] == [100 * done // 75 for done in range(1, 76)]
    assert bars[0].startswith("  1%|          | 1/75 [")
    assert bars[29].startswith(" 40%|████      | 30/75 [")
    assert bars[-1].startswith("100%|██████████| 75/75 [")


def test_each_tqdm_line_follows_its_section_and_step_text():
    lines, _ = _run(num_sections=3, steps=25, seconds_per_step=1.0)
    step_lines = [i for i, line in enumerate(lines) if ", step " in line]
    assert len(step_lines) == 75
    for i in step_lines:
        assert REPLICATE_PROGRESS.match(lines[i + 1])
    assert lines[0] == "section 1/3"
    assert lines[1].startswith("section 1/3, step 1/25, elapsed")
    assert any(line.startswith("section 2/3, step 5/25, ") for line in lines)
    assert lines[-2].startswith("section 3/3, step 25/25, ")


def test_timing_with_an_injected_clock():
    # 10 s of loading before sampling, then 2 s a step: 2 sections of 3 steps.
    lines, bars = _run(num_sections=2, steps=3, seconds_per_step=2.0, setup_seconds=10.0)
    assert lines[1] == "section 1/2, step 1/3, elapsed 0:12, remaining ~0:10"
    assert bars[0] == " 16%|█         | 1/6 [00:12<00:10]"
    assert lines[-2] == "section 2/2, step 3/3, elapsed 0:22, remaining ~0:00"
    assert bars[-1] == "100%|██████████| 6/6 [00:22<00:00]"
