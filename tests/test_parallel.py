"""Sequence parallelism on the CPU: the tiny weights on N processes (gloo, float32) against one process.

N = 2 splits the 2 heads one per process; N = 3 also pads the heads (one zero head) and the tokens. One parallel
engine per N serves the whole module (spawning processes takes seconds).
"""

from __future__ import annotations

import pytest
import torch
from helpers.golden import assert_matches_golden, golden_case_names, load_golden_case
from helpers.models import musubi_lora, section_and_text
from helpers.paths import GOLDEN, TINY_WEIGHTS
from helpers.requests import input_args, tiny_request
from safetensors.torch import load_file, save_file

from benchmarks.measure import relative_l2
from framepack.config import EngineConfig
from framepack.core.request import build_request
from framepack.errors import InvalidInput
from framepack.runtime.pipeline import GenerationOptions, TensorRecorder, generate
from framepack.runtime.sequence_parallel import UlyssesAttnProcessor
from framepack.runtime.transformer import PackedTransformer
from framepack.serving.cli import build_parser, engine_config, parse_inputs
from framepack.serving.engine import Engine, load_engine
from framepack.serving.parallel import describe

# float32 on the CPU: the same arithmetic per token and per head, so results agree to rounding (here: exactly).
MAX_RELATIVE_L2 = 1e-5


def parallel_config(processes: int, **overrides) -> EngineConfig:
    """The tiny weights on `processes` CPU processes, eager unless `overrides` say otherwise."""
    settings = {"compile": "off", "parallel_timeout": 30, **overrides}
    return EngineConfig(weights_dir=TINY_WEIGHTS, device="cpu", dtype="float32", gpus=str(processes), **settings)


@pytest.fixture(scope="module", params=[2, 3], ids=lambda n: f"{n}-processes")
def engine(request):
    """Both splits: 2 processes split the 2 heads one each; 3 also pad the heads and the tokens. One group at a
    time (rank 0 is in one process group), each started once for the module."""
    started = load_engine(parallel_config(request.param))
    yield started
    started.close()


# What does not depend on the split (LoRAs, a cancel, the golden cases) runs on 2 processes only.
ON_TWO_PROCESSES = pytest.mark.parametrize("engine", [2], indirect=True, ids=["2-processes"])


def latents(source, options: GenerationOptions = GenerationOptions(), **overrides) -> torch.Tensor:
    """A tiny request's video latents on `source`: an engine (its models as it placed them) or loaded models."""
    models, placement = (source.models, source.placement) if isinstance(source, Engine) else (source, None)
    request = build_request(tiny_request(**overrides))
    return generate(request, models, options=options, placement=placement).video_latents


@pytest.mark.e2e
def test_the_engine_runs_workers_with_ulysses_attention(engine):
    group = engine.placement.parallel
    assert group is not None and all(process.is_alive() for process in group.processes)
    assert len(group.processes) == group.world - 1
    for model in engine.models.transformers.values():
        processors = {
            type(block.attn.processor) for block in [*model.transformer_blocks, *model.single_transformer_blocks]
        }
        assert processors == {UlyssesAttnProcessor}


@pytest.mark.e2e
@pytest.mark.parametrize("variant", ["original", "f1"])
def test_one_forward_matches_one_process(engine, tiny_models, variant):
    inputs, text, noisy = section_and_text(tiny_models.transformers[variant], torch.Generator().manual_seed(5))

    def velocity(runner) -> torch.Tensor:
        prepared = runner.prepare_section(inputs, noisy.shape[3], noisy.shape[4])
        return runner.velocity(noisy, torch.tensor([700.0]), torch.tensor([10000.0]), text, prepared)

    expected = velocity(PackedTransformer(tiny_models.transformers[variant]))
    actual = velocity(engine.placement.parallel.transformer(engine.models.transformers[variant], variant))
    assert relative_l2(actual, expected) < MAX_RELATIVE_L2


@pytest.mark.e2e
@pytest.mark.parametrize("step_cache", ["none", "teacache", "magcache"])
def test_a_generation_matches_one_process(engine, tiny_models, step_cache):
    """Rank 0 decides each step cache's skips and the workers follow, so every rank skips the same steps."""
    overrides = {"step_cache": step_cache, "steps": 2 if step_cache == "none" else 6}
    assert relative_l2(latents(engine, **overrides), latents(tiny_models, **overrides)) < MAX_RELATIVE_L2


