"""One transformer forward, the reference's against ours (bf16, FP8), both CFG branches batched, one VAE decode.

The forward is one steady-state section: window 9 at the bucket's latent size, 20 prompt tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from framepack.core.frames import to_uint8_frames
from framepack.runtime.acceleration import attention_unavailable, set_block_attention
from framepack.runtime.compilation import CompileRecord, compile_blocks
from framepack.runtime.decoding import vae_decode
from framepack.runtime.transformer import PackedTransformer, PreparedSection, SectionInputs, TextInputs
from framepack.runtime.vae_acceleration import accelerate_vae

from .measure import GpuClocks, kernel_time_split, median_seconds, relative_l2
from .reference import StockTransformer, random_section

WINDOW = 9
TEXT_TOKENS = 20


@dataclass
class ForwardCase:
    """One forward's inputs: latents (1, 16, 9, h, w), timestep and guidance (1,), the section and the text."""

    model: torch.nn.Module
    inputs: SectionInputs
    text: TextInputs
    latents: torch.Tensor
    timestep: torch.Tensor
    guidance: torch.Tensor

    @classmethod
    def random(cls, model, device: torch.device, dtype: torch.dtype, height: int, width: int) -> ForwardCase:
        image_tokens = 729 if model.config.image_proj_dim == 1152 else 16  # SigLIP's 27x27 patches at full size
        inputs, text, latents = random_section(
            model,
            torch.Generator(device=device).manual_seed(7),
            window=WINDOW,
            latent_height=height // 8,
            latent_width=width // 8,
            text_tokens=TEXT_TOKENS,
            image_tokens=image_tokens,
            total_sections=4,
            dtype=dtype,
        )
        scalar = lambda value: torch.tensor([value], device=device, dtype=dtype)  # noqa: E731
        return cls(model, inputs, text, latents, scalar(900.0), scalar(10000.0))

    def run(self, runner, text: TextInputs | None = None, section=None) -> torch.Tensor:
        return runner.velocity(self.latents, self.timestep, self.guidance, text or self.text, section or self.inputs)


def time_stock(case: ForwardCase, device: torch.device, repeat: int) -> tuple[dict, torch.Tensor]:
    """Seconds per stock forward, the GPU's clocks meanwhile and its kernel split; returns them and the output."""
    stock = StockTransformer(case.model, device)
    out = case.run(stock)
    with GpuClocks(device) as clocks:
        seconds = median_seconds(lambda: case.run(stock), device, 1, repeat)
    report = {
        "forward_stock_s": seconds,
        "clocks_stock": clocks.summary(),
        "kernels_stock_s": kernel_time_split(lambda: case.run(stock), device),
    }
    return report, out


def time_ours(case: ForwardCase, device: torch.device, repeat: int, suffix: str = "") -> tuple[dict, torch.Tensor]:
    """Our staged forward: its first call (which compiles) timed apart, then the median; returns its output."""
    ours = PackedTransformer(case.model, device)
    prepared = ours.prepare_section(case.inputs, case.latents.shape[3], case.latents.shape[4])
    started = time.perf_counter()
    out = case.run(ours, section=prepared)
    if device.type == "cuda":
        torch.cuda.synchronize()
    report = {f"first_call{suffix}_s": time.perf_counter() - started}
    with GpuClocks(device) as clocks:
        report[f"forward_ours{suffix}_s"] = median_seconds(lambda: case.run(ours, section=prepared), device, 2, repeat)
    report[f"clocks_ours{suffix}"] = clocks.summary()
    report[f"kernels_ours{suffix}_s"] = kernel_time_split(lambda: case.run(ours, section=prepared), device)
    return report, out


def attention_kernels(
    case: ForwardCase, device: torch.device, repeat: int, kernels: list[str], stock_out, fp32_out=None
) -> dict:
    """Our staged forward, eager, with each attention kernel in turn (after its start-up probe).

    Per kernel: seconds per forward, GPU seconds in attention kernels, and the relative L2 distance of the
    output to the stock forward's (and to the float32 forward's, when given); or why the kernel was skipped.
    Leaves diffusers' default processor in place.
    """
    dtype = case.model.x_embedder.proj.weight.dtype
    results = {}
    for name in kernels:
        reason = attention_unavailable(name, device, dtype)
        if reason is not None:
            results[name] = {"skipped": reason}
            continue
        set_block_attention(case.model, name)
        timed, out = time_ours(case, device, repeat)
        results[name] = {
            "forward_s": timed["forward_ours_s"],
            "attention_kernels_s": timed["kernels_ours_s"].get("attention"),
            "relative_l2_vs_stock": relative_l2(out, stock_out),
        }
        if fp32_out is not None:
            results[name]["relative_l2_vs_fp32"] = relative_l2(out, fp32_out)
        print("attention", name, results[name], flush=True)
    set_block_attention(case.model, None)
    return results


