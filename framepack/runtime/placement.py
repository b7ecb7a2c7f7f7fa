"""Placement: putting loaded models where the memory plan says, once after loading, and fitting them to each
request.

High VRAM moves every model to the GPU (a second transformer variant where there is room, else it waits in host
memory and is swapped in when a request asks for it). In low-VRAM mode the weights stay in one page-locked host
copy and visit the GPU only while used: the transformer's and the Llama's blocks stream with the next block
prefetched on a side CUDA stream, so transfers overlap compute (`streaming.py`, diffusers group offloading).
Within a memory budget as many transformer blocks as fit stay on the GPU, then the VAE and the encoders
(`residency.py`). Before each request the held blocks and the VAE's tiling are fitted to its size
(`make_resident`). What placement (and acceleration, `acceleration.accelerate_models`) did is one `Placement`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch

from ..models import FramePackModels, all_blocks
from . import residency, streaming
from .compilation import CompileRecord
from .memory import MemoryPlan
from .memory_costs import GIB, Tiling, decode_tiling, working_set_bytes

logger = logging.getLogger(__name__)

ALLOCATOR_CONF_ENV = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")
# The reference's low-VRAM tiles (diffusers' default), until a request's size is known.
REFERENCE_TILING = (256, 192)


@dataclass
class Placement:
    """Where an engine's models sit and how they run: what placement and acceleration did, and what each request
    fits (the held blocks, the VAE's tiling, the resident variant).

    plan: the memory plan followed. streamers: variant -> `streaming.BlockStreamer` of its blocks (low VRAM).
    residency: what the low-VRAM budget holds. decode_tiling: the VAE's tiling now (low VRAM; None: whole frames).
    host_weights: page-locked host copies of encoders streamed layer by layer, kept as long as the placement.
    compile_record: the blocks' `compilation.CompileRecord` when they are compiled; accelerations: variant ->
    `acceleration.Acceleration`. parallel: the worker group when the blocks run on several GPUs
    (`serving.parallel.SequenceParallel`).
    """

    plan: MemoryPlan
    streamers: dict[str, streaming.BlockStreamer] = field(default_factory=dict)
    residency: residency.Residency | None = None
    decode_tiling: Tiling = None
    host_weights: list[streaming.HostWeights] = field(default_factory=list)
    compile_record: CompileRecord | None = None
    accelerations: dict = field(default_factory=dict)
    parallel: object | None = None

    @classmethod
    def on_cpu(cls) -> Placement:
        """Models left where they were loaded, on the CPU (the tests' tiny models)."""
        return cls(MemoryPlan("cpu", "no GPU: everything runs on the CPU", resident_variants=2))


def _bytes(*modules: torch.nn.Module) -> int:
    return sum(t.nbytes for module in modules for t in [*module.parameters(), *module.buffers()])


def model_sizes(models: FramePackModels) -> residency.ModelSizes:
    """The bytes `residency.plan_residency` weighs, from loaded models (the first variant's transformer)."""
    transformer = next(iter(models.transformers.values()))
    blocks = all_blocks(transformer)
    encoders = (models.text_encoder, models.text_encoder_2, models.image_encoder)
    return residency.ModelSizes(
        blocks=tuple(_bytes(block) for block in blocks),
        transformer_other=_bytes(transformer) - _bytes(*blocks),
        vae=_bytes(models.vae),
        encoders=_bytes(*encoders),
        # The two text encoders visit together (one visit for all prompts), the image encoder alone.
        encoders_at_once=max(_bytes(models.text_encoder, models.text_encoder_2), _bytes(models.image_encoder)),
    )


def _stream_encoder(module: torch.nn.Module, device: torch.device) -> streaming.HostWeights:
    """Pack `module` into page-locked host memory, then let diffusers stream it block by block; returns the host
    copy, which must live as long as the module.

    Its root forward is what the pipeline calls, so diffusers learns the block order on the first call and
    prefetches the next block on a side stream from then on. diffusers' pin_memory() leaves the already
    page-locked tensors as they are, so no second host copy appears.
    """
    from diffusers.hooks import apply_group_offloading

    host = streaming.HostWeights([module], pin=True)
    apply_group_offloading(
        module,
        onload_device=device,
        offload_device=torch.device("cpu"),
        offload_type="block_level",
        num_blocks_per_group=1,
        use_stream=True,
    )
    return host


def _place_low_vram(models: FramePackModels, placement: Placement, float8: bool) -> None:
    """Install streaming on models loaded on the host; their weights stay in one page-locked copy there.

    The Llama, CLIP and SigLIP stream block by block (diffusers group offloading), or, where the plan says they
    fit beside the held blocks, come to the GPU whole for each call (`streaming.OnDeviceWhileCalled`). The
    transformer's blocks stream through two GPU slots (`streaming.BlockStreamer`): the staged forward calls
    blocks directly, which diffusers' prefetching (it learns the order from the root forward) never sees.
    The VAE is on the GPU only inside encode and decode. With the plan's budget, what fits stays resident instead
    (`residency.plan_residency`): the first blocks (held by one variant at a time, `make_resident`), then the
    VAE and the encoders. With `float8` the blocks are quantised first (on the GPU), so half the bytes are held
    or streamed. The decision is logged and kept on `placement.residency`.
    """
    device, budget_gib = models.device, placement.plan.budget_gib
    if float8:
        _quantize_for_streaming(models, device)
    sizes = model_sizes(models)
    budget = int(budget_gib * GIB) if budget_gib is not None else 0
    plan = residency.plan_residency(budget, sizes)
    placement.residency = plan
    if budget_gib is None:
        logger.info("low-VRAM placement: every block streamed")
    else:
        seconds = plan.streamed_bytes_per_forward / (streaming.host_to_device_bandwidth(device) * 1e9)
        logger.info(f"low-VRAM placement: {plan.describe()}; copying them takes {seconds:.2f} s per forward")
    for module in (models.text_encoder, models.text_encoder_2, models.image_encoder):
        if plan.encoders_resident:
            module.to(device)
        elif plan.encoders_visit:  # one copy in per request (0.3 s for the Llama at 55 GB/s), not per layer
            streaming.OnDeviceWhileCalled(module, device, ("forward",), pin=True)
        else:
            placement.host_weights.append(_stream_encoder(module, device))
    held = min(plan.resident_blocks, plan.total_blocks - 1)  # one block streams, so the streamer has a slot
    placement.streamers = {
        variant: streaming.BlockStreamer(model, device, pin=True, resident_blocks=held)
        for variant, model in models.transformers.items()
    }
    next(iter(placement.streamers.values())).hold()
    if plan.vae_resident:
        models.vae.to(device)
    else:
        streaming.OnDeviceWhileCalled(models.vae, device, ("encode", "decode"), pin=True)
    placement.decode_tiling = REFERENCE_TILING  # until a request's size is known (`make_resident`)
    set_decode_tiling(models.vae, placement.decode_tiling)


def set_decode_tiling(vae, tiling: Tiling) -> None:
    """Decode whole frames (None) or in square spatial tiles of (tile, stride) pixels, as `memory_costs.decode_tiling`
    chose. Tiles give slightly different pixels than whole frames; the reference tiles in low-VRAM mode, with
    diffusers' default (256, 192). The VAE's encode follows the same setting (diffusers has one switch); it runs
    before sampling, in the same room, on 17-frame chunks as a decode makes 17-frame tiles, with one layer fewer per
    block than the decoder (diffusers' code; its peak was not measured)."""
    if tiling is None:
        vae.disable_tiling()
        return
    tile, stride = tiling
    vae.enable_tiling(
        tile_sample_min_height=tile,
        tile_sample_min_width=tile,
        tile_sample_stride_height=stride,
        tile_sample_stride_width=stride,
    )


def _quantize_for_streaming(models, device: torch.device) -> None:
    """FP8 blocks for low-VRAM mode: quantised before the weights are packed for streaming (`float8.py`)."""
    from ..models.float8 import quantize_transformer_blocks
    from .acceleration import float8_problem

    problem = float8_problem(device, models.dtype)
    if problem is not None:
        logger.warning(f"FP8 off: {problem}")
        return
    for model in models.transformers.values():
        quantize_transformer_blocks(model, via=device)


def grow_segments_in_place() -> None:
    """Let the CUDA caching allocator grow segments in place (`expandable_segments`), unless the environment's
    allocator configuration (PYTORCH_ALLOC_CONF or PYTORCH_CUDA_ALLOC_CONF) already decides it. Process-wide.

    Low-VRAM mode alternates between sampling (slots, activations) and decoding (VAE tiles), whose blocks have
    different sizes: with fixed segments the freed ones fragment, and under a 4 GiB cap a 202 MiB allocation failed
    with 0.75 GiB free in pieces (BENCHMARKS.md). Applies to segments allocated from now on.
    """
    if any("expandable_segments" in os.environ.get(name, "") for name in ALLOCATOR_CONF_ENV):
        return
    # The accelerator-wide name is the current one (torch 2.13 warns on the CUDA one); older torch has only that.
    configure = getattr(torch._C, "_accelerator_setAllocatorSettings", None)
    (configure or torch.cuda.memory._set_allocator_settings)("expandable_segments:True")


def place_models(models: FramePackModels, plan: MemoryPlan, float8: bool = False) -> Placement:
    """Put freshly loaded (host-resident) models where `plan` says, once after loading, and return what was done.
    `float8`: in low-VRAM mode the blocks are quantised before they are packed (in high-VRAM mode
    `acceleration.accelerate_models` does it)."""
    placement = Placement(plan)
    device = models.device
    if plan.mode == "cpu":
        return placement
    if plan.mode == "low":
        if device.type == "cuda":
            grow_segments_in_place()
        _place_low_vram(models, placement, float8)
        return placement
    for module in (models.text_encoder, models.text_encoder_2, models.image_encoder, models.vae):
        module.to(device)
    for model in list(models.transformers.values())[: plan.resident_variants]:
        model.to(device)
    return placement


def make_resident(
    models: FramePackModels, placement: Placement, variant: str, size: tuple[int, int, int] | None = None
) -> None:
    """Before a generation of `variant` (of `size`, `memory.request_size`): in high-VRAM mode with room for one
    transformer, move it to the GPU and the others back to the host; in low-VRAM mode, let its streamer hold
    the resident blocks instead of another variant's, as many as fit beside the request's working set, and give
    the VAE the fastest tiling that fits beside them."""
    plan = placement.plan
    if plan.mode == "low":
        for name, streamer in placement.streamers.items():
            if name != variant:
                streamer.drop()
        streamer = placement.streamers[variant]
        setup = placement.residency
        if size is not None and setup is not None and plan.budget_gib is not None:
            sizes = model_sizes(models)
            fitted = residency.blocks_for_working_set(setup, sizes, working_set_bytes(*size))
            held = min(fitted, len(streamer.blocks) - 1)  # one block streams, so the streamer has a slot
            tiling = decode_tiling(residency.decode_room(setup, sizes, held), size[0], size[1])
            if (held, tiling) != (streamer.resident_blocks, placement.decode_tiling):
                tiles = "whole frames" if tiling is None else f"{tiling[0]}-pixel tiles"
                logger.info(f"{size[0]}x{size[1]} request (window {size[2]}): {held} blocks held, VAE decodes {tiles}")
            streamer.set_resident_blocks(held)
            set_decode_tiling(models.vae, tiling)
            placement.decode_tiling = tiling
        streamer.hold()
        return
    if plan.mode != "high" or plan.resident_variants >= len(models.transformers):
        return
    for name, model in models.transformers.items():
        if name != variant:
            model.to("cpu")
    torch.cuda.empty_cache()
    models.transformers[variant].to(models.device)
