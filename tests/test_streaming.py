"""Low-VRAM streaming bookkeeping on the CPU: one host copy of the weights, and outputs bit-identical to resident.

The CUDA side (page-locking, side-stream copies, events) is measured by the benchmark on a GPU; here the same
slots, views and block order run with plain copies, so any mix-up of blocks, slots or offsets changes results.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from helpers.golden import assert_matches_golden, golden_case_names, load_golden_case
from helpers.models import peft_lora, section_and_text
from helpers.paths import GOLDEN
from helpers.requests import tiny_request
from safetensors.torch import load_file

from framepack.core.magcache import MagCacheSettings, skipped_calls
from framepack.core.request import build_request
from framepack.core.step_cache import StepCacheSettings
from framepack.runtime import streaming
from framepack.runtime.memory import MemoryPlan
from framepack.runtime.memory_costs import GIB, working_set_bytes
from framepack.runtime.pipeline import GenerationOptions, TensorRecorder, generate
from framepack.runtime.placement import Placement, make_resident, model_sizes
from framepack.runtime.residency import plan_residency
from framepack.runtime.transformer import PackedTransformer

CPU = torch.device("cpu")


def _low_vram(streamers: dict, budget_gib: float | None = 1.0) -> Placement:
    """A low-VRAM placement of already streamed blocks (the CPU stands in for the GPU)."""
    return Placement(MemoryPlan("low", "test", budget_gib=budget_gib), streamers=streamers)


REQUEST = tiny_request(prompt="a dancer", seed=5, total_video_length_seconds=1.2, steps=3, step_cache="teacache")


def _in_buffer(tensor: torch.Tensor, buffer: torch.Tensor) -> bool:
    start = buffer.data_ptr()
    return start <= tensor.data_ptr() and tensor.data_ptr() + tensor.nbytes <= start + buffer.numel()


def test_host_weights_hold_each_module_once_in_one_buffer(tiny_models):
    model = copy.deepcopy(tiny_models.transformers["original"])
    before = {name: t.clone() for name, t in model.state_dict().items()}
    host = streaming.HostWeights([model.x_embedder, model.transformer_blocks[0]], pin=False)
    assert not host.pinned
    tensors = [*model.x_embedder.parameters(), *model.transformer_blocks[0].parameters()]
    assert all(_in_buffer(t, host.buffer) for t in tensors)
    # Exactly the tensors' bytes (each start aligned), groups back to back in module order.
    assert host.buffer.numel() == sum(streaming._align(t.nbytes) for t in tensors)
    first, second = host.groups
    assert first.offset == 0 and second.offset == first.nbytes
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def _packed(module):
    """A copy whose weights sit in a HostWeights buffer but stay put (the resident reference).

    CPU kernels pick their code path by the weights' address alignment, so float32 results are only
    bit-comparable between copies laid out alike: both sides use the same 512-byte aligned packing.
    """
    packed = copy.deepcopy(module)
    packed._host = streaming.HostWeights([packed], pin=False)
    return packed


def _streamed(model, resident_blocks: int = 0):
    """A copy whose blocks stream through two slots (but the first `resident_blocks`, held), and its streamer."""
    streamed = copy.deepcopy(model)
    streamer = streaming.BlockStreamer(streamed, CPU, pin=False, resident_blocks=resident_blocks)
    streamer.hold()
    return streamed, streamer


# Every block streams; the first held (3 blocks stream: an odd count); two held (the tiny model has 4 blocks).
RESIDENT_BLOCKS = [0, 1, 2]


@pytest.mark.parametrize("resident_blocks", RESIDENT_BLOCKS)
@pytest.mark.parametrize("step_cache", ["none", "teacache", "magcache"])
def test_streamed_blocks_give_bit_identical_velocities(tiny_models, step_cache, resident_blocks):
    model = _packed(tiny_models.transformers["original"])
    streamed, streamer = _streamed(tiny_models.transformers["original"], resident_blocks)
    assert len(streamer.streamed_groups) == len(streamer.blocks) - resident_blocks
    inputs, text, latents = section_and_text(model, torch.Generator().manual_seed(2))
    guidance = torch.tensor([10000.0])
    resident_runner, streamed_runner = PackedTransformer(model), PackedTransformer(streamed, streamer=streamer)
    assert resident_runner.streamer is None and streamed_runner.streamer is not None
    steps = 6
    settings = StepCacheSettings(step_cache, teacache_threshold=0.5)
    caches = [settings.branch_states("original", steps)["positive"] for _ in range(2)]
    block_runs = []
    streamed.transformer_blocks[0].register_forward_pre_hook(lambda *_: block_runs.append(1))
    with streamed_runner.on_device():
        prepared = [r.prepare_section(inputs, 8, 12) for r in (resident_runner, streamed_runner)]
        x = latents
        for step in range(steps):  # a step cache skips some steps' blocks: the slots must stay in step
            timestep = torch.tensor([1000.0 - 150 * step])
            outs = [
                r.velocity(x, timestep, guidance, text, p, c)
                for r, p, c in zip((resident_runner, streamed_runner), prepared, caches)
            ]
            assert torch.equal(outs[0], outs[1]), f"step {step}"
            x = x - 0.1 * outs[0]
    # A skipped step streams no block: MagCache skips steps 1, 3 and 4 of 6 without looking at the weights.
    expected_runs = {"none": steps, "magcache": steps - len(skipped_calls("original", steps, MagCacheSettings()))}
    assert len(block_runs) == expected_runs[step_cache] if step_cache in expected_runs else len(block_runs) < steps
    assert expected_runs["magcache"] == 3
    # Outside on_device every streamed weight is back in the host buffer; held blocks stay in their own.
    buffer = streamer.host.buffer
    held = [t for block in streamer.blocks[:resident_blocks] for t in block.parameters()]
    assert all(_in_buffer(t, buffer) for t in set(streamed.parameters()) - set(held))
    assert all(_in_buffer(t, streamer._held) for t in held)
    streamer.drop()
    assert all(_in_buffer(t, buffer) for t in streamed.parameters())


@pytest.mark.parametrize("resident_blocks", [0, 2])
def test_streamed_generation_with_lora_equals_resident(tiny_models, tmp_path, resident_blocks):
    from safetensors.torch import save_file

    lora_file = tmp_path / "lora.safetensors"
    save_file(peft_lora(tiny_models.transformers["original"]), str(lora_file))
    request = build_request({**REQUEST, "lora_weights": str(lora_file), "step_cache": "teacache"})
    resident_models = dataclasses.replace(
        tiny_models,
        vae=_packed(tiny_models.vae),
        transformers={"original": _packed(tiny_models.transformers["original"])},
    )
    resident = generate(request, resident_models)
    vae = copy.deepcopy(tiny_models.vae)
    streaming.OnDeviceWhileCalled(vae, CPU, ("encode", "decode"), pin=False)
    streamed_model, streamer = _streamed(tiny_models.transformers["original"], resident_blocks)
    models = dataclasses.replace(tiny_models, vae=vae, transformers={"original": streamed_model})
    placement = _low_vram({"original": streamer})
    streamed = generate(request, models, placement=placement)
    assert torch.equal(streamed.video_latents, resident.video_latents)
    assert torch.equal(streamed.frames, resident.frames)
    without_lora = generate(build_request({**REQUEST, "step_cache": "teacache"}), models, placement=placement)
    assert not torch.equal(without_lora.video_latents, streamed.video_latents)  # the LoRA acted when streamed
    # The LoRA merged into the held blocks' device copy and was taken out again: their host copy is untouched.
    streamer.drop()
    assert torch.equal(generate(request, models, placement=placement).video_latents, streamed.video_latents)


@pytest.mark.parametrize("background", [False, True])
def test_a_streamed_vae_decodes_each_section_in_one_visit_and_reuses_shared_tiles(tiny_models, background):
    """The VAE's weights come to the device once per section decode (not per call), so tiles two sections share
    are decoded once, as with a resident VAE, and the frames equal the reference's whole-section decode. In the
    background the tiles decoded ahead for the next section use the same visit."""
    from framepack.core.progress import ProgressReporter
    from framepack.runtime.pipeline import GenerationOptions

    # A window of 9 (the default): a multiple of the VAE's tile stride, so whole tiles recur.
    request = build_request(
        {**REQUEST, "step_cache": "none", "latent_window_size": 9, "steps": 2, "total_video_length_seconds": 3.6}
    )
    resident_models = dataclasses.replace(tiny_models, vae=_packed(tiny_models.vae))
    reference = generate(request, resident_models, options=GenerationOptions(reuse_decoded_tiles=False))
    vae = copy.deepcopy(tiny_models.vae)
    streaming.OnDeviceWhileCalled(vae, CPU, ("encode", "decode"), pin=False)
    assert streaming.streams_weights(vae) and not streaming.streams_weights(tiny_models.vae)
    used_weights = []
    vae.decoder.register_forward_pre_hook(lambda module, _: used_weights.append(module.conv_in.conv.weight.data_ptr()))
    visits = _count_visits(vae)
    lines: list[str] = []
    progress = ProgressReporter(request.num_sections, 2, write=lines.append)
    options = GenerationOptions(background_decode=background)
    ours = generate(request, dataclasses.replace(tiny_models, vae=vae), progress=progress, options=options)
    assert torch.equal(ours.frames, reference.frames)
    assert any("ahead of their section" in line and "(0 ahead" not in line for line in lines) == background
    tile_lines = [line for line in lines if line.startswith("VAE decode:") and "reused" in line]
    assert tile_lines and not tile_lines[0].endswith(" 0 reused"), tile_lines
    assert len(visits) == 1 + request.num_sections  # the start image's encode, then one visit per section
    host = vae._framepack_on_device.host
    assert all(_in_buffer(t, host.buffer) for t in vae.parameters())  # back on the host after each decode
    assert len(used_weights) > request.num_sections  # several tiles a section, each from the visiting copy
    assert not any(_in_buffer_at(ptr, host.buffer) for ptr in used_weights)


def _in_buffer_at(pointer: int, buffer: torch.Tensor) -> bool:
    return buffer.data_ptr() <= pointer < buffer.data_ptr() + buffer.numel()


def test_a_session_copies_the_weights_in_once_however_deeply_it_nests(tiny_models):
    vae = copy.deepcopy(tiny_models.vae)
    helper = streaming.OnDeviceWhileCalled(vae, CPU, ("decode",), pin=False)
    with streaming.weights_on_device(vae):
        visiting = vae.decoder.conv_in.conv.weight.data_ptr()
        assert not _in_buffer_at(visiting, helper.host.buffer)
        latents = torch.randn(1, 16, 2, 8, 12)
        seen = []
        vae.decoder.register_forward_pre_hook(lambda module, _: seen.append(module.conv_in.conv.weight.data_ptr()))
        vae.decode(latents)  # a wrapped call inside the session uses the session's copy
        assert seen == [visiting] and vae.decoder.conv_in.conv.weight.data_ptr() == visiting
    assert _in_buffer_at(vae.decoder.conv_in.conv.weight.data_ptr(), helper.host.buffer)
    with streaming.weights_on_device(tiny_models.vae):  # a resident module: nothing to do
        pass


def test_stream_timings_count_the_streamed_blocks_run(tiny_models):
    streamed, streamer = _streamed(tiny_models.transformers["original"], resident_blocks=1)
    streamer.timings = streaming.StreamTimings()
    inputs, text, latents = section_and_text(streamed, torch.Generator().manual_seed(2))
    runner = PackedTransformer(streamed, streamer=streamer)
    with runner.on_device():
        prepared = runner.prepare_section(inputs, 8, 12)
        for step in range(3):
            runner.velocity(latents, torch.tensor([900.0 - 100 * step]), torch.tensor([10000.0]), text, prepared)
    assert streamer.timings.blocks == 3 * (len(streamer.blocks) - 1)
    assert streamer.timings.wait_s == streamer.timings.copy_s == 0.0  # no CUDA events off the GPU


def test_variants_take_turns_holding_their_blocks(tiny_models):
    """Low-VRAM mode with a budget: one variant's first blocks are held at a time, swapped per request."""
    request = {**REQUEST, "step_cache": "none"}
    resident = {
        variant: generate(
            build_request({**request, "model_variant": variant}),
            dataclasses.replace(tiny_models, transformers={variant: _packed(tiny_models.transformers[variant])}),
        )
        for variant in ("original", "f1")
    }
    streamed = {variant: _streamed(tiny_models.transformers[variant], 2) for variant in ("original", "f1")}
    models = dataclasses.replace(tiny_models, transformers={variant: pair[0] for variant, pair in streamed.items()})
    placement = _low_vram({variant: pair[1] for variant, pair in streamed.items()})
    for variant in ("f1", "original", "f1"):
        make_resident(models, placement, variant)
        held = {name for name, streamer in placement.streamers.items() if streamer._held is not None}
        assert held == {variant}
        result = generate(build_request({**request, "model_variant": variant}), models, placement=placement)
        assert torch.equal(result.video_latents, resident[variant].video_latents), variant


