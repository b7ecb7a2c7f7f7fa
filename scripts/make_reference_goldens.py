"""Regenerate the golden cases (`tests/fixtures/golden/<case>/`) by running the reference code on the tiny weights.

The reference is lllyasviel/FramePack at 97fe5db: its `diffusers_helper` package and the `worker` loop of
`demo_gradio.py` (original, inverted model) or `demo_gradio_f1.py` (F1), plus, for the MagCache cases,
`nearest_interp`, `initialize_magcache` and `magcache_framepack_forward` of Zehong-Ma/MagCache's
`MagCache4FramePack/magcache_demo_gradio.py` (original) or `magcache_demo_gradio_f1.py` (F1; other ratio table).
No reference code is copied here. The package is imported from the checkout; the demo files cannot be imported
(they start a Gradio UI), so the functions needed are cut out of their sources with `ast` and exec'd. The
worker then runs unchanged: under the names it uses it finds the reference's functions, some wrapped to record
what they return, and the conventions of docs/FIXTURES.md §3.3 (see `worker_namespace`):

- float32 on the CPU, the timestep and distilled guidance cast to float32 instead of bfloat16;
- noise from the worker's own `torch.Generator("cpu")`, seeded with the seed (unchanged);
- start latent = VAE posterior mean x scaling factor, not a sample;
- the forced width and height replace the nearest bucket; the image is resized and cropped to it as to a bucket;
- the Llama template's crop point is counted by tokenizing the template prefix (191 with the tiny tokenizer).

MagCache is installed on the transformer class once per section, where the worker initialises TeaCache, exactly
as the MagCache demo's worker does; that block is the only difference between the two demos' workers. With real
CFG the reference keeps one MagCache state for both branches (its counter counts calls and wraps at `steps`);
that is reproduced as it is.

Usage (from the project root, with torch 2.13, diffusers 0.42.1, transformers 5.23):
    python scripts/make_reference_goldens.py --framepack ../FramePack --magcache ../MagCache \
        --weights tests/fixtures/tiny-weights --out tests/fixtures/golden [--case NAME ...]
"""

from __future__ import annotations

import argparse
import ast
import builtins
import json
import os
import symtable
import sys
import tempfile
import types
from pathlib import Path

import einops
import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

ORIGINAL, F1 = "original", "f1"
TRANSFORMER_REPOS = {ORIGINAL: "lllyasviel/FramePackI2V_HY", F1: "lllyasviel/FramePack_F1_I2V_HY_20250503"}
DEMOS = {ORIGINAL: "demo_gradio.py", F1: "demo_gradio_f1.py"}
MAGCACHE_DEMOS = {ORIGINAL: "magcache_demo_gradio.py", F1: "magcache_demo_gradio_f1.py"}
MAGCACHE_FUNCTIONS = ("nearest_interp", "initialize_magcache", "magcache_framepack_forward")
WORKER_INPUTS = (
    "prompt negative_prompt seed total_video_length_seconds latent_window_size steps cfg_scale distilled_cfg_scale "
    "cfg_rescale"
).split()


def _case(
    variant, prompt, seed, seconds, lws, steps, size, cfg=1.0, rescale=0.0, negative="", teacache=False, magcache=None
):
    """One request in the API's input names; `magcache` is (threshold, K, retention ratio) or None."""
    inputs = {
        "input_image": "start_100x140.png",
        "prompt": prompt,
        "negative_prompt": negative,
        "seed": seed,
        "total_video_length_seconds": seconds,
        "latent_window_size": lws,
        "steps": steps,
        "cfg_scale": cfg,
        "distilled_cfg_scale": 10.0,
        "cfg_rescale": rescale,
        "use_teacache": teacache,
        "model_variant": variant,
        "width": size[0],
        "height": size[1],
    }
    if magcache is not None:
        threshold, max_skips, retention = magcache
        inputs.update(
            step_cache="magcache",
            magcache_threshold=threshold,
            magcache_max_skips=max_skips,
            magcache_retention_ratio=retention,
        )
    return inputs


