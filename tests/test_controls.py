"""Creative controls: section prompts, keyframes, end frame, camera movement (planning and generation)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from helpers.paths import END_IMAGE, IMAGES
from helpers.requests import CLI_REQUEST, TINY_HEIGHT, TINY_WIDTH, predict_args, tiny_request
from safetensors import safe_open
from transformers import LlamaModel

from framepack.core import controls
from framepack.core.request import build_request
from framepack.errors import InvalidInput
from framepack.runtime import conditioning
from framepack.runtime.pipeline import GenerationOptions, TensorRecorder, generate

SMALL_IMAGE = IMAGES / "start_90x60.png"
# 4 sections of 3 latents at 48x32, 2 steps: fast on the tiny weights.
BASE = tiny_request(prompt="base prompt", seed=5)


def run(tiny_models, **overrides):
    recorder = TensorRecorder(True)
    result = generate(build_request({**BASE, **overrides}), tiny_models, options=GenerationOptions(record=recorder))
    return result, recorder.tensors


def test_cascade_and_prompt_plan():
    assert controls.cascade({1: "b", 3: "d"}, 5, "a") == ["a", "b", "b", "d", "d"]
    plan = controls.plan_section_prompts("p0\n\np2\n\n\nextra", "base", controls.section_grid(4, 3))
    assert plan.prompts == ["p0", "p0", "p2", "p2"] and plan.ignored == [6]
    assert plan.notes == ["section_prompts lines [6] are past the last section (3); ignored"]
    three = controls.section_grid(3, 3)
    assert controls.plan_section_prompts("", "base", three).prompts == ["base"] * 3
    assert controls.plan_section_prompts("\nsecond", "base", three).prompts == ["base", "second", "second"]


def test_timestamped_lines_are_parsed_in_both_forms_and_checked():
    timed = controls.parse_timed_prompts("[2s] a cat\n\n[2.5s - 4s] a dog runs\n[6s: a bird]\n[1s-3s:a fish]")
    assert [(t.line, t.start, t.end, t.prompt) for t in timed] == [
        (1, 2.0, None, "a cat"),
        (3, 2.5, 4.0, "a dog runs"),
        (4, 6.0, None, "a bird"),
        (5, 1.0, 3.0, "a fish"),
    ]
    assert controls.parse_timed_prompts("a cat\n[cinematic] a dog\n[2x] a bird") is None  # not timestamps
    assert controls.parse_timed_prompts("") is None
    for text, message in (
        ("[0s] a cat\na dog", "line 1 has a timestamp ([0s]) and line 2 has none"),
        ("[4s-2s] a cat", "line 1: [4s-2s] ends before it starts"),
        ("[1s] a cat\n[3s]", "line 2: [3s] has no prompt after it"),
    ):
        with pytest.raises(InvalidInput, match=re.escape(f"'section_prompts': {message}")):
            controls.parse_timed_prompts(text)


# Four sections of 3 latents: boundaries at 0, 13/30, 25/30, 37/30 and 49/30 s (0, 0.43, 0.83, 1.23, 1.63).
FOUR = controls.section_grid(4, 3)


@pytest.mark.parametrize(
    ("seconds", "boundary"), [(0, 0), (0.2, 0), (0.3, 1), (0.63, 1), (0.64, 2), (1.0, 2), (1.5, 4), (9, 4)]
)
def test_times_snap_to_the_nearest_section_boundary(seconds, boundary):
    assert controls.snap_to_grid(seconds, FOUR) == boundary


def test_timestamped_prompts_cover_their_sections_and_later_starts_override():
    plan = controls.plan_section_prompts("[0.5s] b\n[0s-0.8s] a\n[1.3s] c", "base", FOUR)
    assert plan.prompts == ["a", "b", "b", "c"]  # b (from 0.43 s on) overrides a, c (from 1.23 s) overrides b
    plan = controls.plan_section_prompts("[0s-0.8s] a\n[1.3s] c", "base", FOUR)
    assert plan.prompts == ["a", "a", "base", "c"]  # no line covers 0.83 to 1.23 s
    plan = controls.plan_section_prompts("[0s] a\n[0.4s-0.5s] b\n[1.7s] late", "base", FOUR)
    assert plan.prompts == ["a", "b", "a", "a"]  # a range as short as nothing still takes one section
    assert plan.ignored == [3]
    assert plan.notes == [
        "section_prompts line 1 [0s] snapped to 0.00 to 1.63 s: sections 0 to 3",
        "section_prompts line 2 [0.4s-0.5s] snapped to 0.43 to 0.83 s: sections 1 to 1",
        "section_prompts line 3 [1.7s] starts at the end of the video (1.63 s); ignored",
    ]


def test_blends_follow_each_prompt_change_for_the_sections_asked():
    blends = controls.plan_prompt_blends(["a", "a", "b", "b", "b", "c"], 2)
    assert [(b.source, b.target, b.weight) for b in blends] == [
        ("a", "a", 1.0),
        ("a", "a", 1.0),
        ("a", "b", 1 / 3),
        ("a", "b", 2 / 3),
        ("b", "b", 1.0),
        ("b", "c", 1 / 3),
    ]
    back_to_back = controls.plan_prompt_blends(["a", "b", "b", "c"], 2)  # c starts once b's blend is done
    assert [(b.source, b.target, b.weight) for b in back_to_back][1:] == [
        ("a", "b", 1 / 3),
        ("a", "b", 2 / 3),
        ("b", "c", 1 / 3),
    ]
    assert not any(b.blended for b in controls.plan_prompt_blends(["a", "b", "a"], 0))


def test_a_prompt_change_inside_another_blend_is_refused():
    # a -> b at section 1 blends over sections 1 and 2; c at section 2 would make the embeddings jump.
    with pytest.raises(InvalidInput, match="changes at video sections 1 and 2, closer than the 2 sections"):
        controls.plan_prompt_blends(["a", "b", "c", "c"], 2)


def test_inline_timestamp_text_and_trailing_text_are_refused():
    with pytest.raises(InvalidInput, match=r"line 1: text both inside and after \[2s\]"):
        controls.parse_timed_prompts("[2s: a cat] a dog runs")


def test_fp_studios_one_line_form_is_the_same_as_one_timestamp_a_line():
    grid = controls.section_grid(6, 3)
    one_line = controls.plan_section_prompts("[0s: a calm sea] [1s-2s: a storm] [2s: a rainbow]", "base", grid)
    lines = controls.plan_section_prompts("[0s] a calm sea\n[1s-2s] a storm\n[2s] a rainbow", "base", grid)
    assert (one_line.prompts, one_line.ignored) == (lines.prompts, lines.ignored)  # the notes name line 1 each time
    assert one_line.prompts[0] == "a calm sea" and "a rainbow" in one_line.prompts
    # Its entries are checked as lines are, and named by their line.
    with pytest.raises(InvalidInput, match=r"line 2: \[3s-1s\] ends before it starts"):
        controls.parse_timed_prompts("[0s] a\n[1s: b] [3s-1s: c]")


def test_keyframe_plan_and_indices():
    assert controls.parse_keyframe_indices("", 2, 4) == [0, 1]
    assert controls.parse_keyframe_indices("1, 3", 2, 4) == [1, 3]
    assert controls.plan_keyframes([1, 3], 4) == [None, 0, 0, 1]
    with pytest.raises(InvalidInput, match="section 4 is out of range; this video has sections 0 to 3"):
        controls.parse_keyframe_indices("1,4", 2, 4)
    with pytest.raises(InvalidInput, match="3 indices for 2 section_images"):
        controls.parse_keyframe_indices("0,1,2", 2, 4)


def test_camera_shifts_and_grid():
    assert controls.camera_step(25) == 5 and controls.camera_step(2) == 1
    assert controls.camera_shifts(4, 12, 0.5) == [0, 6, 0, -6]
    grid = controls.section_grid(2, 9)
    assert grid == [(0.0, 37 / 30), (37 / 30, 73 / 30)]


@pytest.mark.parametrize(("variant", "generation_order"), [("original", [3, 2, 1, 0]), ("f1", [0, 1, 2, 3])])
def test_section_prompts_follow_video_order(tiny_models, variant, generation_order):
    calls = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, out: calls.append(1) if isinstance(module, LlamaModel) else None
    )
    try:
        result, tensors = run(tiny_models, model_variant=variant, section_prompts="first\n\nthird")
    finally:
        handle.remove()
    by_video = {"first": [0, 1], "third": [2, 3]}
    assert [step["video_index"] for step in result.plan] == generation_order
    for step in result.plan:
        expected = next(p for p, sections in by_video.items() if step["video_index"] in sections)
        assert step["prompt"] == expected
    assert len(calls) == 3  # "base prompt", "first" and "third", each encoded once
    baseline, _ = run(tiny_models, model_variant=variant)
    assert not torch.equal(result.video_latents, baseline.video_latents)


@pytest.mark.parametrize("variant", ["original", "f1"])
def test_keyframes_fill_the_start_slot_of_their_sections(tiny_models, variant):
    result, tensors = run(
        tiny_models, model_variant=variant, section_images=[END_IMAGE, SMALL_IMAGE], section_image_indices="1,3"
    )
    keyframe_latents = [
        conditioning.vae_encode_mean(
            conditioning.resize_and_center_crop(conditioning.load_rgb_image(path), TINY_WIDTH, TINY_HEIGHT),
            tiny_models.vae,
        )
        for path in (END_IMAGE, SMALL_IMAGE)
    ]
    expected_slot = {0: tensors["start_latent"], 1: keyframe_latents[0], 2: keyframe_latents[0], 3: keyframe_latents[1]}
    for step in result.plan:
        slot = tensors[f"section_{step['generation_index']}_clean_latents"][:, :, :1]
        assert torch.equal(slot, expected_slot[step["video_index"]]), step
        assert step["keyframe"] == {0: None, 1: 0, 2: 0, 3: 1}[step["video_index"]]
    # The video still begins with the input image.
    assert torch.equal(result.video_latents[:, :, :1], tensors["start_latent"])


def test_end_frame_reaches_only_the_first_generated_sections_1x_slot(tiny_models):
    baseline, base_tensors = run(tiny_models)
    result, tensors = run(tiny_models, end_image=END_IMAGE, end_image_strength=0.7)
    end_latent = conditioning.vae_encode_mean(
        conditioning.resize_and_center_crop(conditioning.load_rgb_image(END_IMAGE), TINY_WIDTH, TINY_HEIGHT),
        tiny_models.vae,
    )
    assert torch.allclose(tensors["section_0_clean_latents"][:, :, 1:], end_latent * 0.7)
    for g in (1, 2, 3):  # later sections read the generated history, as without an end frame
        generated = tensors[f"section_{g - 1}_latents"][:, :, :1]
        assert torch.equal(tensors[f"section_{g}_clean_latents"][:, :, 1:], generated)
    assert not torch.equal(result.video_latents, baseline.video_latents)

    zero, zero_tensors = run(tiny_models, end_image=END_IMAGE, end_image_strength=0.0)
    assert torch.equal(zero.video_latents, baseline.video_latents)
    assert torch.equal(zero_tensors["frames_uint8"], base_tensors["frames_uint8"])


def test_camera_movement_changes_output_deterministically(tiny_models):
    baseline, _ = run(tiny_models, steps=5)
    still, _ = run(tiny_models, steps=5, camera_movement=0.0)
    moved, _ = run(tiny_models, steps=5, camera_movement=0.3)
    again, _ = run(tiny_models, steps=5, camera_movement=0.3)
    assert torch.equal(still.video_latents, baseline.video_latents)
    assert not torch.equal(moved.video_latents, baseline.video_latents)
    assert torch.equal(moved.video_latents, again.video_latents)


def test_camera_zero_keeps_a_golden_case(run_cli, tmp_path):
    from helpers.golden import assert_matches_golden, load_golden_case
    from helpers.paths import GOLDEN
    from safetensors.torch import load_file

    case = load_golden_case("inverted-basic")
    dump = tmp_path / "dump.safetensors"
    result = run_cli(
        *predict_args({**case["input"], "camera_movement": 0}, tmp_path / "o.mp4", "--dump-tensors", str(dump))
    )
    assert result.code == 0
    expected = load_file(GOLDEN / "inverted-basic" / "expected.safetensors")
    assert_matches_golden(load_file(dump), {"video_latents": expected["video_latents"]})


def _plan_of(dump) -> list[dict]:
    with safe_open(str(dump), "pt") as handle:
        return json.loads(handle.metadata()["plan"])


def test_section_grid_and_plan_in_the_log_and_dump(run_cli, tmp_path):
    dump = tmp_path / "dump.safetensors"
    result = run_cli(
        *predict_args(
            {**CLI_REQUEST, "section_prompts": "a\nb\nc\nd\ne"}, tmp_path / "o.mp4", "--dump-tensors", str(dump)
        )
    )
    assert result.code == 0, result.stderr
    assert "section 0 covers 0.00 to 0.43 s: start image, prompt 'a'" in result.stderr
    assert "section 2 covers 0.83 to 1.23 s" in result.stderr
    assert "section_prompts lines [4, 5] are past the last section (2); ignored" in result.stderr
    assert [(p["video_index"], p["prompt"]) for p in _plan_of(dump)] == [(2, "c"), (1, "b"), (0, "a")]


@pytest.mark.parametrize(("variant", "generation_order"), [("original", [2, 1, 0]), ("f1", [0, 1, 2])])
def test_timestamps_snap_to_the_logged_grid_in_either_generation_order(run_cli, tmp_path, variant, generation_order):
    dump = tmp_path / "dump.safetensors"
    inputs = {**CLI_REQUEST, "model_variant": variant, "section_prompts": "[0.9s] a storm\n[0.3s-0.5s] a calm sea"}
    result = run_cli(*predict_args(inputs, tmp_path / "o.mp4", "--dump-tensors", str(dump)))
    assert result.code == 0, result.stderr
    # Three sections: boundaries at 0, 0.43, 0.83 and 1.23 s.
    assert "section_prompts line 2 [0.3s-0.5s] snapped to 0.43 to 0.83 s: sections 1 to 1" in result.stderr
    assert "section_prompts line 1 [0.9s] snapped to 0.83 to 1.23 s: sections 2 to 2" in result.stderr
    assert "section 1 covers 0.43 to 0.83 s: start image, prompt 'a calm sea'" in result.stderr
    plan = _plan_of(dump)
    assert [p["video_index"] for p in plan] == generation_order
    by_video = {p["video_index"]: p["prompt"] for p in plan}
    assert by_video == {0: CLI_REQUEST["prompt"], 1: "a calm sea", 2: "a storm"}


def _padded(embedding, length: int = 512) -> torch.Tensor:
    return torch.nn.functional.pad(embedding, (0, 0, 0, length - embedding.shape[1]))


@pytest.mark.parametrize("variant", ["original", "f1"])
def test_blended_sections_use_the_interpolated_embeddings(tiny_models, variant):
    result, tensors = run(
        tiny_models, model_variant=variant, section_prompts="a calm sea\n\na stormy sea", prompt_blend_sections=2
    )
    encoders = (tiny_models.text_encoder, tiny_models.text_encoder_2, tiny_models.tokenizer, tiny_models.tokenizer_2)
    crop = conditioning.template_crop_start(tiny_models.tokenizer)
    calm, storm = (conditioning.encode_prompt(p, *encoders, crop) for p in ("a calm sea", "a stormy sea"))
    length = max(calm.embeds.shape[1], storm.embeds.shape[1])
    weights = {0: 0.0, 1: 0.0, 2: 1 / 3, 3: 2 / 3}  # of "a stormy sea", per video section
    for step in result.plan:
        weight = weights[step["video_index"]]
        expected = (1 - weight) * _padded(calm.embeds, length) + weight * _padded(storm.embeds, length)
        expected_pooled = (1 - weight) * calm.pooled + weight * storm.pooled
        if weight == 0:
            expected, expected_pooled = calm.embeds, calm.pooled
        embeds = tensors[f"section_{step['generation_index']}_prompt_embeds"]
        assert torch.equal(embeds, _padded(expected)), step
        assert torch.equal(tensors[f"section_{step['generation_index']}_pooled_prompt_embeds"], expected_pooled)
        blended = step["video_index"] >= 2
        assert (step["blend_from"], step["blend_weight"]) == (("a calm sea", weight) if blended else (None, 1.0))


def test_blending_without_a_prompt_change_changes_nothing(tiny_models):
    baseline, base_tensors = run(tiny_models)
    asked, tensors = run(tiny_models, prompt_blend_sections=4)  # one prompt: nothing to blend
    assert torch.equal(asked.video_latents, baseline.video_latents)
    assert torch.equal(tensors["frames_uint8"], base_tensors["frames_uint8"])
    unblended, _ = run(tiny_models, section_prompts="a\nb", prompt_blend_sections=0)
    switched, _ = run(tiny_models, section_prompts="a\nb")
    assert torch.equal(unblended.video_latents, switched.video_latents)
    assert all(step["blend_from"] is None for step in unblended.plan)


def test_blending_zero_keeps_a_golden_case(run_cli, tmp_path):
    from helpers.golden import assert_matches_golden, load_golden_case
    from helpers.paths import GOLDEN
    from safetensors.torch import load_file

    case = load_golden_case("inverted-basic")
    dump = tmp_path / "dump.safetensors"
    inputs = {**case["input"], "prompt_blend_sections": 0}
    assert run_cli(*predict_args(inputs, tmp_path / "o.mp4", "--dump-tensors", str(dump))).code == 0
    expected = load_file(GOLDEN / "inverted-basic" / "expected.safetensors")
    assert_matches_golden(load_file(dump), {"video_latents": expected["video_latents"]})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            {"section_images": f"@{END_IMAGE}", "section_image_indices": "3"},
            "Invalid input 'section_image_indices': section 3 is out of range; this video has sections 0 to 2",
        ),
        (
            {"section_images": f"@{END_IMAGE}", "section_image_indices": "0,1"},
            "Invalid input 'section_image_indices': 2 indices for 1 section_images",
        ),
        ({"section_image_indices": "1"}, "Invalid input 'section_image_indices': given without section_images"),
        ({"section_images": "@/nonexistent/key.png"}, "Invalid input 'section_images': file not found"),
        (
            {"end_image": f"@{END_IMAGE}", "model_variant": "f1"},
            "Invalid input 'end_image': is only supported by model_variant 'original'",
        ),
        ({"end_image_strength": "1.5"}, "Invalid input 'end_image_strength': 1.5 is out of range; allowed 0 to 1"),
        ({"camera_movement": "0.6"}, "Invalid input 'camera_movement': 0.6 is out of range; allowed 0 to 0.5"),
        (
            {"section_prompts": "[0s] a cat\na dog"},
            "Invalid input 'section_prompts': line 1 has a timestamp ([0s]) and line 2 has none",
        ),
        ({"prompt_blend_sections": "5"}, "Invalid input 'prompt_blend_sections': 5 is out of range; allowed 0 to 4"),
    ],
)
def test_bad_control_inputs(run_cli, tmp_path, override, message):
    result = run_cli(*predict_args({**CLI_REQUEST, **override}, tmp_path / "out.mp4"))
    assert result.code == 2
    assert message in result.stderr
    assert "loading" not in result.stderr and not (tmp_path / "out.mp4").exists()


def test_unreadable_keyframe(run_cli, tmp_path):
    broken = tmp_path / "key.png"
    broken.write_text("not an image")
    result = run_cli(*predict_args({**CLI_REQUEST, "section_images": f"@{broken}"}, tmp_path / "out.mp4"))
    assert result.code == 2 and "Invalid input 'section_images': could not read key.png" in result.stderr
