"""`python -m framepack predict`: bad input fails early, clearly, with no output left behind."""

import json
import subprocess
import sys

import pytest
import torch
from helpers.paths import START_IMAGE, TINY_WEIGHTS
from helpers.requests import CLI_REQUEST, input_args, predict_args, tiny_request

from benchmarks.measure import read_mp4_frames
from framepack.core.video import read_mp4_metadata, write_mp4


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"prompt": ""}, "Invalid input 'prompt': must not be empty"),
        ({"steps": "0"}, "Invalid input 'steps': 0 is out of range; allowed 1 to 100"),
        ({"model_variant": "f2"}, "Invalid input 'model_variant': 'f2' is not one of 'original', 'f1'"),
        ({"width": "100"}, "Invalid input 'width': 100 is not a multiple of 16"),
        ({"cfg_scale": "abc"}, "Invalid input 'cfg_scale': expected a number"),
        ({"input_image": "@/nonexistent/photo.jpg"}, "Invalid input 'input_image': file not found"),
    ],
)
def test_bad_input_exits_non_zero_before_loading(run_cli, tmp_path, override, message):
    output = tmp_path / "out.mp4"
    result = run_cli(*predict_args({**CLI_REQUEST, **override}, output))
    assert result.code == 2
    assert message in result.stderr
    assert "loading" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_non_image_file(run_cli, tmp_path):
    fake = tmp_path / "photo.jpg"
    fake.write_bytes(b"%PDF-1.4 definitely not a jpeg")
    result = run_cli(*predict_args({**CLI_REQUEST, "input_image": f"@{fake}"}, tmp_path / "out.mp4"))
    assert result.code == 2 and "could not read photo.jpg as an image" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["photo.jpg"]


def test_missing_weights_lists_the_paths_looked_at(run_cli, tmp_path):
    empty = tmp_path / "weights"
    empty.mkdir()
    args = ["predict", *input_args(CLI_REQUEST), "--weights", str(empty), "-o", str(tmp_path / "out.mp4")]
    result = run_cli(*args)
    assert result.code == 2
    assert f"Weights missing in {empty}" in result.stderr
    assert str(empty / "hunyuanvideo-community/HunyuanVideo/text_encoder") in result.stderr
    assert str(empty / "lllyasviel/FramePackI2V_HY") in result.stderr
    assert "FramePack_F1" not in result.stderr  # only the requested variant is needed
    # The exact command that fills this folder for this variant.
    assert f"python -m framepack download-weights --weights {empty} --variants original" in result.stderr
    assert not (tmp_path / "out.mp4").exists()


def test_missing_output_folder(run_cli, tmp_path):
    result = run_cli(*predict_args(CLI_REQUEST, tmp_path / "no" / "such" / "out.mp4"))
    assert result.code == 2 and "--output" in result.stderr