def _velocities(runners, inputs, text, latents, steps: int = 3) -> list[list[torch.Tensor]]:
    """Each runner's velocities over `steps` steps of one section, all fed the first runner's trajectory."""
    guidance, outs = torch.tensor([10000.0]), [[] for _ in runners]
    prepared = [runner.prepare_section(inputs, 8, 12) for runner in runners]
    x = latents
    for step in range(steps):
        timestep = torch.tensor([1000.0 - 150 * step])
        for out, runner, section in zip(outs, runners, prepared):
            out.append(runner.velocity(x, timestep, guidance, text, section))
        x = x - 0.1 * outs[0][-1]
    return outs


def test_compiled_blocks_stream_without_recompiling(tiny_models):
    """Compiled blocks take their weights as graph inputs: streamed or held, they give the compiled resident
    result, and re-pointing the weights (each block, each step, a new number held) builds no new graph."""
    from framepack.runtime.compilation import CompileRecord, compile_blocks

    record = CompileRecord()
    model = _packed(tiny_models.transformers["original"])
    streamed, streamer = _streamed(tiny_models.transformers["original"], resident_blocks=1)
    for each in (model, streamed):
        compile_blocks(each, record)
    inputs, text, latents = section_and_text(model, torch.Generator().manual_seed(3))
    runners = PackedTransformer(model), PackedTransformer(streamed, streamer=streamer)
    graphs = []
    for held in (1, 3, 0):
        streamer.set_resident_blocks(held)
        with runners[1].on_device():
            resident, streamed_out = _velocities(runners, inputs, text, latents)
        assert all(torch.equal(a, b) for a, b in zip(resident, streamed_out)), f"{held} blocks held"
        graphs.append(record.graphs)
    assert record.graphs > 0 and not record.failures
    assert graphs == [graphs[0]] * 3  # every graph was built in the first round


