"""The generation loop: conditioning, section by section sampling, history, VAE decode and soft append.

docs/ALGORITHM.md §6, §7. For the "original" variant sections are generated from the end of the video backwards and
prepended to the history; for "f1" forwards and appended. The history latents stay float32 on the CPU, as in
the reference; the transformer and the sampler math run on `models.device`. Where GPU memory allows, each
section's decode runs while the next section samples (`decoding.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch

from ..config import LoraDownloads
from ..core import planner
from ..core.frames import FrameAssembler
from ..core.progress import ProgressReporter
from ..core.request import GenerationRequest
from ..core.sampler import SamplingSettings, camera_roll, flow_x0, flux_mu, flux_sigmas, noisy_token_count, sample_unipc
from ..core.step_cache import StepCache
from ..core.variants import Variant, variant_named
from ..models import FramePackModels, lora
from . import conditioning
from .compilation import settle_cublas
from .decoding import SectionDecoder, UpcomingDecode, background_decode_plan
from .placement import Placement
from .streaming import streams_weights
from .transformer import PackedTransformer, SectionInputs, TextInputs, TransformerRunner

LATENT_CHANNELS = 16


@dataclass
class GenerationResult:
    """frames: (T, H, W, 3) uint8 in video order; video_latents: (1, 16, T_latent, H/8, W/8) float32."""

    frames: torch.Tensor
    video_latents: torch.Tensor
    num_sections: int
    timings: dict[str, float] = field(default_factory=dict)
    plan: list[dict] = field(default_factory=list)  # per generated section: video index, prompt, blend, keyframe


class TensorRecorder:
    """Keeps CPU copies of named intermediate tensors (for --dump-tensors); a no-op when disabled."""

    def __init__(self, enabled: bool):
        self.tensors: dict[str, torch.Tensor] | None = {} if enabled else None

    def __call__(self, name: str, tensor: torch.Tensor) -> None:
        if self.tensors is not None:
            self.tensors[name] = tensor.detach().to("cpu").contiguous().clone()


@dataclass(frozen=True)
class GenerationOptions:
    """How to run a generation beyond its request; the defaults are what the service does.

    runner: wraps the transformer (PackedTransformer; the benchmark swaps in the stock forward).
    background_decode: decode each section while the next one samples (`decoding.py`); None decides by the free
        GPU memory, False decodes in line as the reference does.
    reuse_decoded_tiles: do not decode again the VAE tiles two sections share, where the VAE decodes on the
        execution device, resident or visiting (`tiled_decode.py`); False decodes each section whole, as the
        reference does. The frames are the same either way.
    on_frames: F1 only, which generates forwards: called with each run of final uint8 frames (T, H, W, 3), in
        video order, as soon as it is final (from the decode's thread), so the MP4 can be encoded while later
        sections sample. The frames after those handed over are final only when `generate` returns (the last
        `overlap`; for the original variant, all). `Engine.generate` sets it to its MP4 writer when
        `encode_while_sampling`; False encodes every frame at the end, as the reference does.
    lora_downloads: where the request's LoRA URLs are cached and how large one may be (`EngineConfig`).
    on_step: called after every sampling step with (generation index of the section, step index, the step's
        x_0 prediction (1, 16, lws, h, w) float32 on the execution device); for previews. It runs in the
        sampling loop: keep it cheap (a copy to the host waits for the GPU). Raising stops the generation.
    on_section: called after each section with the frames so far (T, H, W, 3) uint8 in video order, the
        section's own included: with it the VAE decodes in line, after each section.
    record: receives the intermediate tensors by name (the CLI's --dump-tensors).
    step_cache: one step cache for every call instead of the request's (`magcache.MagCacheCalibration`).
    """

    runner: type[TransformerRunner] = PackedTransformer
    background_decode: bool | None = None
    reuse_decoded_tiles: bool = True
    on_frames: Callable[[torch.Tensor], None] | None = None
    encode_while_sampling: bool = True
    lora_downloads: LoraDownloads = LoraDownloads()
    on_step: Callable[[int, int, torch.Tensor], None] | None = None
    on_section: Callable[[torch.Tensor], None] | None = None
    record: TensorRecorder | None = None
    step_cache: StepCache | None = None


def section_inputs(
    section: planner.SectionPlan, history: torch.Tensor, cond: conditioning.Conditioning, variant: Variant
) -> SectionInputs:
    """Slice the section's context out of the history (1, 16, T_hist, h, w) and pair it with its indices.

    The start slot holds the section's keyframe (or the start latent); on the first generated section of the
    original variant, an end frame takes the 1x slot.
    """
    one_x, two_x, four_x = variant.context_slices()
    newest = history[:, :, one_x]
    if section.is_first and cond.end_latent is not None:
        newest = cond.end_latent
    as_tensor = lambda values: torch.tensor(values, dtype=torch.long)  # noqa: E731
    return SectionInputs(
        latent_indices=as_tensor(section.latent_indices),
        clean_latents=torch.cat([cond.start_slot(section.video_index), newest], dim=2),
        clean_latent_indices=as_tensor(section.clean_latent_indices),
        clean_latents_2x=history[:, :, two_x],
        clean_latent_2x_indices=as_tensor(section.clean_latent_2x_indices),
        clean_latents_4x=history[:, :, four_x],
        clean_latent_4x_indices=as_tensor(section.clean_latent_4x_indices),
        image_embeds=cond.image_embeds,
    )


def sample_section(
    transformer: TransformerRunner,
    settings: SamplingSettings,
    texts: dict[str, TextInputs],
    inputs: SectionInputs,
    noise: torch.Tensor,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
    step_cache: StepCache | None = None,
) -> torch.Tensor:
    """Denoise one section's window; returns the final x_0 prediction (1, 16, lws, h, w) float32.

    `on_step(step index, x_0)` follows every step. `step_cache` replaces the request's for both CFG branches.
    """
    device, dtype = transformer.device, transformer.dtype
    _, _, _, latent_height, latent_width = noise.shape
    guidance = torch.tensor([settings.distilled_cfg_scale * 1000.0]).to(device=device, dtype=dtype)
    step_caches = settings.step_cache.branch_states(settings.variant, settings.steps)
    if step_cache is not None:
        step_caches = dict.fromkeys(step_caches, step_cache)
    sigmas = flux_sigmas(settings.steps, flux_mu(noisy_token_count(tuple(noise.shape))))
    edit = camera_roll(settings.steps, settings.camera_movement) if settings.camera_movement > 0 else None
    with transformer.on_device():
        prepared = transformer.prepare_section(inputs, latent_height, latent_width)

        def velocity(x: torch.Tensor, timestep: torch.Tensor, branch: str) -> torch.Tensor:
            return transformer.velocity(x, timestep, guidance, texts[branch], prepared, step_caches[branch])

        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            return flow_x0(x, sigma, velocity, dtype, settings.cfg_scale, settings.cfg_rescale)

        x0 = sample_unipc(denoise, noise.to(device=device, dtype=torch.float32), sigmas, on_step, edit)
    return x0.to("cpu")


def generate(
    request: GenerationRequest,
    models: FramePackModels,
    progress: ProgressReporter | None = None,
    options: GenerationOptions = GenerationOptions(),
    placement: Placement | None = None,
) -> GenerationResult:
    """The request's frames, without an MP4: encode, then sample and decode the sections.

    What the engine's one path (`engine.Engine.generate`) runs between placing the models and writing the video;
    tests and benchmarks call it on models they placed themselves (`placement`, by default none: the models run
    where they are). `progress` reports and times the stages.
    """
    progress = progress or ProgressReporter(request.num_sections, request.steps)
    settle_cublas(models.device)
    with request_transformer(request, models, placement or Placement.on_cpu(), options) as transformer:
        cond = encode(request, models, progress, options.record)
        return sample_sections(request, models, cond, transformer, progress, options)


@contextmanager
def request_transformer(
    request: GenerationRequest, models: FramePackModels, placement: Placement, options: GenerationOptions
) -> Iterator[TransformerRunner]:
    """The request's variant with its LoRAs merged (on every worker too), as the runner its sections sample
    with (its blocks streamed or on the workers, as `placement` has them); the LoRAs are taken out again when
    the block exits.

    Call `compilation.settle_cublas` on this thread first: a LoRA merge runs float32 matrix products.
    """
    variant = request.model_variant
    model = models.transformers[variant]
    requested = [
        ("lora_weights", request.lora_weights, request.lora_scale),
        ("extra_lora", request.extra_lora, request.extra_lora_scale),
    ]
    loaded = lora.load_request_loras(model, requested, options.lora_downloads, request.lora_tokens)
    layers = [(item.layers, item.scale) for item in loaded]
    with lora.merged_loras(model, layers, models.device), ExitStack() as on_workers:
        # The runner is built with the LoRAs merged: it keeps a float32 copy of the output head.
        if placement.parallel is None:
            yield options.runner(model, models.device, placement.streamers.get(variant))
            return
        # The blocks run on several GPUs (`parallel.py`); the workers merge the same LoRA files.
        if options.runner is not PackedTransformer:
            raise ValueError(f"{options.runner.__name__} does not run on several GPUs")
        files = [(item.name, str(item.file), item.scale) for item in loaded]
        on_workers.enter_context(placement.parallel.merged_loras(variant, files))
        yield placement.parallel.transformer(model, variant)


def encode(
    request: GenerationRequest, models: FramePackModels, progress: ProgressReporter, record: TensorRecorder | None
) -> conditioning.Conditioning:
    """Encode what every section shares (prompts, images, latents) once, and log the request's section plan."""
    with progress.stage("encode"):
        cond = conditioning.encode_conditioning(request, models, record or TensorRecorder(False), progress.write)
    for line in [*request.schedule.notes, *request.schedule.describe()]:
        progress.write(line)
    return cond


def _step_callback(progress: ProgressReporter, on_step, generation_index: int) -> Callable[[int, torch.Tensor], None]:
    """The sampler's per-step callback: progress, then the caller's `on_step` with the section's index."""

    def step_done(step: int, x0: torch.Tensor) -> None:
        progress.step_done(step)
        if on_step is not None:
            on_step(generation_index, step, x0)

    return step_done


def _upcoming_decode(
    variant: Variant, section: planner.SectionPlan | None, lws: int, newest: torch.Tensor
) -> UpcomingDecode | None:
    """What is known of `section`'s decode window before it samples, from the history's `newest` latents."""
    layout = variant.known_decode_history(section, lws) if section is not None else None
    if layout is None:
        return None
    offset, count = layout
    return UpcomingDecode(section.decode_latents, offset, variant.newest(newest, count))


def sample_sections(
    request: GenerationRequest,
    models: FramePackModels,
    cond: conditioning.Conditioning,
    transformer: TransformerRunner,
    progress: ProgressReporter,
    options: GenerationOptions,
) -> GenerationResult:
    """The section loop: sample each section with `transformer`, join it to the history, and decode its frames
    as it finishes (in the background where GPU memory allows, `decoding.py`); returns the video's frames."""
    variant, lws, num_sections = variant_named(request.model_variant), request.latent_window_size, request.num_sections
    record = options.record or TensorRecorder(False)
    schedule = request.schedule
    start_latent = cond.start_latent
    _, _, _, latent_height, latent_width = start_latent.shape

    generator = torch.Generator("cpu").manual_seed(request.seed)
    settings = SamplingSettings.from_request(request)
    empty = torch.zeros(1, LATENT_CHANNELS, planner.HISTORY_FRAMES, latent_height, latent_width)
    history, generated_frames = variant.start_history(empty, cond.history_seed)
    # A continuation begins with the input video's last latent; its frame is the input's last, not a new one.
    assembler = FrameAssembler(
        planner.overlap_frames(lws),
        prepend=variant.prepends,
        on_final=options.on_frames,
        drop_leading=1 if request.input_video is not None else 0,
    )
    background_decode = options.background_decode
    if options.on_section is not None and background_decode is not False:
        # on_section is handed each section's frames at once, so they must be decoded by then.
        background_decode = False
        progress.write("VAE decode: after each section (its frames are shown as it ends)")
    if background_decode is None:
        background_decode, reason = background_decode_plan(models.vae, 8 * latent_height, 8 * latent_width)
        progress.write(f"VAE decode: {reason}")

    # Kept tiles live where the VAE decodes: it is resident on the execution device, or low-VRAM mode copies it
    # in for each section's decode. (Compare types: the VAE says "cuda:0" where the models say "cuda".)
    vae_decodes_here = models.vae.device.type == models.device.type or streams_weights(models.vae)
    reuse_tiles = options.reuse_decoded_tiles and vae_decodes_here
    sections = variant.plan_sections(num_sections, lws, cond.start_group_latents)
    plan = []
    with SectionDecoder(models.vae, assembler, progress, background_decode, reuse_tiles) as decoder:
        for section, upcoming in zip(sections, sections[1:] + [None]):
            progress.section_started(section.generation_index, f"video section {section.video_index}")
            noise = torch.randn((1, LATENT_CHANNELS, lws, latent_height, latent_width), generator=generator)
            inputs = section_inputs(section, history, cond, variant)
            blend = schedule.blends[section.video_index]
            texts = {"positive": cond.positive_text(section.video_index), "negative": cond.negative}
            plan.append(
                {
                    "generation_index": section.generation_index,
                    "video_index": section.video_index,
                    "prompt": blend.target,
                    "blend_from": blend.source if blend.blended else None,
                    "blend_weight": blend.weight,
                    "keyframe": schedule.keyframes[section.video_index],
                }
            )
            on_step = _step_callback(progress, options.on_step, section.generation_index)
            with progress.stage("sampling"):
                latents = sample_section(transformer, settings, texts, inputs, noise, on_step, options.step_cache)
            record(f"section_{section.generation_index}_latents", latents)
            record(f"section_{section.generation_index}_clean_latents", inputs.clean_latents)
            record(f"section_{section.generation_index}_clean_latents_2x", inputs.clean_latents_2x)
            record(f"section_{section.generation_index}_clean_latents_4x", inputs.clean_latents_4x)
            record(f"section_{section.generation_index}_prompt_embeds", texts["positive"].embeds)
            record(f"section_{section.generation_index}_pooled_prompt_embeds", texts["positive"].pooled)

            history, added = variant.add_section(history, latents, section, start_latent)
            generated_frames += added
            newest = variant.newest(history, generated_frames)
            decoder.submit(
                variant.newest(newest, section.decode_latents or generated_frames),
                _upcoming_decode(variant, upcoming, lws, newest),
            )
            if options.on_section is not None:
                options.on_section(decoder.assembler.frames())
        frames = decoder.finish()
        if decoder.tiles is not None:
            tiles = decoder.tiles
            progress.write(
                f"VAE decode: {tiles.decoded} tiles decoded ({tiles.prefetched} ahead of their "
                f"section), {tiles.reused} reused"
            )

    video_latents = newest
    record("video_latents", video_latents)
    record("frames_uint8", frames)
    return GenerationResult(
        frames=frames, video_latents=video_latents, num_sections=num_sections, timings=dict(progress.timings), plan=plan
    )
