"""The golden cases: requests run through the reference algorithm on the tiny weights, and their tolerances."""

from __future__ import annotations

import json

import torch

from benchmarks.measure import relative_l2

from .paths import GOLDEN, IMAGES


def golden_case_names() -> list[str]:
    return sorted(p.name for p in GOLDEN.iterdir() if (p / "case.json").is_file())


def load_golden_case(name: str) -> dict:
    case = json.loads((GOLDEN / name / "case.json").read_text())
    case["input"]["input_image"] = IMAGES / case["input"]["input_image"]
    return case


# docs/FIXTURES.md §4: what a correct float32 CPU implementation meets. Golden files come from one CPU;
# another x86 CPU differs in the last float32 bits, so golden comparisons use these, not exact equality.
MAX_RELATIVE_L2 = 1e-4
MAX_GREY_LEVELS = 1


def assert_matches_golden(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Every expected tensor is in `actual` with its shape and within the golden tolerances.

    uint8 tensors (frames) may differ by MAX_GREY_LEVELS; others by a relative L2 below MAX_RELATIVE_L2.
    """
    for name, expected_tensor in expected.items():
        actual_tensor = actual[name]
        assert actual_tensor.shape == expected_tensor.shape, name
        if expected_tensor.dtype == torch.uint8:
            worst = int((actual_tensor.int() - expected_tensor.int()).abs().max())
            assert worst <= MAX_GREY_LEVELS, f"{name}: {worst} grey levels"
        else:
            error = relative_l2(actual_tensor, expected_tensor)
            assert error < MAX_RELATIVE_L2, f"{name}: relative L2 {error:.3e}"
