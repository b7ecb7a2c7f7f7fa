"""The engine configuration: FRAMEPACK_* variables read once, flags over them, bad values named."""

import argparse
import dataclasses
from pathlib import Path

import pytest

from framepack.config import SETTINGS, EngineConfig, LoraDownloads, add_flags, flag_values, settings_table


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
        ({"FRAMEPACK_GPUS": "0"}, "FRAMEPACK_GPUS must be auto or a number of GPUs"),
        ({"FRAMEPACK_PARALLEL_TIMEOUT": "soon"}, "FRAMEPACK_PARALLEL_TIMEOUT must be a number of seconds, got 'soon'"),
        ({"FRAMEPACK_PARALLEL_TIMEOUT": "0"}, "FRAMEPACK_PARALLEL_TIMEOUT must be a number of seconds above 0"),
        ({"FRAMEPACK_MEMORY_MODE": "-3"}, "FRAMEPACK_MEMORY_MODE must be one of auto, high, low or a budget"),
        ({"FRAMEPACK_ALLOW_PRIVATE_URLS": "sometimes"}, "FRAMEPACK_ALLOW_PRIVATE_URLS must be 1 or 0"),
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


def test_the_readme_table_is_the_declared_settings():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert settings_table() in readme, "README.md's settings table is out of date: paste config.settings_table()"


def test_every_field_but_the_variants_is_a_declared_setting():
    declared = {setting.name for setting in SETTINGS}
    assert declared == {field.name for field in dataclasses.fields(EngineConfig)} - {"variants"}
    assert all(setting.variable is None or setting.variable.startswith("FRAMEPACK_") for setting in SETTINGS)


def test_flags_come_from_the_declarations_and_are_checked_by_them():
    parser = argparse.ArgumentParser()
    add_flags(parser)
    args = parser.parse_args(["--weights", "/w", "--compile", "ON", "--fp8", "--gpus", "2", "--device", "cpu"])
    assert flag_values(args) == {
        "weights_dir": Path("/w"),
        "device": "cpu",
        "dtype": None,
        "compile": "on",
        "fp8": True,
        "attention": None,
        "gpus": "2",
    }
    assert EngineConfig.from_env({"FRAMEPACK_COMPILE": "off"}, **flag_values(args)).compile == "on"
    for bad in (["--gpus", "0"], ["--compile", "always"], ["--device", "tpu"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
    only_weights = argparse.ArgumentParser()
    add_flags(only_weights, names=("weights_dir",))
    assert vars(only_weights.parse_args([])) == {"weights_dir": None}
