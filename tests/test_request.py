"""Request parsing and validation: the API table's defaults and ranges."""

import json
import re
from pathlib import Path

import pytest
import torch
from helpers.paths import START_IMAGE
from pydantic import ValidationError
from safetensors.torch import save_file

from framepack.core.request import INPUT_SPECS, MAX_SEED, GenerationRequest, build_request, with_step_cache
from framepack.errors import InvalidInput


def test_defaults_follow_the_api_table():
    request = build_request({"input_image": START_IMAGE, "prompt": "a cat"})
    assert request.total_video_length_seconds == 5.0 and request.model_variant == "original"
    assert request.resolution == 640 and request.width == request.height == 0
    assert request.latent_window_size == 9 and request.steps == 25
    assert request.cfg_scale == 1.0 and request.distilled_cfg_scale == 10.0 and request.cfg_rescale == 0.0
    assert request.step_cache_settings.kind == "teacache"  # step_cache "auto", use_teacache not given
    assert request.mp4_crf == 16 and request.negative_prompt == ""
    assert 0 <= request.seed <= MAX_SEED


def test_omitted_seed_is_random_and_given_seed_is_kept():
    seeds = {build_request({"input_image": START_IMAGE, "prompt": "x"}).seed for _ in range(5)}
    assert len(seeds) > 1
    assert build_request({"input_image": START_IMAGE, "prompt": "x", "seed": 42}).seed == 42


@pytest.mark.parametrize(
    ("inputs", "name", "message"),
    [
        ({"prompt": "  "}, "prompt", "must not be empty"),
        ({"steps": 0}, "steps", "allowed 1 to 100"),
        ({"steps": 101}, "steps", "allowed 1 to 100"),
        ({"cfg_scale": 40.0}, "cfg_scale", "allowed 1 to 32"),
        ({"total_video_length_seconds": 121}, "total_video_length_seconds", "allowed 0.1 to 120"),
        ({"seed": -2}, "seed", "allowed -1 to 4294967295"),
        ({"seed": 2**32}, "seed", "allowed -1 to 4294967295"),
        ({"mp4_crf": 52}, "mp4_crf", "allowed 0 to 51"),
        ({"latent_window_size": 34}, "latent_window_size", "allowed 1 to 33"),
        ({"model_variant": "f2"}, "model_variant", "'original', 'f1'"),
        ({"width": 100, "height": 64}, "width", "not a multiple of 16"),
        ({"width": 96, "height": 0}, "height", "set both width and height"),
        ({"steps": "many"}, "steps", "expected an integer"),
        ({"use_teacache": "maybe"}, "use_teacache", "true or false"),
        ({"steps": True}, "steps", "expected int"),
        ({"colour": "red"}, "colour", "unknown input"),
    ],
)
def test_bad_inputs_name_the_input(inputs, name, message):
    with pytest.raises(InvalidInput) as error:
        build_request({"input_image": START_IMAGE, "prompt": "a cat", **inputs})
    assert error.value.name == name
    assert message in str(error.value)


def test_missing_required_inputs():
    with pytest.raises(InvalidInput, match="'prompt': is required"):
        build_request({"input_image": START_IMAGE})
    with pytest.raises(InvalidInput, match="'input_image': is required unless input_video is given"):
        build_request({"prompt": "x"})


def test_unreadable_images(tmp_path):
    text_file = tmp_path / "notes.png"
    text_file.write_text("not an image")
    with pytest.raises(InvalidInput, match="could not read notes.png as an image"):
        build_request({"input_image": text_file, "prompt": "x"})
    with pytest.raises(InvalidInput, match="file not found"):
        build_request({"input_image": tmp_path / "absent.jpg", "prompt": "x"})


def test_every_spec_has_a_description():
    assert all(spec.description for spec in INPUT_SPECS.values())


