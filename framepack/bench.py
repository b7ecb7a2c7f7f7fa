"""GPU benchmark: our transformer path against diffusers' stock forward, side by side in one run.

    python -m framepack.bench --out bench.json [--e2e [--no-teacache-runs | --teacache-runs-only]
                              [--compare-reference-decode | --reference-decode] [--variant original|f1]]
                              [--fp8] [--decode] [--cfg-batch]
                              [--size full|tiny]
    python -m framepack.bench --save-random-weights /tmp/w
    python -m framepack.bench --low-vram --weights /tmp/w --vram-cap-gb 6 8 [--e2e-seconds 5 --steps 25]

Models are the full-size architectures (docs/ALGORITHM.md §1.2) with random weights, so no checkpoint is needed.
Reports: seconds per transformer forward (stock, then ours, then ours in FP8) at 544x704 with window 9, the relative
L2 difference of the outputs, optionally end-to-end seconds of a 5-second 640-bucket generation per stage (stock
loop and ours, TeaCache off and on), and peak GPU memory. Stock runs first: our acceleration compiles the blocks in
place. The low-VRAM benchmark loads random weights saved in the hub layout, as the service loads real ones.
`--size tiny` runs the same code on the tiny test architecture (for checking the script on a CPU).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import json
import math
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import planner
from .acceleration import ATTENTION_PREFERENCE, accelerate, set_block_attention
from .compilation import CompileRecord
from .config import EngineConfig
from .decoding import vae_decode
from .engine import load_engine
from .float8 import quantize_transformer_blocks
from .frames import to_uint8_frames
from .memory import MemoryPlan, place_models
from .models import FramePackModels, encoder_dtype
from .outputs import generate_video
from .pipeline import GenerationOptions
from .progress import ProgressReporter
from .request import build_request
from .transformer import PackedTransformer, PreparedSection, SectionInputs, TextInputs
from .vae_acceleration import accelerate_vae
from .weights import ENCODER_COMPONENTS, transformer_component

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "fixtures" / "tiny-weights"
MANIFEST = ROOT / "tests" / "fixtures" / "transformer_keys.json"
BUCKET = (544, 704)
TEXT_TOKENS = 20


def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fill every parameter: norms' weights 1, biases 0, other weights N(0, 1/fan_in) (keeps activations O(1))."""
    generator = torch.Generator(device=next(module.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim == 1:
                param.fill_(1.0 if "norm" in name and name.endswith("weight") else 0.0)
            else:
                fan_in = param[0].numel()
                param.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=generator)
        for buffer in module.buffers():
            if buffer.is_floating_point() and not torch.isfinite(buffer).all():
                buffer.zero_()
    return module


def _build(factory, device: torch.device, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    with torch.device("meta"):
        module = factory()
    module = module.to_empty(device=device).to(dtype)
    for name, buffer in module.named_buffers():  # recompute non-persistent buffers lost on meta (e.g. RoPE)
        if "inv_freq" in name:
            dim = buffer.numel() * 2
            buffer.copy_(
                1.0
                / (
                    module.config.rope_parameters["rope_theta"]
                    ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim)
                )
            )
        elif "position_ids" in name:
            buffer.copy_(torch.arange(buffer.shape[-1], device=device).expand_as(buffer))
    return randomize_(module, seed).eval().requires_grad_(False)


def random_models(size: str, device: torch.device, dtype: torch.dtype, build_device: torch.device) -> FramePackModels:
    """All FramePack components at `size` with random weights, built on `build_device`."""
    from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoFramepackTransformer3DModel
    from transformers import (
        AutoTokenizer,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTokenizer,
        LlamaConfig,
        LlamaModel,
        SiglipVisionConfig,
        SiglipVisionModel,
    )
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    side = encoder_dtype(device, dtype)
    hunyuan = TINY / "hunyuanvideo-community" / "HunyuanVideo"
    if size == "full":
        transformer_config = json.loads(MANIFEST.read_text())["config"]
        llama = LlamaConfig(
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=128320,
            max_position_embeddings=8192,
            rms_norm_eps=1e-5,
            rope_parameters={"rope_theta": 500000.0, "rope_type": "default"},
        )
        clip = CLIPTextConfig(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            vocab_size=49408,
            projection_dim=768,
        )
        siglip = SiglipVisionConfig(
            hidden_size=1152,
            intermediate_size=4304,
            num_hidden_layers=27,
            num_attention_heads=16,
            image_size=384,
            patch_size=14,
        )
        vae_config, image_size = {}, 384
    else:
        transformer_config = json.loads((TINY / "lllyasviel/FramePackI2V_HY/config.json").read_text())
        llama = LlamaConfig.from_pretrained(hunyuan / "text_encoder")
        clip = CLIPTextConfig.from_pretrained(hunyuan / "text_encoder_2")
        siglip = SiglipVisionConfig.from_pretrained(TINY / "lllyasviel/flux_redux_bfl/image_encoder")
        vae_config = json.loads((hunyuan / "vae" / "config.json").read_text())
        image_size = 32
    vae_config = {k: v for k, v in vae_config.items() if not k.startswith("_")}
    transformer_config = {k: v for k, v in transformer_config.items() if not k.startswith("_")}
    tokenizer = AutoTokenizer.from_pretrained(hunyuan / "tokenizer")
    tokenizer.padding_side = "right"
    return FramePackModels(
        tokenizer=tokenizer,
        tokenizer_2=CLIPTokenizer.from_pretrained(hunyuan / "tokenizer_2"),
        text_encoder=_build(lambda: LlamaModel(llama), build_device, side, 1),
        text_encoder_2=_build(lambda: CLIPTextModel(clip), build_device, side, 2),
        feature_extractor=SiglipImageProcessorPil(
            size={"height": image_size, "width": image_size}, resample=3, image_mean=[0.5] * 3, image_std=[0.5] * 3
        ),
        image_encoder=_build(lambda: SiglipVisionModel(siglip), build_device, side, 3),
        vae=_build(lambda: AutoencoderKLHunyuanVideo(**vae_config), build_device, side, 4),
        transformers={
            "original": _build(
                lambda: HunyuanVideoFramepackTransformer3DModel(**transformer_config), build_device, dtype, 5
            )
        },
        device=device,
        dtype=dtype,
    )


def forward_inputs(model, device, dtype, height: int, width: int, lws: int = 9):
    """Random inputs of one steady-state section (the original variant's first section layout)."""
    generator = torch.Generator(device=device).manual_seed(7)
    section = planner.inverted_sections(4, lws)[0]
    h, w = height // 8, width // 8
    rand = lambda *shape, dt=torch.float32: torch.randn(*shape, generator=generator, device=device, dtype=dt)  # noqa
    idx = lambda v: torch.tensor(v, dtype=torch.long, device=device)  # noqa: E731
    image_tokens = 729 if model.config.image_proj_dim == 1152 else 16
    inputs = SectionInputs(
        latent_indices=idx(section.latent_indices),
        clean_latents=rand(1, 16, 2, h, w),
        clean_latent_indices=idx(section.clean_latent_indices),
        clean_latents_2x=rand(1, 16, 2, h, w),
        clean_latent_2x_indices=idx(section.clean_latent_2x_indices),
        clean_latents_4x=rand(1, 16, 16, h, w),
        clean_latent_4x_indices=idx(section.clean_latent_4x_indices),
        image_embeds=rand(1, image_tokens, model.config.image_proj_dim, dt=dtype),
    )
    mask = torch.zeros(1, 512, dtype=torch.bool, device=device)
    mask[:, :TEXT_TOKENS] = True
    text = TextInputs(
        embeds=rand(1, 512, model.config.text_embed_dim, dt=dtype) * mask[..., None],
        mask=mask,
        pooled=rand(1, model.config.pooled_projection_dim, dt=dtype),
    )
    latents = rand(1, 16, lws, h, w, dt=dtype)
    timestep = torch.tensor([900.0], device=device, dtype=dtype)
    guidance = torch.tensor([10000.0], device=device, dtype=dtype)
    return inputs, text, latents, timestep, guidance


class StockTransformer:
    """The reference's per-call path: diffusers' whole forward every step, nothing cached per section."""

    def __init__(self, model, device: torch.device | None = None, streamer=None):
        if streamer is not None:
            raise ValueError("the stock forward runs resident weights only")
        self.model = model
        self.device = device or model.x_embedder.proj.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.x_embedder.proj.weight.dtype

    def on_device(self):
        return contextlib.nullcontext()

    def prepare_section(self, section: SectionInputs, latent_height: int, latent_width: int) -> SectionInputs:
        return section

    @torch.no_grad()
    def velocity(self, latents, timestep, guidance, text: TextInputs, section: SectionInputs, teacache=None):
        if teacache is not None:
            raise ValueError("the stock forward has no TeaCache; use the eager staged path for that comparison")
        to = lambda t: t.to(device=self.device, dtype=self.dtype)  # noqa: E731
        dev = lambda t: t.to(self.device)  # noqa: E731
        return self.model(
            hidden_states=latents,
            timestep=timestep,
            encoder_hidden_states=text.embeds,
            encoder_attention_mask=text.mask,
            pooled_projections=text.pooled,
            image_embeds=to(section.image_embeds),
            indices_latents=dev(section.latent_indices),
            guidance=guidance,
            latents_clean=to(section.clean_latents),
            indices_latents_clean=dev(section.clean_latent_indices),
            latents_history_2x=to(section.clean_latents_2x),
            indices_latents_history_2x=dev(section.clean_latent_2x_indices),
            latents_history_4x=to(section.clean_latents_4x),
            indices_latents_history_4x=dev(section.clean_latent_4x_indices),
            return_dict=False,
        )[0].float()


def time_call(fn, device: torch.device, warmup: int, repeat: int) -> list[float]:
    """Seconds per call (CUDA events on a GPU), after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
    return times


def relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def end_to_end(
    models,
    image: Path,
    size: tuple[int, int],
    runner,
    teacache: bool,
    seconds: float,
    steps: int,
    device: torch.device,
    our_decode: bool = False,
    variant: str = "original",
) -> dict:
    """One generation and its MP4, timed per stage; reports the run's peak GPU memory.

    `our_decode`: in the background where memory allows, shared tiles decoded once, and F1's MP4 encoded as its
    frames become final; else as the reference decodes (in line, each section whole) and encodes (at the end)."""
    request = build_request(
        {
            "input_image": image,
            "prompt": "A person dances in a sunlit room.",
            "seed": 1,
            "total_video_length_seconds": seconds,
            "steps": steps,
            "use_teacache": teacache,
            "height": size[0],
            "width": size[1],
            "model_variant": variant,
        }
    )
    decode_lines: list[str] = []
    progress = ProgressReporter(
        request.num_sections,
        steps,
        write=lambda line: decode_lines.append(line) if line.startswith("VAE decode") else None,
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    result = generate_video(
        request,
        models,
        image.with_name("output.mp4"),
        progress=progress,
        options=GenerationOptions(
            runner=runner, background_decode=None if our_decode else False, reuse_decoded_tiles=our_decode
        ),
        stream=our_decode,
    )
    total = time.perf_counter() - started
    memory = {}
    if device.type == "cuda":
        memory = {
            "peak_allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30,
            "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30,
        }
    return {
        "total": total,
        **progress.timings,
        **memory,
        "decode_plan": decode_lines,
        "frames": int(result.frames.shape[0]),
        "latents": result.video_latents,
        "pixels": result.frames,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m framepack.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--out", type=Path, default=Path("bench.json"))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--e2e", action="store_true", help="also time 5-second generations")
    parser.add_argument("--no-teacache-runs", action="store_true", help="with --e2e: skip the TeaCache-on pair")
    parser.add_argument("--teacache-runs-only", action="store_true", help="with --e2e: skip the TeaCache-off pair")
    parser.add_argument("--e2e-seconds", type=float, default=5.0)
    parser.add_argument(
        "--variant",
        choices=("original", "f1"),
        default="original",
        help="with --e2e: the variant generated (F1 runs the same random transformer)",
    )
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument(
        "--reference-decode",
        dest="our_decode",
        action="store_false",
        help="with --e2e: our loop decodes as the stock loop does, in line and each section "
        "whole (default: in the background where memory allows, shared tiles once)",
    )
    parser.add_argument(
        "--compare-reference-decode",
        action="store_true",
        help="with --e2e: also run our loop with the reference's decode",
    )
    parser.add_argument(
        "--attention",
        choices=("auto", *ATTENTION_PREFERENCE),
        default="auto",
        help="our path's attention kernel (default: the fastest that works)",
    )
    parser.add_argument("--fp8", action="store_true", help="also time the FP8 mode (last: it replaces layers)")
    parser.add_argument("--decode", action="store_true", help="also time one section's VAE decode, diffusers' and ours")
    parser.add_argument(
        "--cfg-batch",
        action="store_true",
        help="also time both CFG branches as one batch-2 call against two batch-1 calls",
    )
    parser.add_argument(
        "--low-vram", action="store_true", help="benchmark low-VRAM mode against high-VRAM (needs --weights)"
    )
    parser.add_argument("--vram-cap-gb", type=float, nargs="*", default=[6.0])
    parser.add_argument(
        "--short-caps-gb",
        type=float,
        nargs="*",
        default=[],
        help="with --low-vram: more caps, each run at --short-seconds/--short-steps",
    )
    parser.add_argument("--short-seconds", type=float, default=1.2)
    parser.add_argument("--short-steps", type=int, default=10)
    parser.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="weights folder to load from (hub layout), e.g. written by --save-random-weights",
    )
    parser.add_argument(
        "--save-random-weights",
        type=Path,
        default=None,
        metavar="DIR",
        help="write random weights of --size in the hub layout to DIR and exit",
    )
    args = parser.parse_args(argv)
    if args.no_teacache_runs and args.teacache_runs_only:
        parser.error("--no-teacache-runs and --teacache-runs-only leave no end-to-end run")
    teacache_off_runs, teacache_on_runs = not args.teacache_runs_only, not args.no_teacache_runs

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.save_random_weights is not None:
        save_random_weights(args.size, args.save_random_weights, device, dtype)
        return 0
    size = BUCKET if args.size == "full" else (64, 96)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report: dict = {
        "gpu": gpu,
        "torch": torch.__version__,
        "size": args.size,
        "bucket": list(size),
        "command": "python -m framepack.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    # A folder of its own: two benchmarks (or test runs) at once must not write the same MP4.
    scratch = Path(tempfile.mkdtemp(prefix="framepack-bench-"))
    atexit.register(shutil.rmtree, scratch, True)
    image = scratch / "input.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[0], size[1], 3), dtype=np.uint8)).save(image)

    if args.low_vram:
        if args.weights is None:
            parser.error("--low-vram loads from disk like the service: pass --weights (see --save-random-weights)")
        report["low_vram"] = bench_low_vram(args, device, dtype, size, image, report)
        return _finish(report, args.out)

    started = time.perf_counter()
    models = random_models(args.size, device, dtype, device)
    place_models(models, MemoryPlan("high" if device.type == "cuda" else "cpu", "benchmark"))
    report["build_seconds"] = time.perf_counter() - started
    if device.type == "cuda":
        report["models_allocated_gib"] = torch.cuda.memory_allocated(device) / 2**30
    model = models.transformers["original"]
    models.transformers["f1"] = model  # the same architecture: F1 differs only in its trained weights
    inputs, text, latents, timestep, guidance = forward_inputs(model, device, dtype, *size)

    stock = StockTransformer(model, device)
    stock_out = stock.velocity(latents, timestep, guidance, text, inputs)
    with GpuClocks(device) as clocks:
        stock_times = time_call(
            lambda: stock.velocity(latents, timestep, guidance, text, inputs), device, 1, args.repeat
        )
    report["forward_stock_s"] = float(np.median(stock_times))
    report["clocks_stock"] = clocks.summary()
    print("stock forward", report["forward_stock_s"], flush=True)
    fp32_out = None
    if device.type == "cuda":
        report["noise_floor"], fp32_out = noise_floor(
            model, stock, stock_out, inputs, text, latents, timestep, guidance
        )
        print("noise floor", report["noise_floor"], flush=True)
    report["kernels_stock_s"] = kernel_time_split(
        lambda: stock.velocity(latents, timestep, guidance, text, inputs), device
    )
    e2e = {}

    def run_e2e(name: str, runner, teacache: bool, our_decode: bool = False) -> None:
        e2e[name] = end_to_end(
            models, image, size, runner, teacache, args.e2e_seconds, args.steps, device, our_decode, args.variant
        )
        report.setdefault("e2e", {})[name] = {k: v for k, v in e2e[name].items() if k not in ("latents", "pixels")}
        args.out.write_text(json.dumps(report, indent=2, default=str))  # partial results survive a timeout
        print(name, {k: v for k, v in report["e2e"][name].items()}, flush=True)

    def compare_reference_decode(suffix: str, teacache: bool) -> None:
        """Our loop again with the reference's decode: the time ours saves, and whether the video is the same."""
        run_e2e(f"ours_reference_decode_{suffix}", PackedTransformer, teacache, our_decode=False)
        ours, reference = e2e[f"ours_{suffix}"]["pixels"], e2e[f"ours_reference_decode_{suffix}"]["pixels"]
        report[f"e2e_our_decode_{suffix}"] = {
            "seconds_saved": e2e[f"ours_reference_decode_{suffix}"]["total"] - e2e[f"ours_{suffix}"]["total"],
            "frames_equal": bool(torch.equal(ours, reference)),
            "frames_max_difference": int((ours.int() - reference.int()).abs().max()),
        }

    def warm_up_compiled(key: str) -> None:  # compile for this prompt's length once, outside the timed runs
        warm = time.perf_counter()
        end_to_end(models, image, size, PackedTransformer, False, 1.0, 1, device, True, args.variant)
        report[key] = time.perf_counter() - warm

    if args.e2e:
        # Untimed: the encoders' and the VAE's first use (kernel selection) is not charged to the stock loop.
        warm = time.perf_counter()
        end_to_end(models, image, size, StockTransformer, False, 1.0, 1, device, False, args.variant)
        report["stock_warmup_s"] = time.perf_counter() - warm
        if teacache_off_runs:
            run_e2e("stock_teacache_off", StockTransformer, False)
        if teacache_on_runs:
            run_e2e("eager_teacache_on", PackedTransformer, True)

    compile_with = CompileRecord() if device.type == "cuda" and not args.no_compile else None
    applied = accelerate(model, device, attention=args.attention, compile_blocks_with=compile_with)
    report["acceleration"] = {"attention": applied.attention, "compiled": applied.compiled, "notes": applied.notes}
    compile_norms = device.type == "cuda" and not args.no_compile
    if args.decode:
        report["decode"] = bench_decode(models, device, size, compile_norms)
        print("decode", report["decode"], flush=True)
    else:
        accelerate_vae(models.vae, compile_norms=compile_norms)
    ours_out = time_ours(report, "", model, device, args.repeat, inputs, text, latents, timestep, guidance)
    report["forward_speedup"] = report["forward_stock_s"] / report["forward_ours_s"]
    report["forward_relative_l2"] = relative_l2(ours_out, stock_out)
    if args.cfg_batch:
        report["cfg_batch"] = bench_cfg_batch(model, device, args.repeat, inputs, text, latents, timestep, guidance)
        print("cfg batch", report["cfg_batch"], flush=True)
    if fp32_out is not None:
        report["noise_floor"]["ours_vs_fp32"] = relative_l2(ours_out, fp32_out)
    print(
        {k: report[k] for k in ("forward_stock_s", "forward_ours_s", "forward_speedup", "forward_relative_l2")},
        flush=True,
    )
    if args.e2e:
        warm_up_compiled("e2e_warmup_s")
        if teacache_off_runs:
            run_e2e("ours_teacache_off", PackedTransformer, False, our_decode=args.our_decode)
            if args.compare_reference_decode:
                compare_reference_decode("teacache_off", False)
            report["e2e_latents_relative_l2"] = relative_l2(
                e2e["ours_teacache_off"]["latents"], e2e["stock_teacache_off"]["latents"]
            )
            report["e2e_speedup_teacache_off"] = e2e["stock_teacache_off"]["total"] / e2e["ours_teacache_off"]["total"]
        if teacache_on_runs:
            run_e2e("ours_teacache_on", PackedTransformer, True, our_decode=args.our_decode)
            if args.compare_reference_decode:
                compare_reference_decode("teacache_on", True)
            report["e2e_speedup_teacache_on"] = e2e["eager_teacache_on"]["total"] / e2e["ours_teacache_on"]["total"]
            report["e2e_teacache_on_latents_relative_l2"] = relative_l2(
                e2e["ours_teacache_on"]["latents"], e2e["eager_teacache_on"]["latents"]
            )
    if args.fp8:
        # Compiled graphs hold the bf16 layers; drop them so the replaced weights are freed.
        torch._dynamo.reset()
        report["fp8_layers"] = quantize_transformer_blocks(model)
        fp8_out = time_ours(report, "_fp8", model, device, args.repeat, inputs, text, latents, timestep, guidance)
        report["forward_speedup_fp8"] = report["forward_stock_s"] / report["forward_ours_fp8_s"]
        report["forward_fp8_relative_l2_vs_ours_bf16"] = relative_l2(fp8_out, ours_out)
        report["forward_fp8_relative_l2_vs_stock"] = relative_l2(fp8_out, stock_out)
        if fp32_out is not None:
            report["noise_floor"]["ours_fp8_vs_fp32"] = relative_l2(fp8_out, fp32_out)
        print({k: v for k, v in report.items() if "fp8" in k}, flush=True)
        if args.e2e and teacache_off_runs:
            warm_up_compiled("e2e_warmup_fp8_s")
            run_e2e("ours_fp8_teacache_off", PackedTransformer, False, our_decode=args.our_decode)
            report["e2e_speedup_fp8_teacache_off"] = (
                e2e["stock_teacache_off"]["total"] / e2e["ours_fp8_teacache_off"]["total"]
            )
            report["e2e_fp8_latents_relative_l2_vs_stock"] = relative_l2(
                e2e["ours_fp8_teacache_off"]["latents"], e2e["stock_teacache_off"]["latents"]
            )
    if device.type == "cuda":
        report["peak_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        report["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
    return _finish(report, args.out)


def time_ours(
    report: dict, suffix: str, model, device, repeat: int, inputs, text, latents, timestep, guidance
) -> torch.Tensor:
    """Time our staged forward (first call, which compiles, separately); returns its output."""
    ours = PackedTransformer(model, device)
    prepared = ours.prepare_section(inputs, latents.shape[3], latents.shape[4])
    started = time.perf_counter()
    out = ours.velocity(latents, timestep, guidance, text, prepared)
    if device.type == "cuda":
        torch.cuda.synchronize()
    report[f"first_call{suffix}_s"] = time.perf_counter() - started
    with GpuClocks(device) as clocks:
        times = time_call(lambda: ours.velocity(latents, timestep, guidance, text, prepared), device, 2, repeat)
    report[f"forward_ours{suffix}_s"] = float(np.median(times))
    report[f"clocks_ours{suffix}"] = clocks.summary()
    report[f"kernels_ours{suffix}_s"] = kernel_time_split(
        lambda: ours.velocity(latents, timestep, guidance, text, prepared), device
    )
    return out


def bench_cfg_batch(model, device, repeat: int, inputs, text: TextInputs, latents, timestep, guidance) -> dict:
    """Seconds per sampler step with real CFG: two batch-1 calls (what we run) against one batch-2 call.

    The negative branch gets other random text of the same length, so the batch needs no padding mask; the
    batched call's first (compiling) run is untimed. Relative L2 compares the positive branch's two outputs.
    """
    ours = PackedTransformer(model, device)
    prepared = ours.prepare_section(inputs, latents.shape[3], latents.shape[4])
    generator = torch.Generator(device=device).manual_seed(11)
    negative = TextInputs(
        torch.randn(text.embeds.shape, generator=generator, device=device, dtype=text.embeds.dtype)
        * text.mask[..., None],
        text.mask,
        torch.randn(text.pooled.shape, generator=generator, device=device, dtype=text.pooled.dtype),
    )
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
        positive = ours.velocity(latents, timestep, guidance, text, prepared)
        ours.velocity(latents, timestep, guidance, negative, prepared)
        return positive

    def one_call() -> torch.Tensor:
        return ours.velocity(pair(latents), pair(timestep), pair(guidance), both, batched)

    result = {
        "two_calls_s": float(np.median(time_call(two_calls, device, 1, repeat))),
        "batched_s": float(np.median(time_call(one_call, device, 1, repeat))),
    }
    result["speedup"] = result["two_calls_s"] / result["batched_s"]
    result["relative_l2"] = relative_l2(one_call()[:1], two_calls())
    return result


class GpuClocks:
    """Mean SM clock (MHz) and board power (W) while the block runs, from `nvidia-smi` every 100 ms.

    The same kernels can run slower when the GPU lowers its clock at its power limit; this shows whether it did.
    Empty off CUDA or without nvidia-smi.
    """

    def __init__(self, device: torch.device):
        self.index = (
            device.index
            if device.index is not None
            else (torch.cuda.current_device() if device.type == "cuda" else None)
        )
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        command = [
            "nvidia-smi",
            f"--id={self.index}",
            "--query-gpu=clocks.sm,power.draw",
            "--format=csv,noheader,nounits",
        ]
        while not self._stop.is_set():
            try:
                line = subprocess.run(command, capture_output=True, text=True, timeout=5).stdout.strip()
                clock, power = (float(value) for value in line.split(","))
            except (OSError, ValueError, subprocess.TimeoutExpired):
                return
            self.samples.append((clock, power))
            self._stop.wait(0.1)

    def __enter__(self) -> GpuClocks:
        if self.index is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def summary(self) -> dict:
        if not self.samples:
            return {}
        clocks, powers = zip(*self.samples)
        return {"sm_clock_mhz": float(np.mean(clocks)), "power_w": float(np.mean(powers)), "samples": len(self.samples)}


def bench_decode(models, device, size: tuple[int, int], compile_norms: bool) -> dict:
    """Seconds to decode one steady-state section (2 x window = 18 latents): diffusers' VAE, then ours.

    Switches the VAE to ours (`accelerate_vae`) in between and leaves it so; reports how far the pixels moved.
    """
    generator = torch.Generator(device="cpu").manual_seed(3)
    latents = torch.randn(1, 16, 18, size[0] // 8, size[1] // 8, generator=generator)
    stock_pixels = vae_decode(latents, models.vae)
    result = {"stock_s": float(np.median(time_call(lambda: vae_decode(latents, models.vae), device, 0, 2)))}
    result["notes"] = accelerate_vae(models.vae, compile_norms=compile_norms)
    started = time.perf_counter()
    pixels = vae_decode(latents, models.vae)
    result["ours_first_call_s"] = time.perf_counter() - started
    result["ours_s"] = float(np.median(time_call(lambda: vae_decode(latents, models.vae), device, 0, 2)))
    result["speedup"] = result["stock_s"] / result["ours_s"]
    result["relative_l2"] = relative_l2(pixels, stock_pixels)
    changed = to_uint8_frames(pixels).int() - to_uint8_frames(stock_pixels).int()
    result["uint8_max_change"] = int(changed.abs().max())
    result["uint8_fraction_changed"] = float((changed != 0).float().mean())
    return result


def kernel_time_split(fn, device: torch.device) -> dict:
    """GPU seconds of one call of `fn` by kernel kind (attention, matrix products, everything else)."""
    if device.type != "cuda":
        return {}
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as trace:
        fn()
        torch.cuda.synchronize(device)
    split = {"attention": 0.0, "matmul": 0.0, "other": 0.0}
    for event in trace.key_averages():
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        name = event.key.lower()
        # Compiled element-wise kernels are named after the ops they feed ("triton_..._attention_..."): other.
        kind = (
            "other"
            if name.startswith("triton")
            else "attention"
            if any(k in name for k in ("fmha", "flash", "sdpa", "attention"))
            else "matmul"
            if any(k in name for k in ("gemm", "nvjet", "xmma", "cutlass"))
            else "other"
        )
        split[kind] += event.self_device_time_total / 1e6
    return split


def noise_floor(model, stock, stock_out, inputs, text, latents, timestep, guidance) -> tuple[dict, torch.Tensor]:
    """How far bf16 results move for reasons unrelated to our changes, on these random weights.

    Runs the stock forward with the cuDNN and with the flash attention backend (eager; two equally valid bf16
    kernels), and the stock forward in float32 (the ground truth for these weights); returns the relative L2
    distances and the float32 output. Leaves the model as it was.
    """
    set_block_attention(model, "_native_cudnn")
    cudnn_out = stock.velocity(latents, timestep, guidance, text, inputs)
    set_block_attention(model, "_native_flash")
    flash_out = stock.velocity(latents, timestep, guidance, text, inputs)
    set_block_attention(model, None)
    dtype = model.x_embedder.proj.weight.dtype
    model.float()
    f32 = lambda t: t.float() if t.is_floating_point() else t  # noqa: E731
    text32 = TextInputs(f32(text.embeds), text.mask, f32(text.pooled), text.valid_tokens)
    inputs32 = SectionInputs(**{k: f32(v) for k, v in vars(inputs).items()})
    fp32_out = StockTransformer(model).velocity(latents.float(), timestep.float(), guidance.float(), text32, inputs32)
    model.to(dtype)
    torch.cuda.empty_cache()
    floor = {
        "stock_cudnn_vs_stock": relative_l2(cudnn_out, stock_out),
        "stock_flash_vs_stock": relative_l2(flash_out, stock_out),
        "stock_vs_fp32": relative_l2(stock_out, fp32_out),
        "stock_cudnn_vs_fp32": relative_l2(cudnn_out, fp32_out),
    }
    return floor, fp32_out


def save_random_weights(size: str, weights_dir: Path, device: torch.device, dtype: torch.dtype) -> None:
    """Write random models of `size` into `weights_dir` in the hub layout that `load_models` reads."""
    models = random_models(size, device, dtype, device)
    paths = {c.name: c.path(weights_dir) for c in ENCODER_COMPONENTS}
    for name in ("text_encoder", "text_encoder_2", "image_encoder", "vae"):
        getattr(models, name).to("cpu").save_pretrained(paths[name])
        setattr(models, name, None)  # free host memory before the next component
    for name in ("tokenizer", "tokenizer_2", "feature_extractor"):
        getattr(models, name).save_pretrained(paths[name])
    models.transformers["original"].to("cpu").save_pretrained(transformer_component("original").path(weights_dir))
    print(f"random {size} weights written to {weights_dir}", flush=True)


def _engine_config(args, device: torch.device, dtype: torch.dtype, memory_mode: str) -> EngineConfig:
    """The service's start-up for the saved weights, forced into `memory_mode` (on a GPU)."""
    return EngineConfig(
        weights_dir=args.weights,
        variants=("original",),
        device=device.type,
        dtype=str(dtype).removeprefix("torch."),
        memory_mode=memory_mode,
    )


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def bench_low_vram(args, device, dtype, size, image, report: dict) -> dict:
    """Low-VRAM mode under each cap, then high-VRAM mode as the service runs it (compiled); same request.

    Both start the engine from `args.weights` as the service does (`engine.load_engine`), low-VRAM first, so
    the host's peak resident memory covers loading and streaming.
    """
    results: dict = {}

    def save() -> None:
        args.out.write_text(json.dumps({**report, "low_vram": results}, indent=2, default=str))

    cuda = device.type == "cuda"
    total = torch.cuda.get_device_properties(device).total_memory / 2**30 if cuda else None
    models = load_engine(_engine_config(args, device, dtype, "low")).models
    modules = [
        models.text_encoder,
        models.text_encoder_2,
        models.image_encoder,
        models.vae,
        *models.transformers.values(),
    ]
    results["weights_gib"] = sum(p.numel() * p.element_size() for m in modules for p in m.parameters()) / 2**30
    results["host_peak_rss_after_placement_gib"] = _peak_rss_gib()
    runs = [(cap, args.e2e_seconds, args.steps) for cap in args.vram_cap_gb]
    runs += [(cap, args.short_seconds, args.short_steps) for cap in args.short_caps_gb]
    low_latents = {}
    for cap, seconds, steps in runs:
        key = _run_key(cap, seconds, steps)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), torch.cuda.current_device())
        try:
            low = end_to_end(models, image, size, PackedTransformer, False, seconds, steps, device)
            run = {k: v for k, v in low.items() if k != "latents"}
            low_latents[key] = low["latents"]
        except torch.OutOfMemoryError as error:
            run = {"error": f"out of memory: {str(error).splitlines()[0]}"}
        if cuda:
            run["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
        run["host_peak_rss_gib"] = _peak_rss_gib()
        results[key] = run
        save()
        print(f"low VRAM, {key}", run, flush=True)
    results["host_peak_rss_low_gib"] = _peak_rss_gib()
    results["host_rss_over_weights"] = results["host_peak_rss_low_gib"] / results["weights_gib"]

    del models, modules
    gc.collect()
    if cuda:
        torch.cuda.set_per_process_memory_fraction(1.0, torch.cuda.current_device())
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    models = load_engine(_engine_config(args, device, dtype, "high")).models
    warm = time.perf_counter()  # compile for this prompt's length once, outside the timed runs
    end_to_end(models, image, size, PackedTransformer, False, 1.0, 1, device)
    results["high_warmup_s"] = time.perf_counter() - warm
    for seconds, steps in dict.fromkeys((seconds, steps) for _, seconds, steps in runs):
        high = end_to_end(models, image, size, PackedTransformer, False, seconds, steps, device)
        baseline = {k: v for k, v in high.items() if k != "latents"}
        if cuda:
            baseline["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
        results[f"high_{seconds:g}s_{steps}steps"] = baseline
        print("high VRAM", seconds, steps, baseline, flush=True)
        for cap, run_seconds, run_steps in runs:
            run = results[_run_key(cap, run_seconds, run_steps)]
            if (run_seconds, run_steps) != (seconds, steps) or "error" in run:
                continue
            run["relative_l2_vs_high"] = relative_l2(low_latents[_run_key(cap, seconds, steps)], high["latents"])
            run["time_ratio_vs_high"] = run["total"] / baseline["total"]
            run["sampling_ratio_vs_high"] = run["sampling"] / baseline["sampling"]
        save()
    return results


def _run_key(cap: float, seconds: float, steps: int) -> str:
    return f"cap_{cap:g}gib_{seconds:g}s_{steps}steps"


def _finish(report: dict, out: Path) -> int:
    out.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps({k: v for k, v in report.items() if k != "e2e"}, indent=1, default=str))
    for name, run in report.get("e2e", {}).items():
        stages = ", ".join(f"{k} {v:.1f}" for k, v in run.items() if isinstance(v, float))
        print(f"{name:22s} {stages}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
