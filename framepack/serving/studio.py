"""The web studio: a Gradio page over the engine, with live previews, a section timeline, presets and Stop.

`python -m framepack ui` starts it (`cli.py`). The form is built from the request model's table
(`request.INPUT_SPECS`): every input with its default, range and description. A run validates the inputs as
the API does, then generates on a worker thread while the page shows the progress line, a preview of the
latents being sampled (`previews.py`), the video so far after each section, and at the end the MP4, its
seed and timings. Stop ends the run at the next sampling step; the sections already finished stay as a
playable video, labelled partial. One generation runs at a time; others wait in Gradio's queue, which shows
their position. Beside the page, `/generate` takes the API's inputs by name and returns the MP4.

Gradio is imported only here, when the studio starts, so the API and the engine stay light without it.
"""

from __future__ import annotations

import atexit
import inspect
import logging
import queue
import random
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import SecretStr

from ..core import controls, planner
from ..core.progress import ProgressReporter
from ..core.request import EARLIER_INPUTS, INPUT_SPECS, MAX_SEED, FileInputs, InputSpec, build_request
from ..core.video import write_mp4
from ..errors import InvalidInput
from ..runtime.pipeline import GenerationOptions
from .engine import Engine
from .presets import SETTINGS, PresetStore, settings_from_video
from .previews import ThrottledPreview

logger = logging.getLogger(__name__)

PROGRESS_LINE = re.compile(r"section \d+/\d+, step \d+/\d+")
PREVIEW_INTERVAL_S = 0.5  # at most two preview copies a second leave the GPU
PRIVATE = "private"
# The page's own quick events: outside the queue, and not part of the API (beside the page: /generate alone).
PAGE_ONLY = {"queue": False, "api_visibility": PRIVATE}
BASICS = ("input_image", "prompt", "total_video_length_seconds", "model_variant", "seed")
TIMELINE = ("section_prompts", "prompt_blend_sections", "section_images", "section_image_indices")
END_FRAME = ("end_image", "end_image_strength")
CONTINUE = ("input_video", "video_context_frames", "include_input_video")
LORAS = ("lora_weights", "lora_scale", "extra_lora", "extra_lora_scale", "hf_api_token", "civitai_api_token")
SHOWN = tuple(name for name in INPUT_SPECS if name not in EARLIER_INPUTS)  # step_cache replaces use_teacache
ADVANCED = tuple(name for name in SHOWN if name not in BASICS + TIMELINE + END_FRAME + CONTINUE + LORAS)
VIDEO_INPUTS = ("input_video",)


class StopRequested(Exception):
    """Raised inside the sampling loop when the user pressed Stop."""


@dataclass
class RunEvent:
    """One message from the worker to the page: kind is progress, preview, section, done, stopped or failed."""

    kind: str
    text: str = ""
    image: Any = None
    path: Path | None = None


@dataclass
class Job:
    """A generation on a worker thread, reporting through `events`; `stop` ends it at the next step."""

    events: queue.Queue = field(default_factory=queue.Queue)
    stop: threading.Event = field(default_factory=threading.Event)


def timeline_rows(
    length_seconds: float,
    window: int,
    prompt: str,
    section_prompts: str,
    keyframe_names: list[str],
    indices: str,
    continues: bool = False,
) -> list[list[Any]]:
    """One row per section in video order: [section, from s, to s, prompt, keyframe file or ""].

    The spans follow the section grid (`controls.section_grid`; from the first new frame when the video
    `continues` an input video), planned as the request will be (`controls.plan_schedule`); bad section prompts
    or keyframe indices show the prompt and no keyframe here, and the run names the problem.
    """
    num_sections = planner.section_count(length_seconds, window)
    prompts = {"section_prompts": section_prompts}
    keyframes = {"keyframe_indices": indices, "keyframe_count": len(keyframe_names)}
    schedule = None
    for planned in ({**prompts, **keyframes}, prompts, keyframes, {}):  # what plans, the bad parts left out
        try:
            schedule = controls.plan_schedule(num_sections, window, prompt, continues=continues, **planned)
            break
        except InvalidInput:
            continue
    return [
        [index, round(start, 2), round(end, 2), schedule.prompts[index], _keyframe_name(keyframe_names, keyframe)]
        for index, ((start, end), keyframe) in enumerate(zip(schedule.grid, schedule.keyframes))
    ]