def test_float8_blocks_stream_as_they_run_resident(tiny_models):
    """FP8 layers keep their weights in buffers, which stream like parameters (half the bytes per block)."""
    from framepack.models.float8 import quantize_transformer_blocks

    quantized = copy.deepcopy(tiny_models.transformers["original"])
    quantize_transformer_blocks(quantized, via=CPU)
    model = _packed(quantized)
    streamed, streamer = _streamed(quantized, resident_blocks=2)
    full_size = _streamed(tiny_models.transformers["original"])[1]
    assert streamer.streamed_bytes < full_size.streamed_bytes / 2 * 1.5  # 2 of 4 blocks, each about halved
    inputs, text, latents = section_and_text(model, torch.Generator().manual_seed(4))
    runners = PackedTransformer(model), PackedTransformer(streamed, streamer=streamer)
    with runners[1].on_device():
        resident, streamed_out = _velocities(runners, inputs, text, latents)
    assert all(torch.equal(a, b) for a, b in zip(resident, streamed_out))


def test_held_blocks_fit_each_request_size(tiny_models):
    """With a budget, a request of a larger size holds fewer blocks and a smaller one more, within the budget;
    the video is the resident one either way."""
    model, streamer = _streamed(tiny_models.transformers["original"], resident_blocks=1)
    models = dataclasses.replace(tiny_models, transformers={"original": model})
    sizes = model_sizes(models)
    large, small = (416, 960, 9), (208, 480, 9)  # the widest buckets of the 640 and 320 families
    # Room for the working set of the large size and the slots, not one block more.
    budget = working_set_bytes(*large) + sizes.transformer_other + 2 * max(sizes.blocks) + sizes.blocks[0] // 2
    placement = _low_vram({"original": streamer}, budget_gib=budget / GIB)
    placement.residency = plan_residency(budget, sizes, working_set_bytes(*large))
    request = build_request({**REQUEST, "step_cache": "none"})
    resident_model = _packed(tiny_models.transformers["original"])
    resident = generate(request, dataclasses.replace(tiny_models, transformers={"original": resident_model}))
    for size, held in ((small, 3), (large, 0), (small, 3)):  # the tiny model has 4 blocks; one always streams
        make_resident(models, placement, "original", size)
        assert streamer.resident_blocks == held and (streamer._held is not None) == (held > 0)
        streamed = generate(request, models, placement=placement)
        assert torch.equal(streamed.video_latents, resident.video_latents), size