CAT = "A cat walks along the beach at sunset, waves rolling in."
BIRD = "A small blue bird takes off from the ground, flapping its wings."
PENGUIN = "A penguin dancing in the snow."
CHARACTER = "A character doing some simple body movements."
GIRL = "The girl dances gracefully, with clear movements, full of charm."
NEGATIVE = "blurry, low quality"
UI_DEFAULTS = (0.1, 3, 0.2)  # the MagCache demo's sliders: threshold, K, retention ratio
CASES = {
    "inverted-basic": _case(ORIGINAL, CAT, 31337, 1.2, 3, 4, (96, 64)),
    "inverted-cfg": _case(ORIGINAL, BIRD, 2024, 0.8, 3, 4, (96, 64), cfg=3.0, rescale=0.7, negative=NEGATIVE),
    "inverted-long": _case(ORIGINAL, GIRL, 7, 1.6, 2, 3, (96, 64)),
    "inverted-teacache": _case(ORIGINAL, CHARACTER, 99, 0.8, 3, 10, (96, 64), teacache=True),
    "f1-basic": _case(F1, PENGUIN, 123, 1.2, 3, 4, (96, 64)),
    "magcache-original": _case(ORIGINAL, CAT, 11, 0.8, 3, 25, (48, 32), magcache=UI_DEFAULTS),
    "magcache-f1": _case(F1, PENGUIN, 12, 0.8, 3, 25, (48, 32), magcache=UI_DEFAULTS),
    "magcache-cfg": _case(ORIGINAL, BIRD, 13, 0.8, 3, 12, (48, 32), 3.0, 0.7, NEGATIVE, magcache=UI_DEFAULTS),
    "magcache-settings": _case(F1, CHARACTER, 14, 0.8, 3, 17, (48, 32), magcache=(0.15, 4, 0.25)),
}

_written_videos: list[torch.Tensor] = []  # what the reference's save_bcthw_as_mp4 handed to the video writer


def load_reference(framepack: Path) -> types.SimpleNamespace:
    """Import the reference package from the checkout.

    Shim: `diffusers_helper.utils` imports cv2 and torchvision at the top, neither installed here, but uses them
    only in functions the worker does not call, except `torchvision.io.write_video` in `save_bcthw_as_mp4`: there
    the stub records the uint8 frames (t, H, W, 3) the reference would have encoded. The stubs are visible during
    that import only, so that transformers and diffusers never see a fake torchvision.
    """
    torchvision = types.ModuleType("torchvision")
    torchvision.io = types.SimpleNamespace(
        write_video=lambda filename, frames, **kwargs: _written_videos.append(frames.clone())
    )
    stubs = {"cv2": types.ModuleType("cv2"), "torchvision": torchvision}
    assert not stubs.keys() & sys.modules.keys()
    # diffusers and transformers probe for torchvision once: let them do it before the stub exists.
    import diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video  # noqa: F401
    import transformers.utils

    transformers.utils.is_torchvision_available()
    sys.path.insert(0, str(framepack))
    sys.modules.update(stubs)
    try:
        from diffusers_helper import bucket_tools, clip_vision, hunyuan, thread_utils, utils
        from diffusers_helper.gradio import progress_bar
        from diffusers_helper.models import hunyuan_video_packed
        from diffusers_helper.pipelines import k_diffusion_hunyuan
    finally:
        for name in stubs:
            del sys.modules[name]

    return types.SimpleNamespace(
        hunyuan=hunyuan,
        utils=utils,
        clip_vision=clip_vision,
        bucket_tools=bucket_tools,
        thread_utils=thread_utils,
        progress_bar=progress_bar,
        packed=hunyuan_video_packed,
        sampling=k_diffusion_hunyuan,
    )


def exec_functions(source_path: Path, names, namespace: dict) -> dict:
    """Exec the top-level `def`s called `names` of a source file into `namespace`, nothing else of the file."""
    source = source_path.read_text()
    wanted = [node for node in ast.parse(source).body if isinstance(node, ast.FunctionDef) and node.name in names]
    missing = set(names) - {node.name for node in wanted}
    if missing:
        raise ValueError(f"{source_path} defines no {sorted(missing)}")
    exec(compile(ast.Module(body=wanted, type_ignores=[]), str(source_path), "exec"), namespace)
    return namespace