def noise_floor(case: ForwardCase, stock_out: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """How far bf16 results move for reasons unrelated to our changes, on these random weights.

    Runs the stock forward with the cuDNN and with the flash attention backend (eager; two equally valid bf16
    kernels), and the stock forward in float32 (the ground truth for these weights); returns the relative L2
    distances and the float32 output. Leaves the model as it was.
    """
    model = case.model
    stock = StockTransformer(model)
    set_block_attention(model, "_native_cudnn")
    cudnn_out = case.run(stock)
    set_block_attention(model, "_native_flash")
    flash_out = case.run(stock)
    set_block_attention(model, None)
    dtype = model.x_embedder.proj.weight.dtype
    model.float()
    f32 = lambda t: t.float() if t.is_floating_point() else t  # noqa: E731
    text32 = TextInputs(f32(case.text.embeds), case.text.mask, f32(case.text.pooled), case.text.valid_tokens)
    inputs32 = SectionInputs(**{k: f32(v) for k, v in vars(case.inputs).items()})
    fp32_out = stock.velocity(case.latents.float(), case.timestep.float(), case.guidance.float(), text32, inputs32)
    model.to(dtype)
    torch.cuda.empty_cache()
    floor = {
        "stock_cudnn_vs_stock": relative_l2(cudnn_out, stock_out),
        "stock_flash_vs_stock": relative_l2(flash_out, stock_out),
        "stock_vs_fp32": relative_l2(stock_out, fp32_out),
        "stock_cudnn_vs_fp32": relative_l2(cudnn_out, fp32_out),
    }
    return floor, fp32_out


def cfg_batch(case: ForwardCase, device: torch.device, repeat: int) -> dict:
    """Seconds per sampler step with real CFG: two batch-1 calls (what we run) against one batch-2 call.

    The negative branch gets other random text of the same length, so the batch needs no padding mask; the
    batched call's first (compiling) run is untimed. Relative L2 compares the positive branch's two outputs.
    """
    ours = PackedTransformer(case.model, device)
    prepared = ours.prepare_section(case.inputs, case.latents.shape[3], case.latents.shape[4])
    text, generator = case.text, torch.Generator(device=device).manual_seed(11)
    random_like = lambda t: torch.randn(t.shape, generator=generator, device=device, dtype=t.dtype)  # noqa: E731
    negative = TextInputs(random_like(text.embeds) * text.mask[..., None], text.mask, random_like(text.pooled))
    both = TextInputs(
        torch.cat([text.embeds, negative.embeds]),
        torch.cat([text.mask, negative.mask]),
        torch.cat([text.pooled, negative.pooled]),
        valid_tokens=text.valid_tokens,
    )
    batched = PreparedSection(
        prepared.history_tokens.expand(2, -1, -1),
        prepared.rotary_emb,
        prepared.image_tokens.expand(2, -1, -1),
        prepared.latent_height,
        prepared.latent_width,
    )
    pair = lambda t: t.expand(2, *t.shape[1:])  # noqa: E731

    def two_calls() -> torch.Tensor:
        positive = case.run(ours, section=prepared)
        case.run(ours, text=negative, section=prepared)
        return positive

    def one_call() -> torch.Tensor:
        return ours.velocity(pair(case.latents), pair(case.timestep), pair(case.guidance), both, batched)

    result = {
        "two_calls_s": median_seconds(two_calls, device, 1, repeat),
        "batched_s": median_seconds(one_call, device, 1, repeat),
    }
    result["speedup"] = result["two_calls_s"] / result["batched_s"]
    result["relative_l2"] = relative_l2(one_call()[:1], two_calls())
    return result


def vae_decode_speed(models, device: torch.device, size: tuple[int, int], compile_norms: bool) -> dict:
    """Seconds to decode one steady-state section (2 x window = 18 latents): diffusers' VAE, then ours.

    Switches the VAE to ours (`accelerate_vae`) in between and leaves it so; reports how far the pixels moved.
    """
    generator = torch.Generator(device="cpu").manual_seed(3)
    latents = torch.randn(1, 16, 2 * WINDOW, size[0] // 8, size[1] // 8, generator=generator)
    stock_pixels = vae_decode(latents, models.vae)
    result = {"stock_s": median_seconds(lambda: vae_decode(latents, models.vae), device, 0, 2)}
    result["notes"] = accelerate_vae(models.vae, compile_norms=compile_norms)
    started = time.perf_counter()
    pixels = vae_decode(latents, models.vae)
    result["ours_first_call_s"] = time.perf_counter() - started
    result["ours_s"] = median_seconds(lambda: vae_decode(latents, models.vae), device, 0, 2)
    result["speedup"] = result["stock_s"] / result["ours_s"]
    result["relative_l2"] = relative_l2(pixels, stock_pixels)
    changed = to_uint8_frames(pixels).int() - to_uint8_frames(stock_pixels).int()
    result["uint8_max_change"] = int(changed.abs().max())
    result["uint8_fraction_changed"] = float((changed != 0).float().mean())
    return result


def static_against_dynamic_shapes(case: ForwardCase, device: torch.device, repeat: int) -> dict:
    """Our forward with the blocks compiled for static shapes (as before the cold-start work) and with dynamic
    shapes (now), in one process: the seconds of each, and the relative L2 between their outputs."""
    outputs, report = {}, {}
    for label, dynamic in (("static", False), ("dynamic", True)):
        torch._dynamo.reset()
        compile_blocks(case.model, CompileRecord(), dynamic=dynamic)
        timings, outputs[label] = time_ours(case, device, repeat, suffix=f"_{label}_shapes")
        report.update({key: value for key, value in timings.items() if not key.startswith("kernels")})
    report["dynamic_vs_static_relative_l2"] = relative_l2(outputs["dynamic"], outputs["static"])
    return report