def _keyframe_name(names: list[str], keyframe: int | None) -> str:
    return names[keyframe] if keyframe is not None else ""


def api_inputs(values: dict[str, Any]) -> dict[str, Any]:
    """Form values as the request model takes them: files as paths, empty optional files left out."""
    inputs = {}
    for name, value in values.items():
        spec = INPUT_SPECS[name]
        if spec.type is Path:
            value = _path_of(value)
        elif spec.type is list:
            value = [_path_of(item) for item in value or [] if _path_of(item) is not None]
        if value is not None:
            inputs[name] = value
    return inputs


def _path_of(value: Any) -> Path | None:
    """A path from what Gradio hands over: a path string, a file dict or object (`path`, `name`), or None."""
    if value is None or value == "":
        return None
    if isinstance(value, dict):  # an API call's file: {"path": ..., "orig_name": ..., ...}
        return Path(value["path"]) if value.get("path") else None
    for attribute in ("path", "name"):
        if hasattr(value, attribute) and not isinstance(value, (str, Path)):
            return Path(getattr(value, attribute))
    return Path(value)


class SoFarWriter:
    """Encodes the video so far on a thread of its own, so sampling never waits for it.

    Only the newest frames handed over are encoded: a section that ends while the previous one is still being
    written replaces it. Each finished file replaces the previous one on disk; `emit(path)` announces it.
    """

    def __init__(self, folder: Path, stem: str, crf: int, emit):
        self.folder, self.stem, self.crf, self.emit = folder, stem, crf, emit
        self.latest: Path | None = None
        self._pending: tuple[int, torch.Tensor] | None = None
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="framepack-so-far")
        self._thread.start()

    def submit(self, sections: int, frames: torch.Tensor) -> None:
        with self._wake:
            self._pending = (sections, frames)
            self._wake.notify()

    def close(self, timeout: float = 60.0) -> Path | None:
        """Write what is pending, stop, and return the newest file."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout)
        return self.latest

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._pending is None and not self._closed:
                    self._wake.wait()
                if self._pending is None:
                    return
                (sections, frames), self._pending = self._pending, None
            path = self.folder / f"{self.stem}-{sections}.mp4"
            write_mp4(frames, path, self.crf)
            if self.latest is not None:
                self.latest.unlink(missing_ok=True)
            self.latest = path
            self.emit(sections, path)


class Studio:
    """The engine and the one generation that may run; `output_dir` keeps every finished video.

    Stop ends the generation that runs, whoever started it: the studio is for one user (or a few who share
    it), bound to 127.0.0.1 by default.
    """

    def __init__(self, engine: Engine, output_dir: Path, presets: PresetStore, files: FileInputs = FileInputs()):
        self.engine = engine
        self.output_dir = Path(output_dir)
        self.presets = presets
        self.files = files
        self.lock = threading.Lock()  # one generation at a time, also when a closed page left one finishing
        self.scratch = Path(tempfile.mkdtemp(prefix="framepack-studio-"))  # the videos so far; gone at exit
        atexit.register(shutil.rmtree, self.scratch, True)
        self.job: Job | None = None

    def start(self, inputs: dict[str, Any]) -> Job:
        """Validate `inputs` (raises InvalidInput) and start generating on a worker thread."""
        request = build_request(inputs, files=self.files)
        job = Job()
        self.job = job
        threading.Thread(target=self._generate, args=(request, job), daemon=True, name="framepack-studio").start()
        return job

    def stop(self) -> None:
        if self.job is not None:
            self.job.stop.set()

    def _generate(self, request, job: Job) -> None:
        with self.lock:
            self._generate_locked(request, job)

    def _generate_locked(self, request, job: Job) -> None:
        """The worker: generate with previews and per-section videos; the last event says how it ended."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        output = self.output_dir / f"framepack-{stamp}-{request.seed}.mp4"
        sections_done = [0]
        so_far = SoFarWriter(
            self.scratch,
            f"so-far-{stamp}",
            request.mp4_crf,
            lambda sections, path: job.events.put(
                RunEvent("section", f"{sections}/{request.num_sections} sections", path=path)
            ),
        )
        preview = ThrottledPreview(
            lambda section, step, picture: job.events.put(
                RunEvent("preview", f"section {section + 1}, step {step + 1}", image=picture.numpy())
            ),
            PREVIEW_INTERVAL_S,
        )

        def on_step(section: int, step: int, x0: torch.Tensor) -> None:
            if job.stop.is_set():
                raise StopRequested
            preview(section, step, x0)

        def on_section(frames: torch.Tensor) -> None:
            sections_done[0] += 1
            if frames.shape[0]:
                so_far.submit(sections_done[0], frames)

        progress = ProgressReporter(
            request.num_sections,
            request.steps,
            write=lambda line: job.events.put(RunEvent("progress", line)) if PROGRESS_LINE.match(line) else None,
        )
        options = GenerationOptions(on_step=on_step, on_section=on_section, record=preview.record)
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            result = self.engine.generate(request, output, progress, options)
            so_far.close()
            timings = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in result.timings.items())
            job.events.put(RunEvent("done", f"seed {request.seed}; {timings}", path=output))
        except StopRequested:
            partial = so_far.close()
            job.events.put(RunEvent("stopped", f"stopped after {sections_done[0]} sections", path=partial))
        except Exception as error:  # noqa: BLE001  (reported on the page; the studio stays up)
            so_far.close()
            logger.exception("generation failed")
            job.events.put(RunEvent("failed", str(error)))


