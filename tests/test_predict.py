"""predict.py: a thin adapter that Cog's own parser accepts, in step with the API table and the image's pins."""

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
import write_cog_files
from pydantic import SecretStr

from framepack.core.request import INPUT_SPECS

ROOT = Path(__file__).resolve().parent.parent
# Cog's static schema parser (what `cog build` runs) lives beside the repository, in CI too. This module is the
# only one that reads ../shared: the parser is a build tool, not a fixture.
COG_SCHEMA_TOOL = ROOT.parent / "shared" / "tools" / "cog-schema"
JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}


def test_predict_signature_is_the_api_table():
    from predict import Predictor

    parameters = list(inspect.signature(Predictor.predict).parameters)[1:]
    assert parameters == list(INPUT_SPECS)


def test_predict_inputs_are_generated_from_the_api_table():
    source = write_cog_files.PREDICT_PATH.read_text()
    assert source == write_cog_files.with_inputs(source), "run: python scripts/write_cog_files.py"


@pytest.fixture(scope="module")
def cog_schema() -> dict:
    if not (COG_SCHEMA_TOOL / "build.sh").is_file():
        pytest.skip(f"Cog's schema parser is not beside this checkout ({COG_SCHEMA_TOOL})")
    return write_cog_files.parse_with_cog(write_cog_files.schemacheck_binary())


def test_cogs_parser_accepts_predict_py_with_the_api_tables_inputs(cog_schema):
    schemas = cog_schema["components"]["schemas"]
    properties = schemas["Input"]["properties"]
    assert sorted(properties, key=lambda name: properties[name]["x-order"]) == list(INPUT_SPECS)
    assert schemas["Input"]["required"] == [name for name, spec in INPUT_SPECS.items() if spec.required]
    for name, spec in INPUT_SPECS.items():
        prop = properties[name]
        assert prop["description"] == spec.description, name
        if spec.required:
            assert "default" not in prop, name
        else:
            default = list(spec.default) if isinstance(spec.default, tuple) else spec.default
            assert prop["default"] == default, name
        assert prop.get("nullable", False) == (spec.default is None and not spec.required), name
        assert (prop.get("minimum"), prop.get("maximum")) == (spec.ge, spec.le), name
        assert prop.get("maxLength") == spec.max_length, name
        if spec.choices is not None:
            assert schemas[name]["enum"] == list(spec.choices), name
        elif spec.type is list:
            assert prop["type"] == "array" and prop["items"] == {"type": "string", "format": "uri"}, name
        elif spec.type is Path:
            assert (prop["type"], prop["format"]) == ("string", "uri"), name
        elif spec.type is SecretStr:  # a token: Cog's Secret, masked in its logs and UIs
            assert (prop["type"], prop["format"], prop["x-cog-secret"]) == ("string", "password", True), name
        else:
            assert prop["type"] == JSON_TYPES[spec.type], name
    assert schemas["Output"] == {"title": "Output", "type": "string", "format": "uri"}


def test_committed_schema_is_what_cogs_parser_produces(cog_schema):
    # The HTTP tests serve this file through coglet, as the image that `cog build` makes does.
    committed = json.loads(write_cog_files.SCHEMA_PATH.read_text())
    assert committed == cog_schema, "run: python scripts/write_cog_files.py"


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            name, version = line.split("==")
            pins[name.split("[")[0].lower()] = version
    return pins


def test_image_requirements_match_the_tested_ones():
    image = _pins(ROOT / "requirements-cog.txt")
    tested = _pins(ROOT / "requirements.txt")
    assert image.pop("torch") == "2.11.0"
    gpu_only = {
        name: image.pop(name)
        for name in (
            "flash-attn-4",
            "nvidia-cutlass-dsl",
            "cuda-bindings",
            "quack-kernels",
            "apache-tvm-ffi",
            "torch-c-dlpack-ext",
            "sageattention",
        )
    }
    assert all(gpu_only.values())
    assert image == tested


def test_cog_yaml_pins_the_tested_sdk():
    tested = _pins(ROOT / "requirements-dev.txt")["cog"]
    assert f'sdk_version: "{tested}"' in (ROOT / "cog.yaml").read_text()


@pytest.mark.e2e
def test_the_image_requirements_resolve_for_the_images_python_and_platform(tmp_path):
    """pip's resolver, as `cog build` runs it, for Python 3.11 on manylinux x86_64: nothing is installed."""
    platforms = [f"manylinux_2_{minor}_x86_64" for minor in range(39, 16, -1)] + ["manylinux2014_x86_64"]
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--only-binary=:all:"]
    command += ["--python-version", "3.11", "--implementation", "cp", "--target", str(tmp_path / "target")]
    command += [argument for platform in platforms for argument in ("--platform", platform)]
    command += ["--report", str(tmp_path / "report.json"), "-r", str(ROOT / "requirements-cog.txt")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    installed = {
        item["metadata"]["name"].lower(): item["metadata"]["version"]
        for item in json.loads((tmp_path / "report.json").read_text())["install"]
    }
    assert installed["torch"] == "2.11.0" and installed["cuda-bindings"].startswith("13.")
    assert installed["nvidia-cutlass-dsl-libs-cu13"] == "4.8.1"  # the CuTe DSL's CUDA 13 runtime, as benchmarked
