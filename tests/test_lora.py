"""LoRA: three key formats on the tiny transformer, applied as hooks, restored bit for bit."""

from __future__ import annotations

import copy
import pickle
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from safetensors.torch import save_file

from conftest import START_IMAGE, section_and_text
from framepack import lora
from framepack.pipeline import generate
from framepack.request import InvalidInput, build_request
from framepack.transformer import PackedTransformer

BASE = {"input_image": START_IMAGE, "prompt": "a dancer", "seed": 9, "total_video_length_seconds": 0.8,
        "latent_window_size": 3, "steps": 2, "width": 96, "height": 64, "use_teacache": False}
RANK = 4


def _pair(out_features: int, in_features: int, generator) -> tuple[torch.Tensor, torch.Tensor]:
    down = torch.randn(RANK, in_features, generator=generator) * 0.3
    up = torch.randn(out_features, RANK, generator=generator) * 0.3
    return down, up


def musubi_lora(model, seed=1) -> dict[str, torch.Tensor]:
    """musubi-tuner naming: lora_unet_<module path with _>, lora_down/lora_up, alpha."""
    g, state = torch.Generator().manual_seed(seed), {}
    for path in ("transformer_blocks.0.attn.to_q", "single_transformer_blocks.1.proj_mlp"):
        module = model.get_submodule(path)
        down, up = _pair(module.out_features, module.in_features, g)
        key = "lora_unet_" + path.replace(".", "_")
        state.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                      f"{key}.alpha": torch.tensor(float(RANK) / 2)})
    return state


def peft_lora(model, seed=2) -> dict[str, torch.Tensor]:
    """diffusers/PEFT naming: transformer.<module path>.lora_A/lora_B."""
    g, state = torch.Generator().manual_seed(seed), {}
    for path in ("transformer_blocks.1.ff.net.0.proj", "single_transformer_blocks.0.attn.to_k"):
        module = model.get_submodule(path)
        down, up = _pair(module.out_features, module.in_features, g)
        state.update({f"transformer.{path}.lora_A.weight": down, f"transformer.{path}.lora_B.weight": up})
    return state


def original_lora(model, seed=3) -> dict[str, torch.Tensor]:
    """Original HunyuanVideo naming with fused projections: img_attn_qkv (3D) and linear1 (3D + MLP)."""
    g, state = torch.Generator().manual_seed(seed), {}
    dim = model.config.num_attention_heads * model.config.attention_head_dim
    mlp = model.single_transformer_blocks[0].proj_mlp.out_features
    for key, out in (("double_blocks.0.img_attn_qkv", 3 * dim), ("single_blocks.1.linear1", 3 * dim + mlp)):
        down, up = _pair(out, dim, g)
        state.update({f"diffusion_model.{key}.lora_A.weight": down, f"diffusion_model.{key}.lora_B.weight": up})
    return state


FORMATS = {"musubi": musubi_lora, "peft": peft_lora, "original": original_lora}


def _file(tmp_path, state, name="lora.safetensors"):
    path = tmp_path / name
    save_file(state, str(path))
    return str(path)


def _video(tiny_models, **overrides) -> torch.Tensor:
    return generate(build_request({**BASE, **overrides}), tiny_models).video_latents


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_each_format_changes_output_and_removal_restores_it(tiny_models, tmp_path, fmt):
    model = tiny_models.transformers["original"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = _file(tmp_path, FORMATS[fmt](model))
    base = _video(tiny_models)
    with_lora = _video(tiny_models, lora_weights=path)
    assert not torch.equal(with_lora, base)
    assert torch.equal(_video(tiny_models, lora_weights=path, lora_scale=0.0), base)
    assert torch.equal(_video(tiny_models), base)  # hooks removed after the prediction
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks for m in model.modules())


def test_two_loras_together(tiny_models, tmp_path):
    model = tiny_models.transformers["original"]
    first, second = _file(tmp_path, musubi_lora(model), "a.safetensors"), _file(tmp_path, peft_lora(model), "b.safetensors")
    alone_first = _video(tiny_models, lora_weights=first)
    alone_second = _video(tiny_models, extra_lora=second, extra_lora_scale=-1.5)
    both = _video(tiny_models, lora_weights=first, extra_lora=second, extra_lora_scale=-1.5)
    assert not torch.equal(both, alone_first) and not torch.equal(both, alone_second)