def _component(gr, spec: InputSpec):
    """The Gradio input for one API input, with its default, range and description."""
    common = {"label": spec.name, "info": spec.description, "elem_id": f"input-{spec.name}"}
    if spec.name in VIDEO_INPUTS:  # a file as uploaded: a video component would convert what it cannot play
        return gr.File(file_types=["video"], label=spec.name, elem_id=common["elem_id"])
    if spec.type is Path:
        return gr.Image(type="filepath", sources=["upload"], label=spec.name, elem_id=common["elem_id"])
    if spec.type is list:
        return gr.File(file_count="multiple", file_types=["image"], label=spec.name, elem_id=common["elem_id"])
    if spec.choices:
        return gr.Dropdown(list(spec.choices), value=spec.default, **common)
    if spec.type is bool:
        return gr.Checkbox(value=spec.default, **common)
    if spec.type is SecretStr:
        return gr.Textbox(value="", type="password", **common)
    if spec.name == "seed":
        return gr.Number(value=spec.default, precision=0, minimum=spec.ge, maximum=spec.le, **common)
    if spec.type in (int, float):
        step = 1 if spec.type is int else (0.01 if spec.le - spec.ge <= 2 else 0.1)
        return gr.Slider(minimum=spec.ge, maximum=spec.le, step=step, value=spec.default, **common)
    lines = 3 if "prompt" in spec.name else 1
    return gr.Textbox(value=spec.default or "", lines=lines, max_length=spec.max_length, **common)