def _count_visits(module) -> list[int]:
    """A list that grows by one each time `module`'s `OnDeviceWhileCalled` copies its weights in."""
    host, visits = module._framepack_on_device.host, []
    onto_device = host.onto_device

    def counted(*args, **kwargs):
        visits.append(1)
        return onto_device(*args, **kwargs)

    host.onto_device = counted
    return visits


def test_encoders_that_visit_whole_give_the_resident_video(tiny_models):
    """Encoders placed with `Residency.encoders_visit` come to the device in one copy, their inputs moved with
    them: the same embeddings, so the same video. The text encoders come in once for all of a request's prompts
    (here the prompt and, with real CFG, the negative one)."""
    request = build_request({**REQUEST, "step_cache": "none", "cfg_scale": 2.0, "negative_prompt": "blur"})
    encoders = ("text_encoder", "text_encoder_2", "image_encoder")
    resident = generate(
        request, dataclasses.replace(tiny_models, **{name: _packed(getattr(tiny_models, name)) for name in encoders})
    )
    visiting = {name: copy.deepcopy(getattr(tiny_models, name)) for name in encoders}
    used_weights = []
    for module in visiting.values():
        streaming.OnDeviceWhileCalled(module, CPU, ("forward",), pin=False)
        first = next(module.parameters())  # its own module runs inside the wrapped forward
        owner = next(m for m in module.modules() if any(p is first for p in m.parameters(recurse=False)))
        owner.register_forward_pre_hook(lambda _module, _args, first=first: used_weights.append(first.data_ptr()))
    visits = {name: _count_visits(module) for name, module in visiting.items()}
    ours = generate(request, dataclasses.replace(tiny_models, **visiting))
    assert torch.equal(ours.video_latents, resident.video_latents)
    assert {name: len(count) for name, count in visits.items()} == dict.fromkeys(encoders, 1)
    buffers = [module._framepack_on_device.host.buffer for module in visiting.values()]
    assert used_weights and not any(_in_buffer_at(ptr, buffer) for ptr in used_weights for buffer in buffers)
    for module, buffer in zip(visiting.values(), buffers):  # back in their host buffers between calls
        assert all(_in_buffer(t, buffer) for t in module.parameters())


