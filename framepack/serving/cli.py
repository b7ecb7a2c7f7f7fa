"""`python -m framepack predict`: the local mirror of `cog predict`, for people and scripts without Docker.

`python -m framepack download-weights [--weights DIR]` pre-fetches the weights (e.g. to bake into an image).
`python -m framepack warm-cache [engine flags]` starts the engine once, so the compiled kernels are written to the
compile cache (`compile_cache.py`; FRAMEPACK_COMPILE_CACHE, by default beside the weights).
`python -m framepack calibrate-magcache -i ... [-o table.json]` measures MagCache's table for a request's step
count and weights (`magcache.MagCacheCalibration`); predict then takes it as `-i magcache_ratios=...`.
`python -m framepack ui [--server 127.0.0.1] [--port 7860] [--share] [--inbrowser] [--auth USER:PASSWORD]` starts
the web studio (`studio.py`), with the same engine flags as predict.

    python -m framepack predict -i prompt="..." -i input_image=@photo.jpg -i seed=42 [-i name=value ...]
        [--weights DIR] [--device cpu|cuda] [--dtype float32|bfloat16] [--fp8] [-o out.mp4]
        [--compile auto|on|off] [--attention auto|KERNEL] [--gpus auto|N] [--dump-tensors FILE]
    python -m framepack predict --from video.mp4 -i input_image=@photo.jpg [-i name=value ...]

`--from` restores the request and seed stored in an MP4 this project made (`presets.settings_from_video`, as
the studio's "reuse settings" does); `-i` inputs override them. Inputs are validated and the weights checked
before any model is loaded; a failure exits non-zero and leaves no output file behind. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

from ..config import MODEL_VARIANTS, EngineConfig, add_flags, flag_values
from ..core.request import INPUT_SPECS, GenerationRequest, build_request, parse_text_value
from ..core.weights import CheckpointMismatch, MissingWeights, check_weights
from ..errors import InvalidInput
from ..logs import configure_logging

logger = logging.getLogger(__name__)

EXIT_FAILURE, EXIT_BAD_INPUT = 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m framepack", description="FramePack image-to-video.")
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser(
        "predict", help="generate one video, like `cog predict`", description="Inputs: " + ", ".join(INPUT_SPECS)
    )
    predict.add_argument(
        "-i",
        "--input",
        dest="inputs",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an API input; prefix file paths with @ (input_image=@photo.jpg)",
    )
    predict.add_argument(
        "--from",
        dest="from_video",
        type=Path,
        default=None,
        metavar="VIDEO",
        help="start from the request and seed stored in an MP4 this project made (its files given again with -i); "
        "-i inputs override them",
    )
    add_flags(predict)
    predict.add_argument("-o", "--output", type=Path, default=Path("output.mp4"), help="MP4 to write")
    predict.add_argument(
        "--dump-tensors",
        type=Path,
        default=None,
        metavar="FILE",
        help="also write intermediate tensors to this safetensors file",
    )
    download = commands.add_parser(
        "download-weights",
        help="fetch the weights into the hub layout (for baking)",
        description="Download only the subfolders FramePack needs; resumable.",
    )
    add_flags(download, names=("weights_dir",))
    download.add_argument("--variants", default="original,f1", help="comma-separated model variants")
    warm = commands.add_parser(
        "warm-cache",
        help="compile the kernels once into the compile cache (on the GPU the service will run on)",
        description="Start the engine as the service does, which compiles the blocks and writes the compile cache "
        "(FRAMEPACK_COMPILE_CACHE, default <weights>/compile-cache); prints the cache folder.",
    )
    add_flags(warm)
    calibrate = commands.add_parser(
        "calibrate-magcache",
        help="measure MagCache's table for a step count or a fine-tune (the reference's calibration)",
        description="Generate one video with every transformer pass run, measuring per step the mean ratio of "
        "the block stack's residual norm to the previous step's (MagCache4FramePack's calibration forward). "
        "Writes the table and the per-section statistics as JSON and prints the table as magcache_ratios takes "
        "it. Use cfg_scale 1, as the published tables were made.",
    )
    calibrate.add_argument(
        "-i", "--input", dest="inputs", action="append", default=[], metavar="NAME=VALUE", help="an API input"
    )
    add_flags(calibrate)
    calibrate.add_argument("-o", "--output", type=Path, default=Path("magcache-table.json"), help="JSON file to write")
    ui = commands.add_parser(
        "ui",
        help="the web studio (Gradio) on this machine",
        description="Start the web studio over the engine. Binds to 127.0.0.1 unless told otherwise.",
    )
    add_flags(ui)
    ui.add_argument("--server", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    ui.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    ui.add_argument(
        "--share", action="store_true", help="also open a public gradio.live link (anyone with it can use the GPU)"
    )
    ui.add_argument("--inbrowser", action="store_true", help="open the page in the default browser")
    ui.add_argument("--auth", default=None, metavar="USER:PASSWORD", help="ask for this login")
    ui.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="where videos are kept (default: $FRAMEPACK_OUTPUT_DIR or outputs/)",
    )
    return parser


def parse_inputs(pairs: list[str]) -> dict[str, object]:
    """`name=value` strings -> typed values per the API table; raises InvalidInput."""
    values: dict[str, object] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep:
            raise InvalidInput(pair, "expected NAME=VALUE")
        if name not in INPUT_SPECS:
            raise InvalidInput(name, f"unknown input; known inputs are {', '.join(INPUT_SPECS)}")
        value = parse_text_value(INPUT_SPECS[name], text)
        if INPUT_SPECS[name].type is list:  # repeated -i section_images=@a.png -i section_images=@b.png
            value = [*values.get(name, []), *value]
        values[name] = value
    return values


def inputs_from_video(path: Path, overrides: dict[str, object]) -> dict[str, object]:
    """The request stored in the MP4 at `path` (seed included) with `overrides` on top; raises InvalidInput.

    A video stores its files by name only, so each file the request used must be given again; a continued video
    other than the one recorded (by its SHA-256) is named in a warning.
    """
    # PyAV and torch: imported only for --from.
    from ..core.continuation import file_sha256
    from ..core.video import read_mp4_metadata
    from .presets import FILE_INPUTS, settings_from_video, stored_request

    inputs = {**settings_from_video(path, "--from"), **overrides}
    stored = stored_request(path, "--from")
    for name in FILE_INPUTS:
        if stored.get(name) and name not in inputs:
            named = ", ".join(stored[name]) if isinstance(stored[name], list) else stored[name]
            raise InvalidInput(
                name,
                f"{path.name} was made from {named}; a video does not hold its files, give it again with "
                f"-i {name}=@PATH",
            )
    continued = read_mp4_metadata(path).get("input_video") or {}
    given = Path(inputs["input_video"]) if inputs.get("input_video") else None
    if continued.get("sha256") and given is not None and given.is_file() and file_sha256(given) != continued["sha256"]:
        logger.warning(
            f"input_video {given.name} is not the video {path.name} continued ({continued['name']}, SHA-256 "
            f"{continued['sha256'][:16]}...): the frames will differ"
        )
    return inputs


def _check_output(path: Path, option: str) -> None:
    if not path.parent.resolve().is_dir():
        raise InvalidInput(option, f"folder {path.parent} does not exist")


def engine_config(args: argparse.Namespace, variants: tuple[str, ...]) -> EngineConfig:
    """The FRAMEPACK_* settings, with the flags given on the command line taking precedence."""
    try:
        return EngineConfig.from_env(variants=variants, **flag_values(args))
    except ValueError as error:
        raise InvalidInput("environment", str(error)) from None


def run_predict(args: argparse.Namespace) -> Path:
    """Validate, load, generate and write; returns the MP4 path. Raises InvalidInput or MissingWeights early."""
    inputs = parse_inputs(args.inputs)
    if args.from_video is not None:
        inputs = inputs_from_video(args.from_video, inputs)
    request: GenerationRequest = build_request(inputs)
    _check_output(args.output, "--output")
    if args.dump_tensors is not None:
        _check_output(args.dump_tensors, "--dump-tensors")
    config = engine_config(args, (request.model_variant,))
    check_weights(config.weights_dir, config.variants)

    from ..runtime.outputs import save_tensor_dump
    from ..runtime.pipeline import GenerationOptions, TensorRecorder
    from .engine import load_engine

    engine = load_engine(config)
    recorder = TensorRecorder(args.dump_tensors is not None)
    try:
        result = engine.generate(request, args.output, options=GenerationOptions(record=recorder))
    finally:
        engine.close()
    if args.dump_tensors is not None:
        save_tensor_dump(result, recorder, args.dump_tensors)
    return args.output


def run_calibrate_magcache(args: argparse.Namespace) -> str:
    """Generate the request with a `MagCacheCalibration` as its step cache; write the JSON, return the table."""
    request: GenerationRequest = build_request(parse_inputs(args.inputs))
    if request.cfg_scale != 1.0:
        raise InvalidInput("cfg_scale", "calibrate with cfg_scale 1: a table has one entry per step")
    _check_output(args.output, "--output")
    config = engine_config(args, (request.model_variant,))
    check_weights(config.weights_dir, config.variants)

    from ..core.magcache import MagCacheCalibration
    from ..runtime.pipeline import GenerationOptions
    from .engine import load_engine

    calibration = MagCacheCalibration(request.steps)
    engine = load_engine(config)
    try:
        with tempfile.TemporaryDirectory(prefix="framepack-calibration-") as folder:
            engine.generate(request, Path(folder) / "video.mp4", options=GenerationOptions(step_cache=calibration))
    finally:
        engine.close()
    table = ", ".join(f"{ratio:g}" for ratio in calibration.table())
    names = ("ratio", "std", "cosine_distance")
    sections = [[dict(zip(names, stats)) for stats in section] for section in calibration.sections]
    report = {"model_variant": request.model_variant, "steps": request.steps, "magcache_ratios": table}
    args.output.write_text(json.dumps({**report, "sections": sections}, indent=1))
    logger.info(f"MagCache table for {request.model_variant} at {request.steps} steps written to {args.output}")
    return table


def run_download(args: argparse.Namespace) -> Path:
    """Fetch whatever is missing for the chosen variants, then check the transformer checkpoints."""
    from ..core.weights import prepare_weights

    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    for variant in variants:
        if variant not in MODEL_VARIANTS:
            raise InvalidInput("--variants", f"{variant!r} is not one of {', '.join(MODEL_VARIANTS)}")
    weights_dir = EngineConfig.from_env(weights_dir=args.weights_dir).weights_dir
    prepare_weights(weights_dir, variants)
    return weights_dir


def run_warm_cache(args: argparse.Namespace) -> Path:
    """Start the engine with both variants (as the service does) and return the compile cache's folder."""
    config = engine_config(args, MODEL_VARIANTS)
    cache_dir = config.compile_cache_dir()
    if cache_dir is None:
        raise InvalidInput("FRAMEPACK_COMPILE_CACHE", "is off: there is no cache to write")
    from ..runtime.compile_cache import unwritable_reason

    if (reason := unwritable_reason(cache_dir)) is not None:
        raise InvalidInput("FRAMEPACK_COMPILE_CACHE", f"no compiled kernels could be written to {cache_dir}: {reason}")
    check_weights(config.weights_dir, config.variants)

    from .engine import load_engine

    if load_engine(config).placement.compile_record is None:
        raise InvalidInput("--compile", "nothing was compiled with these settings, so there is nothing to cache")
    if not any(cache_dir.glob("torch-*.bin")):
        raise InvalidInput("FRAMEPACK_COMPILE_CACHE", f"no compiled kernels could be written to {cache_dir}")
    return cache_dir


def run_ui(args: argparse.Namespace) -> None:
    """Start the engine (both variants) and serve the studio until interrupted."""
    if args.auth is not None and ":" not in args.auth:
        raise InvalidInput("--auth", "expected USER:PASSWORD")
    config = engine_config(args, MODEL_VARIANTS)
    check_weights(config.weights_dir, config.variants)

    from .engine import load_engine
    from .studio import launch

    output_dir = args.output_dir or config.output_dir or Path("outputs")
    launch(
        load_engine(config),
        server=args.server,
        port=args.port,
        share=args.share,
        inbrowser=args.inbrowser,
        auth=args.auth,
        output_dir=output_dir,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging("stderr")
    try:
        if args.command == "ui":
            run_ui(args)
            return 0
        commands = {
            "download-weights": run_download,
            "warm-cache": run_warm_cache,
            "predict": run_predict,
            "calibrate-magcache": run_calibrate_magcache,
        }
        output = commands[args.command](args)
    except (InvalidInput, MissingWeights, CheckpointMismatch) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_FAILURE
    print(output)
    return 0