def test_hooks_equal_merged_weights_including_fused_splits(tiny_models):
    model = tiny_models.transformers["original"]
    state = original_lora(model)
    layers = lora.convert_lora(state, model, "lora_weights")
    assert sorted(layer.module for layer in layers) == sorted(
        [f"transformer_blocks.0.attn.to_{x}" for x in "qkv"]
        + [f"single_transformer_blocks.1.attn.to_{x}" for x in "qkv"] + ["single_transformer_blocks.1.proj_mlp"])
    merged = copy.deepcopy(model)
    with torch.no_grad():
        for layer in layers:
            merged.get_submodule(layer.module).weight += 0.8 * layer.factor * layer.up @ layer.down
    inputs, text, latents = section_and_text(model, torch.Generator().manual_seed(4))
    timestep, guidance = torch.tensor([700.0]), torch.tensor([10000.0])
    hooks = lora.LoraHooks()
    hooks.add(model, layers, 0.8, torch.device("cpu"))
    try:
        runner = PackedTransformer(model)
        hooked = runner.velocity(latents, timestep, guidance, text, runner.prepare_section(inputs, 8, 12))
    finally:
        hooks.remove()
    reference = PackedTransformer(merged)
    expected = reference.velocity(latents, timestep, guidance, text, reference.prepare_section(inputs, 8, 12))
    assert torch.allclose(hooked, expected, rtol=1e-4, atol=1e-5)


def test_keys_matching_nothing_are_named(tiny_models, tmp_path):
    model = tiny_models.transformers["original"]
    foreign = {"unet.down_blocks.0.lora_A.weight": torch.zeros(4, 8), "unet.down_blocks.0.lora_B.weight": torch.zeros(8, 4)}
    with pytest.raises(lora.LoraError, match="2 of 2 keys match no transformer layer.*unet.down_blocks.0.lora_A"):
        _video(tiny_models, lora_weights=_file(tmp_path, foreign))
    partial_match = {**peft_lora(model), "transformer.nonexistent.lora_A.weight": torch.zeros(4, 32),
                     "transformer.nonexistent.lora_B.weight": torch.zeros(32, 4)}
    with pytest.raises(lora.LoraError, match="2 of 6 keys match no transformer layer"):
        _video(tiny_models, extra_lora=_file(tmp_path, partial_match))
    assert not any(m._forward_hooks for m in model.modules())


def test_pickles_and_plain_http_are_refused(tmp_path):
    pickled = tmp_path / "lora.safetensors"
    pickled.write_bytes(pickle.dumps({"weight": [1, 2, 3]}))
    with pytest.raises(InvalidInput, match="'lora_weights': lora.safetensors is not a valid .safetensors file"):
        build_request({**BASE, "lora_weights": str(pickled)})
    with pytest.raises(InvalidInput, match="'extra_lora': only https URLs or local paths"):
        build_request({**BASE, "extra_lora": "http://example.com/lora.safetensors"})
    with pytest.raises(InvalidInput, match="'lora_weights': file not found"):
        build_request({**BASE, "lora_weights": str(tmp_path / "absent.safetensors")})


@pytest.fixture
def file_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(served)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_download_is_cached_by_url_and_bounded(tiny_models, tmp_path, file_server, monkeypatch):
    served, url = file_server
    monkeypatch.setenv("FRAMEPACK_LORA_CACHE", str(tmp_path / "cache"))
    save_file(peft_lora(tiny_models.transformers["original"]), str(served / "style.safetensors"))
    first = lora.fetch(f"{url}/style.safetensors", "lora_weights")
    (served / "style.safetensors").unlink()  # a second fetch must not need the server
    assert lora.fetch(f"{url}/style.safetensors", "lora_weights") == first and first.is_file()
    (served / "big.safetensors").write_bytes(b"x" * 5000)
    with pytest.raises(lora.LoraError, match="more than the 1000 allowed"):
        lora.fetch(f"{url}/big.safetensors", "lora_weights", max_bytes=1000)
    (served / "evil.safetensors").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(lora.LoraError, match="not a valid .safetensors file"):
        lora.fetch(f"{url}/evil.safetensors", "extra_lora")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [first.name]
