"""Memory placement: high-VRAM (everything resident on the GPU) or low-VRAM (weights stream from host memory).

The choice is a pure function of the GPU's memory and an override (`FRAMEPACK_MEMORY_MODE=auto|high|low|<GiB>`,
`config.EngineConfig.memory_mode`); the placement itself is applied once after loading. In low-VRAM mode the
weights stay in one page-locked host copy and visit the GPU only while used: the transformer's and the Llama's
blocks stream with the next block prefetched on a side CUDA stream, so transfers overlap compute
(`streaming.py`, diffusers group offloading). Within a memory budget as many transformer blocks as fit stay on
the GPU, then the VAE and the encoders (`residency.py`). `auto` below 60 GiB budgets the GPU's free memory at
setup less a reserve (`memory_costs.py` holds the thresholds); `low` streams everything, the least memory the
engine runs in. Before each request the held blocks are fitted to its size (`make_resident`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from ..config import ENV, MEMORY_MODES, EngineConfig, memory_budget_gib
from ..core.planner import bucket_table
from ..models import all_blocks
from . import residency, streaming
from .memory_costs import COSTS, GIB, decode_tiling, working_set_bytes

logger = logging.getLogger(__name__)

MEMORY_MODE_ENV = ENV["memory_mode"]
ALLOCATOR_CONF_ENV = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")


@dataclass(frozen=True)
class MemoryPlan:
    """mode: "cpu", "high" or "low"; resident_variants: how many transformers may stay on the GPU at once;
    budget_gib (low mode): the GPU memory to fill with resident weights (`residency.py`), None to stream all."""

    mode: str
    reason: str
    resident_variants: int = 1
    budget_gib: float | None = None


def choose_memory_plan(
    device: torch.device, total_gib: float | None, override: str = "auto", free_gib: float | None = None
) -> MemoryPlan:
    """Pick the memory mode for a device with `total_gib` of memory, `free_gib` of it free (None on the CPU;
    free defaults to the total)."""
    budget = memory_budget_gib(override)
    if override not in MEMORY_MODES and budget is None:
        raise ValueError(
            f"{MEMORY_MODE_ENV} must be one of {', '.join(MEMORY_MODES)} or a budget in GiB, got {override!r}"
        )
    if device.type != "cuda":
        return MemoryPlan("cpu", "no GPU: everything runs on the CPU", resident_variants=2)
    both = 2 if total_gib is not None and total_gib >= COSTS.both_variants_min_gib else 1
    if budget is not None:
        if budget >= COSTS.high_vram_min_gib:
            return MemoryPlan(
                "high", f"budget {budget:g} GiB >= {COSTS.high_vram_min_gib:.0f} GiB: all models resident"
            )
        return MemoryPlan("low", f"budget {budget:g} GiB from {MEMORY_MODE_ENV}", budget_gib=budget)
    if override != "auto":
        return MemoryPlan(
            override,
            f"forced by {MEMORY_MODE_ENV}={override} (GPU has {total_gib:.0f} GiB)",
            both if override == "high" else 1,
        )
    if total_gib >= COSTS.high_vram_min_gib:
        return MemoryPlan(
            "high", f"GPU has {total_gib:.0f} GiB >= {COSTS.high_vram_min_gib:.0f} GiB: all models resident", both
        )
    free = total_gib if free_gib is None else min(free_gib, total_gib)
    budget = max(free - COSTS.reserved_gib, 0.0)
    return MemoryPlan(
        "low",
        f"GPU has {total_gib:.0f} GiB < {COSTS.high_vram_min_gib:.0f} GiB: budget {budget:.1f} GiB "
        f"({free:.1f} GiB free less {COSTS.reserved_gib} GiB reserved), the rest streams",
        budget_gib=budget,
    )


def _bytes(*modules: torch.nn.Module) -> int:
    return sum(t.nbytes for module in modules for t in [*module.parameters(), *module.buffers()])


def model_sizes(models) -> residency.ModelSizes:
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


def _stream_encoder(module: torch.nn.Module, device: torch.device) -> None:
    """Pack `module` into page-locked host memory, then let diffusers stream it block by block.

    Its root forward is what the pipeline calls, so diffusers learns the block order on the first call and
    prefetches the next block on a side stream from then on. diffusers' pin_memory() leaves the already
    page-locked tensors as they are, so no second host copy appears.
    """
    from diffusers.hooks import apply_group_offloading

    module._framepack_host_weights = streaming.HostWeights([module], pin=True)  # lives as long as the module
    apply_group_offloading(
        module,
        onload_device=device,
        offload_device=torch.device("cpu"),
        offload_type="block_level",
        num_blocks_per_group=1,
        use_stream=True,
    )


def apply_low_vram(
    models, device: torch.device, budget_gib: float | None = None, float8: bool = False
) -> residency.Residency:
    """Install streaming on models loaded on the host; their weights stay in one page-locked copy there.

    The Llama, CLIP and SigLIP stream block by block (diffusers group offloading), or, where the plan says they
    fit beside the held blocks, come to the GPU whole for each call (`streaming.OnDeviceWhileCalled`). The
    transformer's blocks stream through two GPU slots (`streaming.BlockStreamer`): the staged forward calls
    blocks directly, which diffusers' prefetching (it learns the order from the root forward) never sees.
    The VAE is on the GPU only inside encode and decode. With `budget_gib`, what fits stays resident instead
    (`residency.plan_residency`): the first blocks (held by one variant at a time, `make_resident`), then the
    VAE and the encoders. With `float8` the blocks are quantised first (on the GPU), so half the bytes are held
    or streamed. Returns the decision, which is also logged and kept on `models.residency`.
    """
    if float8:
        _quantize_for_streaming(models, device)
    sizes = model_sizes(models)
    budget = int(budget_gib * GIB) if budget_gib is not None else 0
    plan = residency.plan_residency(budget, sizes)
    models.residency = plan
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
            _stream_encoder(module, device)
    held = min(plan.resident_blocks, plan.total_blocks - 1)  # one block streams, so the streamer has a slot
    models.streamers = {
        variant: streaming.BlockStreamer(model, device, pin=True, resident_blocks=held)
        for variant, model in models.transformers.items()
    }
    next(iter(models.streamers.values())).hold()
    if plan.vae_resident:
        models.vae.to(device)
    else:
        streaming.OnDeviceWhileCalled(models.vae, device, ("encode", "decode"), pin=True)
    models.decode_tiling = (256, 192)  # the reference's tiles, until a request's size is known (`make_resident`)
    set_decode_tiling(models.vae, models.decode_tiling)


def set_decode_tiling(vae, tiling: tuple[int, int] | None) -> None:
    """Decode whole frames (None) or in square spatial tiles of (tile, stride) pixels, as `residency.decode_tiling`
    chose. Tiles give slightly different pixels than whole frames; the reference tiles in low-VRAM mode, with
    diffusers' default (256, 192). The VAE's encode follows the same setting (diffusers has one switch); it runs
    before sampling, in the same room, on 17-frame chunks as a decode makes 17-frame tiles, with one layer fewer
    per block than the decoder (diffusers' code; its peak was not measured)."""
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


def place_models(models, plan: MemoryPlan, float8: bool = False) -> None:
    """Put freshly loaded (host-resident) models where `plan` says, once after loading. `float8`: in low-VRAM
    mode the blocks are quantised before they are packed (in high-VRAM mode `prepare_for_speed` does it)."""
    device = models.device
    if plan.mode == "cpu":
        return
    if plan.mode == "low":
        if device.type == "cuda":
            grow_segments_in_place()
        apply_low_vram(models, device, plan.budget_gib, float8)
        return
    for module in (models.text_encoder, models.text_encoder_2, models.image_encoder, models.vae):
        module.to(device)
    for model in list(models.transformers.values())[: plan.resident_variants]:
        model.to(device)


def prepare_for_speed(models, plan: MemoryPlan, config: EngineConfig) -> dict:
    """The configured attention for every transformer (by default the fastest); compiled blocks and VAE norms and
    FP8 layers where `config` asks for them and they apply.

    Returns what was applied to each variant (`acceleration.Acceleration`, keyed by variant name). Compilation
    follows `compilation.compile_decision` (by default: resident weights on a GPU); the variants share one
    `CompileRecord`, kept on `models.compile_record` for the per-prediction log.

    In low-VRAM mode the streamed blocks compile too, and FP8 layers were put in at placement.
    The VAE gets its exact padding everywhere and compiled GroupNorms when compiling (`vae_acceleration.py`).
    """
    from .acceleration import accelerate
    from .compilation import CompileRecord, compile_decision
    from .vae_acceleration import accelerate_vae

    float8 = config.fp8
    compiling, reason = compile_decision(config.compile, plan.mode)
    accelerate_vae(models.vae, compile_norms=compiling)
    models.compile_record = CompileRecord() if compiling else None
    applied = {
        variant: accelerate(
            model,
            models.device,
            attention=config.attention,
            compile_blocks_with=models.compile_record,
            float8=float8,
        )
        for variant, model in models.transformers.items()
    }
    if not compiling:
        for acceleration in applied.values():
            acceleration.notes.append(reason)
    return applied


def request_size(request) -> tuple[int, int, int]:
    """(height, width, latent window) a request plans with: its own size, or its family's largest bucket (the
    bucket itself depends on the image's shape, known only once it is read)."""
    if request.width and request.height:
        return request.height, request.width, request.latent_window_size
    height, width = max(bucket_table(request.resolution), key=lambda bucket: bucket[0] * bucket[1])
    return height, width, request.latent_window_size


def make_resident(models, variant: str, plan: MemoryPlan, size: tuple[int, int, int] | None = None) -> None:
    """Before a generation of `variant` (of `size`, `request_size`): in high-VRAM mode with room for one
    transformer, move it to the GPU and the others back to the host; in low-VRAM mode, let its streamer hold
    the resident blocks instead of another variant's, as many as fit beside the request's working set."""
    if plan.mode == "low":
        for name, streamer in models.streamers.items():
            if name != variant:
                streamer.drop()
        streamer = models.streamers[variant]
        setup = models.residency
        if size is not None and setup is not None and plan.budget_gib is not None:
            sizes = model_sizes(models)
            fitted = residency.blocks_for_working_set(setup, sizes, working_set_bytes(*size))
            held = min(fitted, len(streamer.blocks) - 1)  # one block streams, so the streamer has a slot
            tiling = decode_tiling(residency.decode_room(setup, sizes, held), size[0], size[1])
            if (held, tiling) != (streamer.resident_blocks, models.decode_tiling):
                tiles = "whole frames" if tiling is None else f"{tiling[0]}-pixel tiles"
                logger.info(f"{size[0]}x{size[1]} request (window {size[2]}): {held} blocks held, VAE decodes {tiles}")
            streamer.set_resident_blocks(held)
            set_decode_tiling(models.vae, tiling)
            models.decode_tiling = tiling
        streamer.hold()
        return
    if plan.mode != "high" or plan.resident_variants >= len(models.transformers):
        return
    for name, model in models.transformers.items():
        if name != variant:
            model.to("cpu")
    torch.cuda.empty_cache()
    models.transformers[variant].to(models.device)
