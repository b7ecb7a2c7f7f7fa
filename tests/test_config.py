"""The engine configuration: FRAMEPACK_* variables read once, flags over them, bad values named."""

from pathlib import Path

import pytest

from framepack.config import EngineConfig, LoraDownloads


def test_defaults_without_variables():
    config = EngineConfig.from_env({})
    assert config == EngineConfig()
    assert (config.weights_dir, config.memory_mode, config.compile, config.fp8, config.output_dir) == (
        Path("weights"),
        "auto",
        "auto",
        False,
        None,
    )
    assert config.variants == ("original", "f1")


def test_every_variable_is_read():
    config = EngineConfig.from_env(
        {
            "FRAMEPACK_WEIGHTS": "/w",
            "FRAMEPACK_OUTPUT_DIR": "/o",
            "FRAMEPACK_MEMORY_MODE": " Low ",
            "FRAMEPACK_COMPILE": "ON",
            "FRAMEPACK_FP8": "yes",
            "FRAMEPACK_ATTENTION": "sage",
            "FRAMEPACK_LORA_CACHE": "/c",
            "FRAMEPACK_LORA_MAX_BYTES": "1000",
            "UNRELATED": "x",
        }
    )
    assert config.lora_downloads() == LoraDownloads(Path("/c"), 1000) and config.attention == "sage"
    assert (config.weights_dir, config.output_dir, config.memory_mode, config.compile, config.fp8) == (
        Path("/w"),
        Path("/o"),
        "low",
        "on",
        True,
    )


@pytest.mark.parametrize(
    ("value", "expected"), [("", False), ("0", False), ("off", False), ("1", True), ("TRUE", True), ("yes", True)]
)
def test_fp8_switch(value, expected):
    assert EngineConfig.from_env({"FRAMEPACK_FP8": value}).fp8 is expected


def test_flags_take_precedence_and_none_leaves_the_variable():
    environ = {"FRAMEPACK_COMPILE": "off", "FRAMEPACK_FP8": "1", "FRAMEPACK_WEIGHTS": "/w"}
    config = EngineConfig.from_env(
        environ, compile="on", fp8=None, weights_dir=None, variants=("f1",), device="cpu", dtype="float32"
    )
    assert (config.compile, config.fp8, config.weights_dir, config.variants) == ("on", True, Path("/w"), ("f1",))
    assert str(config.resolved_device()) == "cpu" and str(config.resolved_dtype()) == "torch.float32"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"FRAMEPACK_FP8": "maybe"}, "FRAMEPACK_FP8 must be 1 or 0"),
        ({"FRAMEPACK_COMPILE": "always"}, "FRAMEPACK_COMPILE must be one of auto, on, off, got 'always'"),
        ({"FRAMEPACK_MEMORY_MODE": "medium"}, "FRAMEPACK_MEMORY_MODE must be one of auto, high, low"),
        ({"FRAMEPACK_ATTENTION": "xformers"}, "FRAMEPACK_ATTENTION must be one of auto, flash_attention_4, "),
        ({"FRAMEPACK_LORA_MAX_BYTES": "4GB"}, "FRAMEPACK_LORA_MAX_BYTES must be a whole number of bytes, got '4GB'"),
        ({"FRAMEPACK_LORA_MAX_BYTES": "0"}, "FRAMEPACK_LORA_MAX_BYTES must be a positive number of bytes, got 0"),
    ],
)
def test_bad_values_name_the_variable(environ, message):
    with pytest.raises(ValueError, match=message):
        EngineConfig.from_env(environ)


def test_bad_fields_are_refused():
    with pytest.raises(ValueError, match="variants must be some of original, f1"):
        EngineConfig(variants=("f2",))
    with pytest.raises(ValueError, match="device must be one of cpu, cuda"):
        EngineConfig(device="tpu")


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"FRAMEPACK_WEIGHTS": "/w"}, Path("/w/compile-cache")),
        ({"FRAMEPACK_COMPILE_CACHE": "/var/cache/fp"}, Path("/var/cache/fp")),
        ({"FRAMEPACK_COMPILE_CACHE": "off"}, None),
        ({"FRAMEPACK_COMPILE_CACHE": "0"}, None),
    ],
)
def test_compile_cache_folder(environ, expected):
    assert EngineConfig.from_env(environ).compile_cache_dir() == expected