def global_names(source_path: Path, function: str) -> set[str]:
    """The module-level names a top-level function, and the functions nested in it, read."""

    def walk(table):
        names = {symbol.get_name() for symbol in table.get_symbols() if symbol.is_global()}
        return names.union(*(walk(child) for child in table.get_children()))

    top = symtable.symtable(source_path.read_text(), str(source_path), "exec")
    return walk(next(table for table in top.get_children() if table.get_name() == function))


def load_models(ref, weights: Path) -> types.SimpleNamespace:
    """The components as the demos load them, in float32 on the CPU, with the transformer's fp32 output head."""
    from diffusers import AutoencoderKLHunyuanVideo
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTokenizer, LlamaModel, SiglipVisionModel
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    hunyuan = weights / "hunyuanvideo-community/HunyuanVideo"
    redux = weights / "lllyasviel/flux_redux_bfl"
    # Shim: under transformers 5 LlamaTokenizerFast pads on the left; AutoTokenizer with right padding is what
    # the reference's LlamaTokenizerFast did under transformers 4.46.
    tokenizer = AutoTokenizer.from_pretrained(hunyuan / "tokenizer")
    tokenizer.padding_side = "right"
    models = types.SimpleNamespace(
        tokenizer=tokenizer,
        tokenizer_2=CLIPTokenizer.from_pretrained(hunyuan / "tokenizer_2"),
        text_encoder=LlamaModel.from_pretrained(hunyuan / "text_encoder", dtype=torch.float32),
        text_encoder_2=CLIPTextModel.from_pretrained(hunyuan / "text_encoder_2", dtype=torch.float32),
        vae=AutoencoderKLHunyuanVideo.from_pretrained(hunyuan / "vae", torch_dtype=torch.float32),
        # Shim: transformers 5's SiglipImageProcessor is torchvision-backed; the PIL one is the reference's.
        feature_extractor=SiglipImageProcessorPil.from_pretrained(redux / "feature_extractor"),
        image_encoder=SiglipVisionModel.from_pretrained(redux / "image_encoder", dtype=torch.float32),
        transformers={
            variant: ref.packed.HunyuanVideoTransformer3DModelPacked.from_pretrained(
                weights / repo, torch_dtype=torch.float32
            )
            for variant, repo in TRANSFORMER_REPOS.items()
        },
    )
    for name in ("text_encoder", "text_encoder_2", "vae", "image_encoder"):
        getattr(models, name).eval().requires_grad_(False)
    for transformer in models.transformers.values():
        transformer.eval().requires_grad_(False)
        transformer.high_quality_fp32_output_for_inference = True
    return models


class Recorder:
    """Everything a golden case stores, gathered while the reference worker runs."""

    def __init__(self, transformer):
        self.tensors: dict[str, torch.Tensor] = {}
        self.sections: list[torch.Tensor] = []
        self.paddings: list[int] = []
        self.calls: list[list[bool]] = []  # per section, per transformer call: did the block stack run?
        self.crop_start = 0
        self.hooks = [
            transformer.register_forward_pre_hook(lambda module, args: self.calls[-1].append(False)),
            transformer.transformer_blocks[0].register_forward_pre_hook(self._stack_ran),
        ]

    def _stack_ran(self, module, args):
        self.calls[-1][-1] = True

    def close(self):
        for hook in self.hooks:
            hook.remove()


# diffusers_helper.memory (it needs CUDA to import): called by the worker only in low-VRAM mode, never here.
LOW_VRAM_ONLY = (
    "unload_complete_models load_model_as_complete fake_diffusers_current_device "
    "move_model_to_device_with_memory_preservation offload_model_from_device_for_memory_preservation"
).split()
FROM_UTILS = "generate_timestamp crop_or_pad_yield_mask soft_append_bcthw save_bcthw_as_mp4".split()
MODELS = "text_encoder text_encoder_2 tokenizer tokenizer_2 vae feature_extractor image_encoder".split()


def _low_vram_only(*args, **kwargs):
    raise AssertionError("the worker runs in high-VRAM mode here")


def _reraise():
    raise sys.exc_info()[1]  # the worker swallows every exception after `traceback.print_exc()`