def test_the_api_table_is_the_models_fields():
    assert list(INPUT_SPECS) == list(GenerationRequest.model_fields)
    seed, variant, images = INPUT_SPECS["seed"], INPUT_SPECS["model_variant"], INPUT_SPECS["section_images"]
    assert (seed.type, seed.default, seed.ge, seed.le, seed.required) == (int, -1, -1, MAX_SEED, False)
    assert (variant.type, variant.choices) == (str, ("original", "f1"))
    assert (images.type, images.item_type, images.default) == (list, Path, ())
    for name in ("input_image", "input_video"):  # at least one of them: the model checks that
        assert (INPUT_SPECS[name].type, INPUT_SPECS[name].required, INPUT_SPECS[name].default) == (Path, False, None)
    assert [name for name, spec in INPUT_SPECS.items() if spec.required] == ["prompt"]
    context, blend = INPUT_SPECS["video_context_frames"], INPUT_SPECS["prompt_blend_sections"]
    assert (context.type, context.default, context.ge, context.le) == (int, 0, 0, 19)
    assert (blend.type, blend.default, blend.ge, blend.le) == (int, 0, 0, 4)
    assert (INPUT_SPECS["include_input_video"].type, INPUT_SPECS["include_input_video"].default) == (bool, True)


def test_values_are_taken_as_clients_send_them():
    request = build_request(
        {
            "input_image": str(START_IMAGE),
            "prompt": "x",
            "steps": "30",
            "use_teacache": "false",
            "width": 96.0,  # JSON clients may send an integral float for an integer
            "height": 64,
            "cfg_scale": 2,
            "seed": None,  # None is "not given": the default, a random seed
            "mp4_crf": None,
        }
    )
    assert (request.steps, request.use_teacache, request.width, request.cfg_scale) == (30, False, 96, 2.0)
    assert request.step_cache_settings.kind == "none"
    assert isinstance(request.width, int) and isinstance(request.input_image, Path)
    assert request.mp4_crf == 16 and 0 <= request.seed <= MAX_SEED


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"width": 96.5, "height": 64}, "Invalid input 'width': expected an integer, got 96.5"),
        ({"cfg_scale": True}, "Invalid input 'cfg_scale': expected float, got bool"),
        ({"cfg_scale": "strong"}, "Invalid input 'cfg_scale': expected a number, got 'strong'"),
        ({"prompt": 3}, "Invalid input 'prompt': expected text, got 3"),
        ({"colour": "red", "steps": 0}, "Invalid input 'colour': unknown input"),  # unknown names come first
        ({"steps": 0, "mp4_crf": 99}, "Invalid input 'steps'"),  # then the API's order
    ],
)
def test_type_errors_name_the_input_and_what_is_allowed(inputs, message):
    with pytest.raises(InvalidInput, match=re.escape(message)):
        build_request({"input_image": START_IMAGE, "prompt": "a cat", **inputs})


def test_a_request_cannot_change_once_validated():
    request = build_request({"input_image": START_IMAGE, "prompt": "x", "seed": 1})
    with pytest.raises(ValidationError):
        request.steps = 5
    assert GenerationRequest.model_validate(request.model_dump()) == request


def test_text_inputs_have_limits_checked_before_any_work():
    with pytest.raises(InvalidInput, match="'prompt': is 4,001 characters long; at most 4,000 are allowed"):
        build_request({"input_image": START_IMAGE, "prompt": "a" * 4001})
    with pytest.raises(InvalidInput, match="'lora_weights': is 2,049 characters long"):
        build_request({"input_image": START_IMAGE, "prompt": "a", "lora_weights": "https://x/" + "a" * 2039})
    assert build_request({"input_image": START_IMAGE, "prompt": "😀" * 4000}).prompt == "😀" * 4000


def test_metadata_keeps_no_secrets_and_no_server_paths(tmp_path):
    lora = tmp_path / "private" / "style.safetensors"
    lora.parent.mkdir()
    save_file({"x": torch.zeros(1)}, str(lora))
    request = build_request(
        {
            "input_image": START_IMAGE,
            "prompt": "x",
            "lora_weights": "https://user:pw@example.com/style.safetensors?token=SECRET#part",
            "extra_lora": str(lora),
        }
    )
    stored = json.dumps(request.to_json_dict(), sort_keys=True)
    assert "SECRET" not in stored and "pw" not in stored and str(tmp_path) not in stored
    values = request.to_json_dict()
    assert values["lora_weights"] == "https://example.com/style.safetensors"
    assert values["extra_lora"] == "style.safetensors" and values["input_image"] == START_IMAGE.name


