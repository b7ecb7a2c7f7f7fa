"""Golden parity: every reference run in fixtures/golden reproduced through the local predict command, eager and
compiled."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoTransformerBlock
from safetensors.torch import load_file

from conftest import GOLDEN, assert_matches_golden, golden_case_names, load_golden_case, predict_args
from framepack import conditioning, planner
from framepack.progress import ProgressReporter
from framepack.video import read_mp4_frames


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


# "on": the blocks and the VAE's GroupNorms compiled with inductor, as high-VRAM mode runs them on a GPU.
@pytest.mark.parametrize("compile_mode", ["off", "on"])
@pytest.mark.parametrize("case_name", golden_case_names())
def test_golden_case(case_name, compile_mode, run_cli, tmp_path, block_stack_calls, tiny_models):
    case = load_golden_case(case_name)
    output, dump = tmp_path / "out.mp4", tmp_path / "dump.safetensors"
    result = run_cli(*predict_args(case["input"], output, "--dump-tensors", str(dump), "--compile", compile_mode))
    assert result.code == 0, result.stderr

    actual_tensors = load_file(dump)
    assert_matches_golden(actual_tensors, load_file(GOLDEN / case_name / "expected.safetensors"))

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
