"""predict.py stays a thin adapter in step with the API table, the committed schema and the image's pins."""

import inspect
import json
from pathlib import Path

import write_cog_schema
from framepack.request import INPUT_SPECS

ROOT = Path(__file__).resolve().parent.parent


def test_predict_signature_is_the_api_table():
    from predict import Predictor

    parameters = list(inspect.signature(Predictor.predict).parameters)[1:]
    assert parameters == list(INPUT_SPECS)


def test_committed_schema_is_in_step_with_predict_py():
    committed = json.loads((ROOT / ".cog" / "openapi_schema.json").read_text())
    assert committed == write_cog_schema.build_schema(), "run: python scripts/write_cog_schema.py"


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            name, version = line.split("==")
            pins[name.lower()] = version
    return pins


def test_image_requirements_match_the_tested_ones():
    image = _pins(ROOT / "requirements-cog.txt")
    tested = _pins(ROOT / "requirements.txt")
    assert image.pop("torch") == "2.11.0"
    gpu_only = {name: image.pop(name) for name in ("flash-attn-4", "nvidia-cutlass-dsl", "cuda-bindings",
                                                   "quack-kernels", "apache-tvm-ffi", "torch-c-dlpack-ext")}
    assert all(gpu_only.values())
    assert image == tested
