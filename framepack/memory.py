"""Memory placement: high-VRAM (everything resident on the GPU) or low-VRAM (weights stream from host memory).

The choice is a pure function of the GPU's size and an override (`FRAMEPACK_MEMORY_MODE=auto|high|low|<GiB>`,
`config.EngineConfig.memory_mode`); the placement itself is applied once after loading. In low-VRAM mode the
weights stay in one page-locked host copy and visit the GPU only while used: the transformer's and the Llama's
blocks stream with the next block prefetched on a side CUDA stream, so transfers overlap compute
(`streaming.py`, diffusers group offloading). With a memory budget (`FRAMEPACK_MEMORY_MODE=<GiB>`), as many
transformer blocks as fit stay on the GPU, then the VAE and the encoders (`residency.py`); `low`, and `auto` below
60 GiB, stream everything, the least memory the engine runs in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from . import residency, streaming
from .config import ENV, MEMORY_MODES, EngineConfig, memory_budget_gib
from .models import all_blocks

logger = logging.getLogger(__name__)

MEMORY_MODE_ENV = ENV["memory_mode"]
# bf16 transformer (25.7 GB) + fp16 encoders and VAE (about 17 GB) + activations of a 640 section.
HIGH_VRAM_MIN_GIB = 60.0
# Room to keep a second transformer variant resident as well.
BOTH_VARIANTS_MIN_GIB = 100.0
# Left out of an automatic budget: the CUDA context, cuBLAS workspaces and allocator fragmentation.
RESERVED_GIB = 1.5


@dataclass(frozen=True)
class MemoryPlan:
    """mode: "cpu", "high" or "low"; resident_variants: how many transformers may stay on the GPU at once;
    budget_gib (low mode): the GPU memory to fill with resident weights (`residency.py`), None to stream all."""

    mode: str
    reason: str
    resident_variants: int = 1
    budget_gib: float | None = None


def choose_memory_plan(device: torch.device, total_gib: float | None, override: str = "auto") -> MemoryPlan:
    """Pick the memory mode for a device with `total_gib` of memory (None on the CPU)."""
    budget = memory_budget_gib(override)
    if override not in MEMORY_MODES and budget is None:
        raise ValueError(
            f"{MEMORY_MODE_ENV} must be one of {', '.join(MEMORY_MODES)} or a budget in GiB, got {override!r}"
        )
    if device.type != "cuda":
        return MemoryPlan("cpu", "no GPU: everything runs on the CPU", resident_variants=2)
    both = 2 if total_gib is not None and total_gib >= BOTH_VARIANTS_MIN_GIB else 1
    if budget is not None:
        if budget >= HIGH_VRAM_MIN_GIB:
            return MemoryPlan("high", f"budget {budget:g} GiB >= {HIGH_VRAM_MIN_GIB:.0f} GiB: all models resident")
        return MemoryPlan("low", f"budget {budget:g} GiB from {MEMORY_MODE_ENV}", budget_gib=budget)
    if override != "auto":
        return MemoryPlan(
            override,
            f"forced by {MEMORY_MODE_ENV}={override} (GPU has {total_gib:.0f} GiB)",
            both if override == "high" else 1,
        )
    if total_gib >= HIGH_VRAM_MIN_GIB:
        return MemoryPlan(
            "high", f"GPU has {total_gib:.0f} GiB >= {HIGH_VRAM_MIN_GIB:.0f} GiB: all models resident", both
        )
    # Streaming every block stays the automatic choice until the budgets' speed and peaks are measured on GPUs
    # (a budget is opt-in: FRAMEPACK_MEMORY_MODE=<GiB>).
    return MemoryPlan("low", f"GPU has {total_gib:.0f} GiB < {HIGH_VRAM_MIN_GIB:.0f} GiB: streaming weights")


def _bytes(*modules: torch.nn.Module) -> int:
    return sum(t.nbytes for module in modules for t in [*module.parameters(), *module.buffers()])


def model_sizes(models) -> residency.ModelSizes:
    """The bytes `residency.plan_residency` weighs, from loaded models (the first variant's transformer)."""
    transformer = next(iter(models.transformers.values()))
    blocks = all_blocks(transformer)
    return residency.ModelSizes(
        blocks=tuple(_bytes(block) for block in blocks),
        transformer_other=_bytes(transformer) - _bytes(*blocks),
        vae=_bytes(models.vae),
        encoders=_bytes(models.text_encoder, models.text_encoder_2, models.image_encoder),
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


def apply_low_vram(models, device: torch.device, budget_gib: float | None = None) -> residency.Residency:
    """Install streaming on models loaded on the host; their weights stay in one page-locked copy there.

    The Llama, CLIP and SigLIP stream block by block (diffusers group offloading). The
    transformer's blocks stream through two GPU slots (`streaming.BlockStreamer`): the staged forward calls
    blocks directly, which diffusers' prefetching (it learns the order from the root forward) never sees.
    The VAE is on the GPU only inside encode and decode. With `budget_gib`, what fits stays resident instead
    (`residency.plan_residency`): the first blocks (held by one variant at a time, `make_resident`), then the
    VAE and the encoders. Returns the decision, which is also logged.
    """
    sizes = model_sizes(models)
    budget = int(budget_gib * residency.GIB) if budget_gib is not None else 0
    plan = residency.plan_residency(budget, sizes)
    logger.info(f"low-VRAM placement: {plan.describe() if budget_gib is not None else 'every block streamed'}")
    for module in (models.text_encoder, models.text_encoder_2, models.image_encoder):
        if plan.encoders_resident:
            module.to(device)
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
    # Spatial tiles bound the VAE's activation peak (the reference tiles in low-VRAM mode too, so the pixels
    # differ slightly from high-VRAM mode there as well).
    models.vae.enable_tiling()


def place_models(models, plan: MemoryPlan) -> None:
    """Put freshly loaded (host-resident) models where `plan` says, once after loading."""
    device = models.device
    if plan.mode == "cpu":
        return
    if plan.mode == "low":
        apply_low_vram(models, device, plan.budget_gib)
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

    In low-VRAM mode the blocks stay eager (their weights are swapped in per call), and the weights were
    packed for streaming at placement, before FP8 layers could replace them, so FP8 is for high-VRAM mode.
    The VAE gets its exact padding everywhere and compiled GroupNorms when compiling (`vae_acceleration.py`).
    """
    from .acceleration import accelerate
    from .compilation import CompileRecord, compile_decision
    from .vae_acceleration import accelerate_vae

    float8 = config.fp8
    compiling, reason = compile_decision(config.compile, plan.mode)
    accelerate_vae(models.vae, compile_norms=compiling)
    if float8 and plan.mode == "low":
        logger.warning("FP8 mode runs in high-VRAM mode only; low mode keeps the transformer in %s", models.dtype)
    models.compile_record = CompileRecord() if compiling else None
    applied = {
        variant: accelerate(
            model,
            models.device,
            attention=config.attention,
            compile_blocks_with=models.compile_record,
            float8=float8 and plan.mode != "low",
        )
        for variant, model in models.transformers.items()
    }
    if not compiling:
        for acceleration in applied.values():
            acceleration.notes.append(reason)
    return applied


def make_resident(models, variant: str, plan: MemoryPlan) -> None:
    """Before a generation of `variant`: in high-VRAM mode with room for one transformer, move it to the GPU
    and the others back to the host; in low-VRAM mode, let its streamer hold the resident blocks instead of
    another variant's."""
    if plan.mode == "low":
        for name, streamer in models.streamers.items():
            if name != variant:
                streamer.drop()
        models.streamers[variant].hold()
        return
    if plan.mode != "high" or plan.resident_variants >= len(models.transformers):
        return
    for name, model in models.transformers.items():
        if name != variant:
            model.to("cpu")
    torch.cuda.empty_cache()
    models.transformers[variant].to(models.device)