def build_app(studio: Studio):
    """The page and the `/generate` endpoint."""
    import gradio as gr

    names = list(SHOWN)
    with gr.Blocks(title="FramePack studio") as app:
        gr.Markdown("# FramePack studio")
        components: dict[str, Any] = {}
        with gr.Row():
            with gr.Column(scale=1):
                for name in BASICS:
                    components[name] = _component(gr, INPUT_SPECS[name])
                random_seed = gr.Button("Random seed", elem_id="random-seed", size="sm")
                with gr.Accordion("Sections", open=True):
                    for name in TIMELINE:
                        components[name] = _component(gr, INPUT_SPECS[name])
                    timeline = gr.Dataframe(
                        headers=["section", "from s", "to s", "prompt", "keyframe"],
                        interactive=False,
                        elem_id="timeline",
                        label="Timeline (video order)",
                    )
                folded = [("End frame", END_FRAME), ("Continue a video", CONTINUE), ("LoRA", LORAS)]
                for title, group in [*folded, ("Advanced", ADVANCED)]:
                    with gr.Accordion(title, open=False):
                        for name in group:
                            components[name] = _component(gr, INPUT_SPECS[name])
                with gr.Accordion("Presets", open=False):
                    preset_names = gr.Dropdown(studio.presets.names(), label="preset", elem_id="preset-names")
                    preset_name = gr.Textbox(label="name", elem_id="preset-name")
                    with gr.Row():
                        save = gr.Button("Save", elem_id="preset-save", size="sm")
                        load = gr.Button("Load", elem_id="preset-load", size="sm")
                        delete = gr.Button("Delete", elem_id="preset-delete", size="sm")
                    reuse = gr.File(label="Reuse settings from a video", file_types=[".mp4"], elem_id="reuse-video")
                    preset_status = gr.Markdown(elem_id="preset-status")
            with gr.Column(scale=1):
                with gr.Row():
                    run = gr.Button("Generate", variant="primary", elem_id="run")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
                status = gr.Markdown(elem_id="status")
                progress_line = gr.Markdown(elem_id="progress")
                preview = gr.Image(label="Preview (latents being sampled)", elem_id="preview", interactive=False)
                so_far = gr.Video(label="Video so far", elem_id="so-far", interactive=False)
                final = gr.Video(label="Video", elem_id="final", interactive=False)
                download = gr.File(label="Download", elem_id="download", interactive=False)

        inputs = [components[name] for name in names]
        settings = [components[name] for name in SETTINGS]

        def refresh_timeline(length, window, prompt, section_prompts, images, indices, video):
            keyframe_names = [p.name for p in api_inputs({"section_images": images}).get("section_images", [])]
            rows = (length, int(window), prompt or "", section_prompts or "", keyframe_names, indices)
            return timeline_rows(*rows, continues=_path_of(video) is not None)

        timeline_inputs = [
            components[n]
            for n in (
                "total_video_length_seconds",
                "latent_window_size",
                "prompt",
                "section_prompts",
                "section_images",
                "section_image_indices",
                "input_video",
            )
        ]
        for component in timeline_inputs:
            component.change(refresh_timeline, timeline_inputs, timeline, **PAGE_ONLY)
        app.load(refresh_timeline, timeline_inputs, timeline, **PAGE_ONLY)
        random_seed.click(
            lambda: random.randint(0, MAX_SEED), None, components["seed"], queue=False, api_visibility=PRIVATE
        )

        def run_from_page(*values) -> Iterator[tuple]:
            keep = gr.skip()
            try:
                job = studio.start(api_inputs(dict(zip(names, values))))
            except InvalidInput as error:
                yield f"**{error}**", keep, keep, keep, keep, keep
                return
            yield "Running…", "", None, None, None, None
            try:
                yield from _page_updates(job, keep)
            finally:  # the page went away (or the run ended): a run nobody watches stops at its next step
                job.stop.set()

        def _page_updates(job: Job, keep) -> Iterator[tuple]:
            while True:
                event = job.events.get()
                if event.kind == "progress":
                    yield keep, event.text, keep, keep, keep, keep
                elif event.kind == "preview":
                    yield keep, keep, event.image, keep, keep, keep
                elif event.kind == "section":
                    yield keep, keep, keep, str(event.path), keep, keep
                elif event.kind == "done":
                    yield f"Done: {event.text}", keep, keep, keep, str(event.path), str(event.path)
                    return
                elif event.kind == "stopped":
                    partial = str(event.path) if event.path else None
                    yield f"Stopped: partial video, {event.text}", keep, keep, partial, None, partial
                    return
                else:
                    yield f"**Failed:** {event.text}", keep, keep, keep, keep, keep
                    return

        def validate_form(*values):
            """Before a run: the API's validation, its error shown at the input it names."""
            try:
                build_request(api_inputs(dict(zip(names, values))), files=studio.files)
                error = None
            except InvalidInput as invalid:
                error = invalid
            return [
                gr.validate(error is None or error.name != name, error.message if error and error.name == name else "")
                for name in names
            ]

        run.click(
            run_from_page,
            inputs,
            [status, progress_line, preview, so_far, final, download],
            validator=validate_form,
            concurrency_limit=1,
            concurrency_id="generation",
            api_visibility=PRIVATE,
        )
        stop.click(studio.stop, None, None, **PAGE_ONLY)

        def save_preset(name, *values):
            try:
                studio.presets.save(name, dict(zip(SETTINGS, values)))
            except InvalidInput as error:
                return gr.update(), f"**{error}**"
            return gr.update(choices=studio.presets.names(), value=name.strip()), f"Saved preset {name.strip()!r}"

        def load_settings(found: dict[str, Any], message: str):
            return [found.get(name, gr.skip()) for name in SETTINGS] + [message]

        def load_preset(name):
            try:
                return load_settings(studio.presets.load(name or ""), f"Loaded preset {name!r}")
            except InvalidInput as error:
                return [gr.skip()] * len(SETTINGS) + [f"**{error}**"]

        def delete_preset(name):
            studio.presets.delete(name or "")
            return gr.update(choices=studio.presets.names(), value=None), f"Deleted preset {name!r}"

        def reuse_video(file):
            if file is None:
                return [gr.skip()] * len(SETTINGS) + [""]
            try:
                return load_settings(settings_from_video(_path_of(file)), "Settings restored from the video")
            except (InvalidInput, OSError, ValueError) as error:
                return [gr.skip()] * len(SETTINGS) + [f"**{error}**"]

        save.click(
            save_preset, [preset_name, *settings], [preset_names, preset_status], queue=False, api_visibility=PRIVATE
        )
        load.click(load_preset, preset_names, [*settings, preset_status], **PAGE_ONLY)
        delete.click(delete_preset, preset_names, [preset_names, preset_status], **PAGE_ONLY)
        reuse.upload(reuse_video, reuse, [*settings, preset_status], **PAGE_ONLY)
        app.load(
            lambda: gr.update(choices=studio.presets.names()), None, preset_names, queue=False, api_visibility=PRIVATE
        )
        gr.api(_api_function(studio), api_name="generate", concurrency_limit=1, concurrency_id="generation")
    return app


