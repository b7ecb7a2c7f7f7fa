"""Golden parity: every reference run in fixtures/golden reproduced through the local predict command."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoTransformerBlock
from safetensors.torch import load_file

from conftest import GOLDEN, golden_case_names, load_golden_case, predict_args, relative_l2
from framepack import conditioning, planner
from framepack.progress import ProgressReporter
from framepack.video import read_mp4_frames

# fixtures/README.md: what a correct float32 CPU implementation meets.
MAX_RELATIVE_L2 = 1e-4
MAX_GREY_LEVELS = 1


@pytest.fixture
def block_stack_calls(monkeypatch):
    """Real executions of the dual-block stack per section, counted by a global module forward hook.

    Every stack run calls each dual block once, so the count of dual-block calls over a section divided by
    the number of dual blocks is the number of stack runs (TeaCache skips call none).
    """
    block_calls: list[int] = []
    original_section_started = ProgressReporter.section_started

    def section_started(self, generation_index, description=""):
        block_calls.append(0)
        return original_section_started(self, generation_index, description)

    def on_forward(module, _args, _output):
        if isinstance(module, HunyuanVideoTransformerBlock):
            block_calls[-1] += 1

    monkeypatch.setattr(ProgressReporter, "section_started", section_started)
    handle = torch.nn.modules.module.register_module_forward_hook(on_forward)
    yield block_calls
    handle.remove()


@pytest.mark.parametrize("case_name", golden_case_names())
def test_golden_case(case_name, run_cli, tmp_path, block_stack_calls, tiny_models):
    case = load_golden_case(case_name)
    output, dump = tmp_path / "out.mp4", tmp_path / "dump.safetensors"
    result = run_cli(*predict_args(case["input"], output, "--dump-tensors", str(dump)))
    assert result.code == 0, result.stderr

    expected_tensors = load_file(GOLDEN / case_name / "expected.safetensors")
    actual_tensors = load_file(dump)
    for name, expected in expected_tensors.items():
        actual = actual_tensors[name]
        assert actual.shape == expected.shape, name
        if expected.dtype == torch.uint8:
            worst = int((actual.int() - expected.int()).abs().max())
            assert worst <= MAX_GREY_LEVELS, f"{name}: {worst} grey levels"
        else:
            error = relative_l2(actual, expected)
            assert error < MAX_RELATIVE_L2, f"{name}: relative L2 {error:.3e}"

    expected = case["expected"]
    request = case["input"]
    lws = request["latent_window_size"]
    num_sections = planner.section_count(request["total_video_length_seconds"], lws)
    assert num_sections == expected["num_sections"]
    if expected["latent_paddings"] is not None:
        assert planner.latent_paddings(num_sections) == expected["latent_paddings"]
    assert actual_tensors["video_latents"].shape[2] == expected["num_latent_frames"]
    assert conditioning.template_crop_start(tiny_models.tokenizer) == expected["prompt_template_crop_start"]
    dual_blocks = tiny_models.transformers[request["model_variant"]].config.num_layers
    assert [calls / dual_blocks for calls in block_stack_calls] == expected["transformer_block_stack_calls_per_section"]

    frames, fps = read_mp4_frames(output)
    assert frames.shape[0] == expected["num_frames"] == actual_tensors["frames_uint8"].shape[0]
    assert fps == 30