@pytest.mark.e2e
@ON_TWO_PROCESSES
def test_a_lora_is_merged_on_every_process_and_taken_out_after(engine, tiny_models, tmp_path):
    path = tmp_path / "lora.safetensors"
    save_file(musubi_lora(tiny_models.transformers["original"]), str(path))
    with_lora = {"lora_weights": str(path), "lora_scale": 0.8}
    expected = latents(tiny_models, **with_lora)
    assert relative_l2(latents(engine, **with_lora), expected) < MAX_RELATIVE_L2
    assert relative_l2(expected, latents(tiny_models)) > 1e-3  # the LoRA changes the video
    assert relative_l2(latents(engine), latents(tiny_models)) < MAX_RELATIVE_L2


class Cancelled(BaseException):
    """What Cog raises in a cancelled prediction (its CancelationException is a BaseException too)."""


@pytest.mark.e2e
@ON_TWO_PROCESSES
def test_after_a_cancel_the_next_generation_matches(engine, tiny_models):
    def cancel(section: int, step: int, x0: torch.Tensor) -> None:
        if step == 1:
            raise Cancelled

    with pytest.raises(Cancelled):
        latents(engine, GenerationOptions(on_step=cancel))
    assert relative_l2(latents(engine), latents(tiny_models)) < MAX_RELATIVE_L2


@pytest.mark.e2e
@pytest.mark.parametrize("case_name", golden_case_names())
@ON_TWO_PROCESSES
def test_golden_case(engine, case_name):
    case = load_golden_case(case_name)
    request = build_request(parse_inputs(input_args(case["input"])[1::2]))
    recorder = TensorRecorder(True)
    generate(request, engine.models, options=GenerationOptions(record=recorder), placement=engine.placement)
    assert_matches_golden(recorder.tensors, load_file(GOLDEN / case_name / "expected.safetensors"))


def test_the_setup_line_says_how_the_work_is_split():
    assert describe(2, 24, torch.device("cuda")) == (
        "sequence parallel over 2 GPUs (Ulysses): 24 heads, 12 per GPU; collectives: NCCL"
    )
    assert describe(5, 24, torch.device("cuda")).endswith("24 heads, 5 per GPU (1 padding head); collectives: NCCL")
    assert describe(3, 2, torch.device("cpu")) == (
        "sequence parallel over 3 CPU processes (Ulysses): 2 heads, 1 per process (1 padding head); collectives: gloo"
    )


@pytest.mark.parametrize(("text", "expected"), [("", 1), ("auto", 1), ("1", 1), ("3", 3), (" 2 ", 2)])
def test_gpus_variable(text, expected):
    config = EngineConfig.from_env({"FRAMEPACK_GPUS": text}, device="cpu")
    assert config.resolved_gpus() == expected


@pytest.mark.parametrize("text", ["0", "-1", "two", "1.5"])
def test_a_bad_gpus_variable_is_refused_by_name(text):
    with pytest.raises(ValueError, match="FRAMEPACK_GPUS must be auto or a number"):
        EngineConfig.from_env({"FRAMEPACK_GPUS": text})


def test_a_bad_timeout_is_refused_by_name():
    with pytest.raises(ValueError, match="FRAMEPACK_PARALLEL_TIMEOUT"):
        EngineConfig.from_env({"FRAMEPACK_PARALLEL_TIMEOUT": "soon"})
    with pytest.raises(ValueError, match="FRAMEPACK_PARALLEL_TIMEOUT"):
        EngineConfig.from_env({"FRAMEPACK_PARALLEL_TIMEOUT": "0"})


def test_the_gpus_flag_reaches_the_engine_over_the_variable(monkeypatch, capsys):
    monkeypatch.setenv("FRAMEPACK_GPUS", "4")
    args = build_parser().parse_args(["warm-cache", "--gpus", "2", "--device", "cpu"])
    assert engine_config(args, ("original",)).gpus == "2"
    assert engine_config(build_parser().parse_args(["ui"]), ("original",)).gpus == "4"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["predict", "--gpus", "0"])
    assert "argument --gpus: must be auto or a number of GPUs (1 or more), got '0'" in capsys.readouterr().err
    monkeypatch.setenv("FRAMEPACK_GPUS", "many")
    with pytest.raises(InvalidInput, match="FRAMEPACK_GPUS"):
        engine_config(build_parser().parse_args(["ui"]), ("original",))


def test_more_than_one_gpu_needs_high_vram_mode():
    from framepack.serving.parallel import process_count

    config = EngineConfig(gpus="2", memory_mode="low")
    with pytest.raises(ValueError, match="FRAMEPACK_GPUS=2 needs high-VRAM mode"):
        process_count(config, torch.device("cpu"), "low")
    assert process_count(EngineConfig(gpus="auto", device="cpu"), torch.device("cpu"), "cpu") == 1
    assert process_count(EngineConfig(gpus="3"), torch.device("cpu"), "cpu") == 3