def _api_function(studio: Studio):
    """`/generate`: the API's inputs as keyword arguments (files as uploads), returning the MP4.

    Positionally the inputs come in the API's order (input_image, then prompt, ...), as before input_image
    became optional; so every parameter has a default, and a missing required input (the prompt) is refused by
    the request's own validation with the usual message.
    """
    import gradio as gr
    from gradio.data_classes import FileData

    names = list(INPUT_SPECS)

    def generate(*args, **kwargs):
        values = dict(zip(names, args)) | kwargs
        try:
            job = studio.start(api_inputs(values))
        except InvalidInput as error:
            raise gr.Error(str(error)) from None  # gr.Error reaches the client; other exceptions are hidden
        while True:
            event = job.events.get()
            if event.kind == "done":
                return FileData(path=str(event.path))
            if event.kind in ("stopped", "failed"):
                raise gr.Error(f"generation {event.kind}: {event.text}")

    hints = {Path: FileData | None, list: list[FileData]}
    parameters = []
    for name in names:
        spec = INPUT_SPECS[name]
        annotation = hints.get(spec.type, spec.type)
        default = None if spec.required else spec.default
        if spec.type is list:
            default = None
            annotation = list[FileData] | None
        parameters.append(
            inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default, annotation=annotation)
        )
    generate.__signature__ = inspect.Signature(parameters, return_annotation=FileData)
    generate.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": FileData}
    generate.__doc__ = "Generate a video from the prediction API's inputs; returns the MP4."
    return generate


def launch(engine: Engine, *, server: str, port: int, share: bool, inbrowser: bool, auth: str | None, output_dir: Path):
    """Build the page over `engine` and serve it (blocking)."""
    from gradio.utils import get_upload_folder

    # Images only from Gradio's uploads and LoRA files only from the LoRA folders: with --share or another
    # --server, the page and /generate are open to others, who must not read this machine's files.
    files = FileInputs(served=True, lora_dirs=engine.config.local_lora_dirs(), upload_dir=Path(get_upload_folder()))
    studio = Studio(engine, output_dir, PresetStore(), files)
    app = build_app(studio)
    if share:
        logger.warning("--share: anyone with the printed gradio.live link can use this GPU and see its outputs")
    credentials = tuple(auth.split(":", 1)) if auth else None
    app.queue(default_concurrency_limit=1).launch(
        server_name=server,
        server_port=port,
        share=share,
        inbrowser=inbrowser,
        auth=credentials,
        allowed_paths=[str(output_dir), str(studio.scratch)],
    )