def test_module_entry_point_runs_as_a_process(tmp_path):
    output = tmp_path / "video.mp4"
    process = subprocess.run(
        [sys.executable, "-m", "framepack", *predict_args({**CLI_REQUEST, "steps": "1"}, output)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 0, process.stderr
    assert output.stat().st_size > 0
    bad = subprocess.run(
        [sys.executable, "-m", "framepack", "predict", "-i", "prompt=x", "--weights", str(TINY_WEIGHTS)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "Invalid input 'input_image': is required" in bad.stderr


def test_an_attention_kernel_asked_for_reaches_the_engine(run_cli, tmp_path):
    output = tmp_path / "out.mp4"
    result = run_cli(*predict_args({**CLI_REQUEST, "total_video_length_seconds": "0.4"}, output, "--attention", "sage"))
    assert result.code == 0, result.stderr
    assert "original transformer: attention native, compiled False, FP8 layers 0; " in result.stderr
    assert "not on CUDA: default attention (sage needs a CUDA GPU)" in result.stderr
    assert result.stdout.strip() == str(output) and output.stat().st_size > 0


def test_an_unknown_attention_kernel_is_refused(run_cli, tmp_path):
    with pytest.raises(SystemExit):  # argparse: exit code 2 with the choices
        run_cli(*predict_args(CLI_REQUEST, tmp_path / "out.mp4", "--attention", "xformers"))


def test_the_studio_refuses_a_malformed_login_before_loading(run_cli):
    result = run_cli("ui", "--weights", str(TINY_WEIGHTS), "--auth", "no-colon")
    assert result.code == 2 and "Invalid input '--auth': expected USER:PASSWORD" in result.stderr
    assert "loading" not in result.stderr


def test_from_a_video_renders_it_again_bit_for_bit(run_cli, tmp_path):
    first, again = tmp_path / "first.mp4", tmp_path / "again.mp4"
    made = run_cli(*predict_args({**CLI_REQUEST, "seed": "-1", "section_prompts": "a cat\n\na dog"}, first))
    assert made.code == 0, made.stderr
    redo = run_cli(*predict_args({"input_image": f"@{START_IMAGE}"}, again, "--from", str(first)))
    assert redo.code == 0, redo.stderr
    assert torch.equal(read_mp4_frames(again)[0], read_mp4_frames(first)[0])
    assert read_mp4_metadata(again) == read_mp4_metadata(first)  # the drawn seed and every setting came back

    changed = tmp_path / "changed.mp4"
    override = run_cli(*predict_args({"input_image": f"@{START_IMAGE}", "steps": "1"}, changed, "--from", str(first)))
    assert override.code == 0, override.stderr
    stored, restored = read_mp4_metadata(first)["request"], read_mp4_metadata(changed)["request"]
    assert restored == {**stored, "steps": 1}


def test_from_refuses_a_video_without_our_settings_and_asks_for_the_files(run_cli, tmp_path):
    foreign = write_mp4(torch.zeros(2, 16, 16, 3, dtype=torch.uint8), tmp_path / "foreign.mp4", 16)
    notes = tmp_path / "notes.mp4"
    notes.write_text("not a video")
    ours = write_mp4(
        torch.zeros(2, 16, 16, 3, dtype=torch.uint8),
        tmp_path / "ours.mp4",
        16,
        {"request": {"prompt": "x", "seed": 3, "input_image": "photo.png"}},
    )
    for video, message in (
        (foreign, "Invalid input '--from': foreign.mp4 holds no FramePack settings"),
        (notes, "Invalid input '--from': could not read notes.mp4 as an MP4"),
        (
            ours,
            "Invalid input 'input_image': ours.mp4 was made from photo.png; a video does not hold its files, "
            "give it again with -i input_image=@PATH",
        ),
    ):
        result = run_cli(*predict_args({}, tmp_path / "out.mp4", "--from", str(video)))
        assert result.code == 2 and message in result.stderr, result.stderr
        assert "loading" not in result.stderr and not (tmp_path / "out.mp4").exists()


def test_calibrate_magcache_measures_a_table_that_predict_takes(run_cli, tmp_path):
    inputs = input_args(tiny_request(steps=6, total_video_length_seconds=0.8))
    flags = ["--weights", str(TINY_WEIGHTS), "--device", "cpu", "--dtype", "float32", "--compile", "off"]
    table_file = tmp_path / "table.json"
    result = run_cli("calibrate-magcache", *inputs, *flags, "-o", str(table_file))
    assert result.code == 0, result.stderr[-2000:]
    report = json.loads(table_file.read_text())
    ratios = [float(value) for value in result.stdout.strip().split(",")]
    assert report["magcache_ratios"] == result.stdout.strip() and len(ratios) == 6 and ratios[0] == 1.0
    # Two sections of 6 steps: 5 ratios each (from the second step on), their mean the table's entries.
    assert [len(section) for section in report["sections"]] == [5, 5]
    for step, ratio in enumerate(ratios[1:]):
        mean = sum(section[step]["ratio"] for section in report["sections"]) / 2
        assert ratio == round(mean, 5) and ratio > 0
    assert all(0 <= entry["cosine_distance"] <= 2 for section in report["sections"] for entry in section)
    # The table is a request input, kept in the video's metadata so --from runs it again.
    own = tiny_request(
        steps=6, total_video_length_seconds=0.8, step_cache="magcache", magcache_ratios=report["magcache_ratios"]
    )
    assert run_cli(*predict_args(own, tmp_path / "own.mp4")).code == 0
    assert read_mp4_metadata(tmp_path / "own.mp4")["request"]["magcache_ratios"] == report["magcache_ratios"]
    refused = run_cli("calibrate-magcache", *input_args(tiny_request(cfg_scale=2.0)), *flags)
    assert refused.code == 2 and "Invalid input 'cfg_scale': calibrate with cfg_scale 1" in refused.stderr
