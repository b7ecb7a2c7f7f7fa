"""Golden parity: every reference run in fixtures/golden reproduced through the local predict command (eager) and
the Cog service (compiled)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.golden import assert_matches_golden, golden_case_names, load_golden_case
from helpers.paths import GOLDEN
from helpers.requests import predict_args
from safetensors.torch import load_file

from benchmarks.measure import read_mp4_frames
from framepack.core import planner
from framepack.core.progress import ProgressReporter
from framepack.runtime import conditioning
from framepack.runtime.pipeline import TensorRecorder
from framepack.runtime.transformer import PackedTransformer
from framepack.serving import engine


@pytest.fixture
def block_stack_runs(monkeypatch):
    """Real runs of the transformer's block stack per section (TeaCache skips run none).

    Counted where the stack is entered, in eager Python, so the count is the same when the blocks themselves
    are compiled (a global module hook would be traced into the compiled blocks, and its counter guarded on).
    The compiled engine's start-up warm-up generation is not part of the case, so its runs are forgotten.
    """
    runs: list[int] = []
    original_warm_up = engine.Engine.warm_up

    def warm_up(self, *args):
        original_warm_up(self, *args)
        runs.clear()

    original_section_started = ProgressReporter.section_started
    original_run_blocks = PackedTransformer._run_blocks

    def section_started(self, generation_index, description=""):
        runs.append(0)
        return original_section_started(self, generation_index, description)

    def run_blocks(self, *args):
        runs[-1] += 1
        return original_run_blocks(self, *args)

    monkeypatch.setattr(ProgressReporter, "section_started", section_started)
    monkeypatch.setattr(PackedTransformer, "_run_blocks", run_blocks)
    monkeypatch.setattr(engine.Engine, "warm_up", warm_up)
    return runs


@pytest.mark.parametrize("case_name", golden_case_names())
def test_golden_case(case_name, run_cli, tmp_path, block_stack_runs, tiny_models):
    """Through the local command, eager."""
    case = load_golden_case(case_name)
    output, dump = tmp_path / "out.mp4", tmp_path / "dump.safetensors"
    result = run_cli(*predict_args(case["input"], output, "--dump-tensors", str(dump), "--compile", "off"))
    assert result.code == 0, result.stderr
    check_golden_case(case_name, load_file(dump), output, block_stack_runs, tiny_models)


# The blocks and the VAE's GroupNorms compiled with inductor, as high-VRAM mode runs them on a GPU: one compiled
# service (shared with test_compiled.py) serves every case, as it serves requests of every size.
@pytest.mark.e2e
@pytest.mark.xdist_group("compiled")
@pytest.mark.parametrize("case_name", golden_case_names())
def test_golden_case_compiled(case_name, services, block_stack_runs, tiny_models):
    """Through the Cog service, compiled."""
    recorder = TensorRecorder(True)
    output = services["on"].predict(load_golden_case(case_name)["input"], record=recorder)
    check_golden_case(case_name, recorder.tensors, output, block_stack_runs, tiny_models)


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
    frames, fps = read_mp4_frames(output)
    assert frames.shape[0] == expected["num_frames"] == tensors["frames_uint8"].shape[0]
    assert fps == 30
