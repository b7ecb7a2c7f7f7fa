"""Whole generations, timed per stage: the reference's loop (stock forward, in-line decode) against ours.

Each run generates the same request, a 640-bucket video from a random image, and writes its MP4.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from framepack.core.progress import ProgressReporter
from framepack.core.request import build_request
from framepack.runtime.pipeline import GenerationOptions
from framepack.runtime.transformer import PackedTransformer

from .measure import peak_memory, relative_l2

PROMPT = "A person dances in a sunlit room."


@contextmanager
def counting_block_stack_runs(counter: list[int]):
    """Count into counter[0] how often our runner really ran the block stack (a step cache skips some runs)."""
    original = PackedTransformer._run_blocks

    def run_blocks(self, *args):
        counter[0] += 1
        return original(self, *args)

    PackedTransformer._run_blocks = run_blocks
    try:
        yield counter
    finally:
        PackedTransformer._run_blocks = original


def end_to_end(
    engine,
    image: Path,
    size: tuple[int, int],
    runner,
    step_cache: str,
    seconds: float,
    steps: int,
    device: torch.device,
    our_decode: bool = False,
    variant: str = "original",
    on_step=None,
    record=None,
) -> dict:
    """One generation and its MP4 on `engine` (`Engine.generate`), timed per stage; reports the run's peak GPU
    memory.

    `our_decode`: in the background where memory allows, shared tiles decoded once, and F1's MP4 encoded as its
    frames become final; else as the reference decodes (in line, each section whole) and encodes (at the end).
    `step_cache`: "none", "teacache" or "magcache" (at the API's default settings).
    Returns the stage seconds, the decode plan's log lines, the frame count, the block-stack runs per section (our
    runner's; the stock forward runs the stack at every call), and the video's latents (1, 16, T, h, w) and frames
    (T, H, W, 3) uint8. `on_step` and `record` are the pipeline's hooks.
    """
    request = build_request(
        {
            "input_image": image,
            "prompt": PROMPT,
            "seed": 1,
            "total_video_length_seconds": seconds,
            "steps": steps,
            "step_cache": step_cache,
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
    with counting_block_stack_runs([0]) as block_stack_runs:
        result = engine.generate(
            request,
            image.with_name("output.mp4"),
            progress=progress,
            options=GenerationOptions(
                runner=runner,
                background_decode=None if our_decode else False,
                reuse_decoded_tiles=our_decode,
                on_step=on_step,
                record=record,
                encode_while_sampling=our_decode,
            ),
        )
    return {
        "total": time.perf_counter() - started,
        **progress.timings,
        **peak_memory(device),
        "decode_plan": decode_lines,
        "frames": int(result.frames.shape[0]),
        "section_steps": result.num_sections * steps,
        "block_stack_runs_per_section": (
            block_stack_runs[0] / result.num_sections if issubclass(runner, PackedTransformer) else None
        ),
        "latents": result.video_latents,
        "pixels": result.frames,
    }


@dataclass
class EndToEndRuns:
    """Named end-to-end runs of one request, each added to `report["e2e"]` and saved to `out` as it finishes."""

    engine: object
    image: Path
    size: tuple[int, int]
    device: torch.device
    seconds: float
    steps: int
    variant: str
    report: dict
    out: Path
    results: dict = field(default_factory=dict)

    def run(self, name: str, runner, step_cache: str, our_decode: bool = False) -> dict:
        self.results[name] = end_to_end(
            self.engine,
            self.image,
            self.size,
            runner,
            step_cache,
            self.seconds,
            self.steps,
            self.device,
            our_decode,
            self.variant,
        )
        summary = {k: v for k, v in self.results[name].items() if k not in ("latents", "pixels")}
        self.report.setdefault("e2e", {})[name] = summary
        self.out.write_text(json.dumps(self.report, indent=2, default=str))  # partial results survive a timeout
        print(name, summary, flush=True)
        return self.results[name]

    def warm_up(self, key: str, runner, our_decode: bool) -> None:
        """One untimed 1-step generation: first-use costs (compilation, kernel choice) are not charged to a run."""
        started = time.perf_counter()
        end_to_end(self.engine, self.image, self.size, runner, "none", 1.0, 1, self.device, our_decode, self.variant)
        self.report[key] = time.perf_counter() - started

    def compare_reference_decode(self, suffix: str, runner, step_cache: str) -> None:
        """Our loop again with the reference's decode: the time ours saves, and whether the video is the same."""
        ours = self.results[f"ours_{suffix}"]
        reference = self.run(f"ours_reference_decode_{suffix}", runner, step_cache, our_decode=False)
        self.report[f"e2e_our_decode_{suffix}"] = {
            "seconds_saved": reference["total"] - ours["total"],
            "frames_equal": bool(torch.equal(ours["pixels"], reference["pixels"])),
            "frames_max_difference": int((ours["pixels"].int() - reference["pixels"].int()).abs().max()),
        }

    def latents_relative_l2(self, name: str, baseline: str) -> float:
        return relative_l2(self.results[name]["latents"], self.results[baseline]["latents"])

    def speedup(self, baseline: str, name: str) -> float:
        return self.results[baseline]["total"] / self.results[name]["total"]


def preview_cost(runs: EndToEndRuns, rounds: int = 2) -> dict:
    """Sampling seconds of our loop without and with the studio's live preview (`previews.ThrottledPreview`).

    The two alternate, `rounds` times each, so drift of the GPU's clock falls on both; reports the medians,
    their ratio and how many previews were made.
    """
    from framepack.serving.previews import ThrottledPreview
    from framepack.serving.studio import PREVIEW_INTERVAL_S

    def sampling_seconds(**hooks) -> float:  # our loop, our decode, TeaCache off
        return end_to_end(
            runs.engine, runs.image, runs.size, PackedTransformer, "none", runs.seconds, runs.steps, runs.device,
            True, runs.variant, **hooks,
        )["sampling"]  # fmt: skip

    seconds: dict[str, list[float]] = {"without": [], "with": []}
    pictures = []
    for _ in range(rounds):
        seconds["without"].append(sampling_seconds())
        preview = ThrottledPreview(lambda section, step, picture: pictures.append(picture.shape), PREVIEW_INTERVAL_S)
        seconds["with"].append(sampling_seconds(on_step=preview, record=preview.record))
    median = {name: sorted(values)[len(values) // 2] for name, values in seconds.items()}
    result = {"sampling_s": seconds, "ratio_with_over_without": median["with"] / median["without"]}
    result["previews"] = len(pictures)
    result["preview_shape"] = list(pictures[0]) if pictures else None
    print("preview cost", result, flush=True)
    return result
