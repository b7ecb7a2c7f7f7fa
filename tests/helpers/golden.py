"""The golden cases: requests run through the reference algorithm on the tiny weights, and their tolerances."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from benchmarks.measure import read_mp4_frames, relative_l2
from framepack.core import planner
from framepack.core.magcache import MagCacheSettings, skipped_calls
from framepack.runtime import conditioning

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


def check_golden_case(case_name: str, tensors: dict, output: Path, block_stack_runs: list[int], tiny_models) -> None:
    """The recorded `tensors` and the MP4 at `output` are the golden case's, as are its section plan and the
    block stack's runs per section."""
    case = load_golden_case(case_name)
    assert_matches_golden(tensors, load_file(GOLDEN / case_name / "expected.safetensors"))
    expected, request = case["expected"], case["input"]
    num_sections = planner.section_count(request["total_video_length_seconds"], request["latent_window_size"])
    assert num_sections == expected["num_sections"]
    if expected["latent_paddings"] is not None:
        assert planner.latent_paddings(num_sections) == expected["latent_paddings"]
    assert tensors["video_latents"].shape[2] == expected["num_latent_frames"]
    assert conditioning.template_crop_start(tiny_models.tokenizer) == expected["prompt_template_crop_start"]
    assert block_stack_runs == expected["transformer_block_stack_calls_per_section"]
    if "magcache_skipped_calls_per_section" in expected:  # the reference's skips, from our schedule alone
        steps, cfg = request["steps"], request["cfg_scale"]
        settings = MagCacheSettings(
            request["magcache_threshold"], request["magcache_max_skips"], request["magcache_retention_ratio"]
        )
        calls = steps * (1 if cfg == 1.0 else 2)
        skipped = skipped_calls(request["model_variant"], steps, settings, calls)
        assert [skipped] * num_sections == expected["magcache_skipped_calls_per_section"]
    frames, fps = read_mp4_frames(output)
    assert frames.shape[0] == expected["num_frames"] == tensors["frames_uint8"].shape[0]
    assert fps == 30