def worker_namespace(ref, models, variant: str, inputs: dict, rec: Recorder, outputs_folder: str) -> dict:
    """The module globals the demo's worker reads: the reference's functions, the models, and the shims."""
    transformer = models.transformers[variant]
    template = ref.hunyuan.DEFAULT_PROMPT_TEMPLATE
    crop_start = len(models.tokenizer(template["template"].split("{}")[0]).input_ids)
    # Shim: the crop point is hard-coded to 95 (the real Llama-3 tokenizer); count it for this tokenizer.
    ref.hunyuan.DEFAULT_PROMPT_TEMPLATE = {**template, "crop_start": crop_start}
    rec.crop_start = crop_start

    def encode_prompt_conds(prompt, *encoders):
        llama_vec, clip_l_pooler = ref.hunyuan.encode_prompt_conds(prompt, *encoders)
        prefix = "negative_" if "prompt_embeds" in rec.tensors else ""
        rec.tensors.update({f"{prefix}prompt_embeds": llama_vec, f"{prefix}pooled_prompt_embeds": clip_l_pooler})
        return llama_vec, clip_l_pooler

    def find_nearest_bucket(h, w, resolution=640):  # forced output size in place of the 640 bucket
        return inputs["height"], inputs["width"]

    def resize_and_center_crop(image, target_width, target_height):
        rec.tensors["image_cropped_uint8"] = torch.from_numpy(
            ref.utils.resize_and_center_crop(image, target_width, target_height).copy()
        )
        return rec.tensors["image_cropped_uint8"].numpy()

    def vae_encode(image, vae):  # posterior mean instead of the reference's unseeded sample
        posterior = vae.encode(image.to(device=vae.device, dtype=vae.dtype)).latent_dist
        rec.tensors["start_latent"] = posterior.mean * vae.config.scaling_factor
        return rec.tensors["start_latent"]

    def hf_clip_vision_encode(image, feature_extractor, image_encoder):
        output = ref.clip_vision.hf_clip_vision_encode(image, feature_extractor, image_encoder)
        rec.tensors["image_embeds"] = output.last_hidden_state
        return output

    def sample_hunyuan(**kwargs):
        kwargs["dtype"] = transformer.dtype  # the worker passes bfloat16: compute dtype is float32 here
        rec.calls.append([])
        if variant == ORIGINAL:  # the noisy window's time indices start at padding x lws + 1
            rec.paddings.append((int(kwargs["latent_indices"][0, 0]) - 1) // inputs["latent_window_size"])
        rec.sections.append(ref.sampling.sample_hunyuan(**kwargs))
        return rec.sections[-1]

    return dict(
        torch=torch,
        np=np,
        einops=einops,
        os=os,
        Image=Image,
        traceback=types.SimpleNamespace(print_exc=_reraise),
        transformer=transformer,
        high_vram=True,
        gpu=torch.device("cpu"),
        cpu=torch.device("cpu"),
        outputs_folder=outputs_folder,
        stream=ref.thread_utils.AsyncStream(),
        make_progress_bar_html=ref.progress_bar.make_progress_bar_html,
        vae_decode=ref.hunyuan.vae_decode,
        vae_decode_fake=ref.hunyuan.vae_decode_fake,
        encode_prompt_conds=encode_prompt_conds,
        find_nearest_bucket=find_nearest_bucket,
        resize_and_center_crop=resize_and_center_crop,
        vae_encode=vae_encode,
        hf_clip_vision_encode=hf_clip_vision_encode,
        sample_hunyuan=sample_hunyuan,
        **{name: getattr(ref.utils, name) for name in FROM_UTILS},
        **{name: getattr(models, name) for name in MODELS},
        **dict.fromkeys(LOW_VRAM_ONLY, _low_vram_only),
    )


def install_magcache(transformer, magcache_demo: Path, inputs: dict) -> None:
    """Make the worker's per-section TeaCache initialisation do what the MagCache demo's worker does there."""
    functions = exec_functions(magcache_demo, MAGCACHE_FUNCTIONS, {"np": np, "torch": torch, "einops": einops})

    def per_section(enable_teacache=False, **kwargs):
        assert not enable_teacache
        type(transformer).forward = functions["magcache_framepack_forward"]
        type(transformer).initialize_magcache = functions["initialize_magcache"]
        transformer.initialize_magcache(
            enable_magcache=True,
            num_steps=inputs["steps"],
            magcache_thresh=inputs["magcache_threshold"],
            K=inputs["magcache_max_skips"],
            retention_ratio=inputs["magcache_retention_ratio"],
        )

    transformer.initialize_teacache = per_section  # instance attribute: the worker calls it once per section


def run_case(name: str, ref, models, args) -> None:
    inputs = CASES[name]
    variant = inputs["model_variant"]
    transformer = models.transformers[variant]
    cls = type(transformer)
    cls.forward = ref.stock_forward  # a previous MagCache case replaced it on the class
    vars(transformer).pop("initialize_teacache", None)
    if inputs.get("step_cache") == "magcache":
        install_magcache(transformer, args.magcache / "MagCache4FramePack" / MAGCACHE_DEMOS[variant], inputs)

    demo = args.framepack / DEMOS[variant]
    rec = Recorder(transformer)
    _written_videos.clear()
    try:
        with tempfile.TemporaryDirectory() as outputs_folder:
            namespace = worker_namespace(ref, models, variant, inputs, rec, outputs_folder)
            unresolved = global_names(demo, "worker") - namespace.keys() - set(dir(builtins))
            assert not unresolved, f"the worker reads names this script does not provide: {sorted(unresolved)}"
            worker = exec_functions(demo, ["worker"], namespace)["worker"]
            image = np.array(Image.open(args.images / inputs["input_image"]).convert("RGB"))
            # worker(input_image, prompt, n_prompt, seed, total_second_length, latent_window_size, steps, cfg, gs,
            #        rs, gpu_memory_preservation, use_teacache, mp4_crf), the UI's defaults where not in the request
            worker(image, *(inputs[key] for key in WORKER_INPUTS), 6, inputs["use_teacache"], 16)
    finally:
        rec.close()
        cls.forward = ref.stock_forward
        vars(transformer).pop("initialize_teacache", None)

    start = rec.tensors["start_latent"]
    ordered = rec.sections if variant == F1 else rec.sections[::-1]  # original: sections generated end first
    tensors = {**rec.tensors, "video_latents": torch.cat([start, *ordered], dim=2), "frames_uint8": _written_videos[-1]}
    tensors.update({f"section_{i}_latents": latents for i, latents in enumerate(rec.sections)})
    expected = {
        "num_sections": len(rec.sections),
        "latent_paddings": rec.paddings if variant == ORIGINAL else None,
        "num_latent_frames": tensors["video_latents"].shape[2],
        "num_frames": tensors["frames_uint8"].shape[0],
        "prompt_template_crop_start": rec.crop_start,
        "transformer_block_stack_calls_per_section": [sum(calls) for calls in rec.calls],
    }
    if inputs.get("step_cache") == "magcache":
        expected["magcache_skipped_calls_per_section"] = [
            [i for i, ran in enumerate(calls) if not ran] for calls in rec.calls
        ]

    folder = args.out / name
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {key: value.detach().contiguous().cpu() for key, value in sorted(tensors.items())},
        folder / "expected.safetensors",
    )
    (folder / "case.json").write_text(
        json.dumps({"name": name, "input": inputs, "expected": expected}, indent=2) + "\n"
    )
    print(f"{name}: {json.dumps(expected)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--framepack", type=Path, required=True, help="lllyasviel/FramePack checkout (97fe5db)")
    parser.add_argument("--magcache", type=Path, required=True, help="Zehong-Ma/MagCache checkout")
    parser.add_argument("--weights", type=Path, required=True, help="tests/fixtures/tiny-weights")
    parser.add_argument("--images", type=Path, help="input images (default: 'images' beside the weights)")
    parser.add_argument("--out", type=Path, required=True, help="folder receiving <case>/case.json and tensors")
    parser.add_argument("--case", action="append", choices=sorted(CASES), help="only these cases (repeatable)")
    args = parser.parse_args()
    args.images = args.images or args.weights.parent / "images"

    torch.set_grad_enabled(False)
    ref = load_reference(args.framepack.resolve())
    ref.stock_forward = ref.packed.HunyuanVideoTransformer3DModelPacked.forward
    models = load_models(ref, args.weights)
    for name in args.case or CASES:
        run_case(name, ref, models, args)


if __name__ == "__main__":
    main()