def test_served_images_must_lie_in_the_upload_folder(tmp_path):
    from framepack.core.request import FileInputs

    uploads = tmp_path / "uploads"
    uploads.mkdir()
    inside = uploads / START_IMAGE.name
    inside.write_bytes(START_IMAGE.read_bytes())
    files = FileInputs(served=True, upload_dir=uploads)
    assert build_request({"input_image": inside, "prompt": "x"}, files=files).input_image == inside
    for outside in (START_IMAGE, uploads / ".." / ".." / START_IMAGE.name):
        with pytest.raises(InvalidInput, match="'input_image': give an upload"):
            build_request({"input_image": Path(outside), "prompt": "x"}, files=files)


@pytest.mark.parametrize(
    ("step_cache", "use_teacache", "runs"),
    [
        ("auto", None, "teacache"),
        ("auto", True, "teacache"),
        ("auto", False, "none"),  # what earlier clients send to turn TeaCache off
        ("magcache", None, "magcache"),
        ("magcache", False, "magcache"),
        ("none", False, "none"),
        ("teacache", True, "teacache"),
    ],
)
def test_the_step_cache_follows_step_cache_and_the_earlier_switch(step_cache, use_teacache, runs):
    inputs = {"input_image": START_IMAGE, "prompt": "x", "step_cache": step_cache, "use_teacache": use_teacache}
    request = build_request(inputs)
    assert request.step_cache_settings.kind == runs
    stored = request.to_json_dict()  # what the MP4's metadata keeps: what ran
    assert (stored["step_cache"], stored["use_teacache"]) == (runs, None)


@pytest.mark.parametrize(("step_cache", "use_teacache"), [("magcache", True), ("none", True), ("teacache", False)])
def test_a_step_cache_that_contradicts_use_teacache_is_refused_naming_both(step_cache, use_teacache):
    inputs = {"input_image": START_IMAGE, "prompt": "x", "step_cache": step_cache, "use_teacache": use_teacache}
    with pytest.raises(InvalidInput, match=f"Invalid input 'step_cache': '{step_cache}' contradicts use_teacache="):
        build_request(inputs)


def test_the_caches_settings_reach_the_sampler_and_are_checked():
    inputs = {"input_image": START_IMAGE, "prompt": "x", "step_cache": "magcache", "magcache_threshold": 0.15}
    settings = build_request({**inputs, "magcache_max_skips": 4, "magcache_retention_ratio": 0.25}).step_cache_settings
    assert (settings.magcache.threshold, settings.magcache.max_skips, settings.magcache.retention_ratio) == (
        0.15,
        4,
        0.25,
    )
    assert build_request({**inputs, "teacache_threshold": 0.2}).step_cache_settings.teacache_threshold == 0.2
    for name, value in (("magcache_max_skips", 0), ("teacache_threshold", 0.0), ("magcache_retention_ratio", 1.5)):
        with pytest.raises(InvalidInput, match=f"Invalid input '{name}': {value!r} is out of range"):
            build_request({**inputs, name: value})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1.0, x", "expected comma-separated numbers"),
        ("1.0", "expected 2 to 101 numbers, got 1"),
        ("1.0, 0", "every entry must be a positive finite number, got 0.0"),
        ("1.0, nan", "every entry must be a positive finite number, got nan"),
    ],
)
def test_a_magcache_table_of_ones_own_is_checked(text, message):
    with pytest.raises(InvalidInput, match=f"Invalid input 'magcache_ratios': {message}"):
        build_request({"input_image": START_IMAGE, "prompt": "x", "step_cache": "magcache", "magcache_ratios": text})
    table = build_request({"input_image": START_IMAGE, "prompt": "x", "magcache_ratios": " 1.0, 1.5 ,0.9"})
    assert table.step_cache_settings.magcache.ratios == (1.0, 1.5, 0.9)


def test_settings_stored_before_step_cache_state_it():
    assert with_step_cache({"use_teacache": False, "steps": 9}) == {"steps": 9, "step_cache": "none"}
    assert with_step_cache({"use_teacache": True}) == {"step_cache": "teacache"}
    assert with_step_cache({"use_teacache": None, "step_cache": "magcache"}) == {"step_cache": "magcache"}
