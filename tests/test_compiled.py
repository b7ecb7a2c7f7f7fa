"""Compiled mode as users run it: the service with FRAMEPACK_COMPILE=on (inductor, here on the CPU) through
request sequences, each request compared with the same request on an eager service.

High-VRAM mode compiles the 60 blocks and the VAE's GroupNorms; these tests compile the same things on the tiny
weights. The golden cases in compiled mode are in test_golden.py.
"""

from __future__ import annotations

import pytest
import torch
from helpers.golden import check_golden_case, golden_case_names, load_golden_case
from helpers.models import musubi_lora, peft_lora
from helpers.paths import END_IMAGE, TINY_WEIGHTS
from helpers.requests import tiny_request
from safetensors.torch import save_file

from benchmarks.measure import relative_l2
from framepack.models import all_blocks
from framepack.runtime.pipeline import TensorRecorder
from framepack.serving.service import FramePackService

# float32 on the CPU: compiled kernels reassociate sums, so results agree to rounding, not bit for bit.
MAX_RELATIVE_L2 = 1e-5
pytestmark = pytest.mark.e2e  # the service compiled with inductor

BASE = tiny_request(prompt="a dancer on a stage", total_video_length_seconds=1.2)


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    """An eager and a compiled ("off", "on") service on the tiny weights, set up as predict.py sets them up, with
    a LoRA folder of their own. Compiling takes most of a minute: every test here shares them (and, with
    `--dist loadfile`, one worker runs them all)."""
    made = {}
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FRAMEPACK_WEIGHTS", str(TINY_WEIGHTS))
        env.setenv("FRAMEPACK_LORA_DIR", str(tmp_path_factory.mktemp("loras")))
        for mode in ("off", "on"):
            env.setenv("FRAMEPACK_COMPILE", mode)
            env.setenv("FRAMEPACK_OUTPUT_DIR", str(tmp_path_factory.mktemp(f"outputs-{mode}")))
            made[mode] = FramePackService.setup()
    yield made
    for service in made.values():
        service.close()


@pytest.fixture(scope="module")
def lora_files(services):
    folder = services["on"].files.lora_dirs[0]
    model = services["off"].models.transformers["original"]
    files = {"A": folder / "a.safetensors", "B": folder / "b.safetensors"}
    save_file(musubi_lora(model), str(files["A"]))
    save_file(peft_lora(model), str(files["B"]))
    return {name: str(path) for name, path in files.items()}


def predict(service: FramePackService, **overrides) -> dict[str, torch.Tensor]:
    recorder = TensorRecorder(True)
    service.predict({**BASE, **overrides}, record=recorder)
    return recorder.tensors


def assert_same_as_eager(services, **overrides) -> None:
    compiled, eager = predict(services["on"], **overrides), predict(services["off"], **overrides)
    error = relative_l2(compiled["video_latents"], eager["video_latents"])
    assert error < MAX_RELATIVE_L2, f"{overrides}: relative L2 {error:.2e}"
    assert int((compiled["frames_uint8"].int() - eager["frames_uint8"].int()).abs().max()) <= 1, overrides


def weights(service: FramePackService) -> dict[str, torch.Tensor]:
    return {
        f"{variant}.{name}": tensor.clone()
        for variant, model in service.models.transformers.items()
        for name, tensor in model.state_dict().items()
    }


def test_setup_says_truthfully_what_is_compiled(services, capsys):
    compiled, eager = services["on"].engine, services["off"].engine
    assert eager.placement.compile_record is None
    record = compiled.placement.compile_record
    assert record is not None
    for model in compiled.models.transformers.values():
        assert all(block._compiled_call_impl is not None for block in all_blocks(model))
    predict(services["on"])
    # Inductor really built the graphs (none fell back to eager), and says so in the prediction's log.
    assert record.graphs >= 2 and record.failures == []
    assert "compiled blocks: " in capsys.readouterr().out


def test_lora_sequence_equals_eager_and_leaves_the_base_weights_bit_identical(services, lora_files):
    base = weights(services["on"])
    record = services["on"].engine.placement.compile_record
    predict(services["on"])  # compile for this request's shapes first
    graphs = record.graphs
    sequence = [
        {"lora_weights": lora_files["A"]},
        {"lora_weights": lora_files["A"], "lora_scale": 0.7},
        {},
        {"lora_weights": lora_files["B"]},
        {"lora_weights": lora_files["A"], "extra_lora": lora_files["B"], "extra_lora_scale": -1.2},
        {},
    ]
    for overrides in sequence:
        assert_same_as_eager(services, **overrides)
        after = weights(services["on"])
        assert all(torch.equal(after[name], tensor) for name, tensor in base.items()), overrides
    # A LoRA changes weight values, never shapes or modules: no recompilation.
    assert record.graphs == graphs


@pytest.mark.parametrize(
    "overrides",
    [
        {"model_variant": "f1"},
        {"model_variant": "original", "step_cache": "teacache", "steps": 4},
        {"model_variant": "f1", "step_cache": "teacache", "steps": 4},
        {"model_variant": "original", "step_cache": "magcache", "steps": 8, "cfg_scale": 2.0},
        {
            "section_prompts": "a calm sea\n\na storm",
            "section_images": [END_IMAGE, END_IMAGE],
            "section_image_indices": "1,2",
            "end_image": END_IMAGE,
            "end_image_strength": 0.5,
            "camera_movement": 0.2,
        },
        {"model_variant": "f1", "section_prompts": "\na storm", "section_images": [END_IMAGE], "camera_movement": 0.1},
    ],
    ids=["f1", "teacache-original", "teacache-f1", "magcache-cfg", "controls-original", "controls-f1"],
)
def test_variants_teacache_and_controls_equal_eager(services, overrides):
    assert_same_as_eager(services, **overrides)


class Cancelled(BaseException):
    """Stands for Cog's CancelationException, which is a BaseException raised inside predict."""


class CancelAfterFirstSection(TensorRecorder):
    def __call__(self, name: str, tensor: torch.Tensor) -> None:
        if name == "section_1_latents":
            raise Cancelled()


def test_cancel_mid_run_then_a_prediction_equals_eager(services, lora_files):
    service = services["on"]
    base = weights(service)
    with pytest.raises(Cancelled):
        service.predict({**BASE, "lora_weights": lora_files["A"]}, record=CancelAfterFirstSection(False))
    assert list(service.output_dir.iterdir()) == []
    assert all(torch.equal(tensor, base[name]) for name, tensor in weights(service).items())
    assert_same_as_eager(services)


# The golden cases through the compiled service, which serves every case as it serves requests of every size.
@pytest.mark.parametrize("case_name", golden_case_names())
def test_golden_case_compiled(case_name, services, block_stack_runs, tiny_models):
    """Through the Cog service, compiled."""
    recorder = TensorRecorder(True)
    output = services["on"].predict(load_golden_case(case_name)["input"], record=recorder)
    check_golden_case(case_name, recorder.tensors, output, block_stack_runs, tiny_models)