def test_the_vae_decodes_whole_frames_where_the_budget_holds_them(tiny_models):
    """Per request, the VAE gets the fastest spatial tiling whose decode fits beside what stays on the GPU."""
    model, streamer = _streamed(tiny_models.transformers["original"], resident_blocks=1)
    vae = copy.deepcopy(tiny_models.vae)
    models = dataclasses.replace(tiny_models, vae=vae, transformers={"original": model})
    budget = 10 * GIB  # whole frames of a 320-family request fit (4.9 GiB); a 640 one's (19.5 GiB) do not
    placement = _low_vram({"original": streamer}, budget_gib=10.0)
    placement.residency = plan_residency(budget, model_sizes(models))
    for size, tiling in (((208, 480, 9), None), ((416, 960, 9), (256, 192)), ((208, 480, 9), None)):
        make_resident(models, placement, "original", size)
        assert placement.decode_tiling == tiling
        assert vae.use_tiling == (tiling is not None)
    assert (vae.tile_sample_min_height, vae.tile_sample_stride_width) == (256, 192)  # as the 640 request left it


@pytest.mark.parametrize("case_name", [name for name in golden_case_names() if name.startswith("magcache")])
def test_magcache_golden_cases_with_streamed_blocks(case_name, tiny_models, block_stack_runs):
    """Low VRAM: every block streamed, and the block stack runs (and streams) only on the steps MagCache keeps."""
    case = load_golden_case(case_name)
    variant = case["input"]["model_variant"]
    streamed_model, streamer = _streamed(tiny_models.transformers[variant])
    models = dataclasses.replace(tiny_models, transformers={variant: streamed_model})
    recorder = TensorRecorder(True)
    placement = _low_vram({variant: streamer})
    generate(build_request(case["input"]), models, placement=placement, options=GenerationOptions(record=recorder))
    assert_matches_golden(recorder.tensors, load_file(GOLDEN / case_name / "expected.safetensors"))
    assert block_stack_runs == case["expected"]["transformer_block_stack_calls_per_section"]
