"""LoRA: three key formats on the tiny transformer, merged into the weights per request, restored bit for bit."""

from __future__ import annotations

import copy
import pickle
import struct

import pytest
import torch
import torch.nn.functional as F
from helpers.models import musubi_lora, original_lora, peft_lora, section_and_text
from helpers.requests import tiny_request
from safetensors.torch import save as save_file_bytes
from safetensors.torch import save_file

from framepack.config import LoraDownloads
from framepack.core.request import build_request
from framepack.errors import InvalidInput
from framepack.models import lora
from framepack.runtime.pipeline import generate
from framepack.runtime.transformer import PackedTransformer

BASE = tiny_request(prompt="a dancer", seed=9, total_video_length_seconds=0.8)
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
    assert torch.equal(_video(tiny_models), base)  # the base weights are back after the prediction
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks for m in model.modules())


def test_two_loras_together(tiny_models, tmp_path):
    model = tiny_models.transformers["original"]
    first, second = (
        _file(tmp_path, musubi_lora(model), "a.safetensors"),
        _file(tmp_path, peft_lora(model), "b.safetensors"),
    )
    alone_first = _video(tiny_models, lora_weights=first)
    alone_second = _video(tiny_models, extra_lora=second, extra_lora_scale=-1.5)
    both = _video(tiny_models, lora_weights=first, extra_lora=second, extra_lora_scale=-1.5)
    assert not torch.equal(both, alone_first) and not torch.equal(both, alone_second)


def test_merged_weights_act_as_the_low_rank_update_including_fused_splits(tiny_models):
    model = tiny_models.transformers["original"]
    state = original_lora(model)
    layers = lora.convert_lora(state, model, "lora_weights")
    assert sorted(layer.module for layer in layers) == sorted(
        [f"transformer_blocks.0.attn.to_{x}" for x in "qkv"]
        + [f"single_transformer_blocks.1.attn.to_{x}" for x in "qkv"]
        + ["single_transformer_blocks.1.proj_mlp"]
    )
    inputs, text, latents = section_and_text(model, torch.Generator().manual_seed(4))
    timestep, guidance = torch.tensor([700.0]), torch.tensor([10000.0])

    def velocity(m):
        runner = PackedTransformer(m)
        return runner.velocity(latents, timestep, guidance, text, runner.prepare_section(inputs, 8, 12))

    # The definition: each layer's output plus 0.8 * factor * up(down(x)), on a copy of the model.
    reference = copy.deepcopy(model)
    for layer in layers:
        reference.get_submodule(layer.module).register_forward_hook(
            lambda _m, args, out, layer=layer: out
            + 0.8 * layer.factor * F.linear(F.linear(args[0], layer.down), layer.up)
        )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with lora.merged_loras(model, [(layers, 0.8)], torch.device("cpu")):
        merged = velocity(model)
        changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert sorted(changed) == sorted(f"{layer.module}.weight" for layer in layers)
    assert torch.allclose(merged, velocity(reference), rtol=1e-4, atol=1e-5)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_weights_are_restored_when_the_generation_fails(tiny_models, tmp_path):
    model = tiny_models.transformers["original"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layers = lora.convert_lora(peft_lora(model), model, "lora_weights")
    with pytest.raises(RuntimeError, match="cancelled"):
        with lora.merged_loras(model, [(layers, 1.0)], torch.device("cpu")):
            assert not all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
            raise RuntimeError("cancelled")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_keys_matching_nothing_are_named(tiny_models, tmp_path):
    model = tiny_models.transformers["original"]
    foreign = {
        "unet.down_blocks.0.lora_A.weight": torch.zeros(4, 8),
        "unet.down_blocks.0.lora_B.weight": torch.zeros(8, 4),
    }
    with pytest.raises(InvalidInput, match="2 of 2 keys match no transformer layer.*unet.down_blocks.0.lora_A"):
        _video(tiny_models, lora_weights=_file(tmp_path, foreign))
    partial_match = {
        **peft_lora(model),
        "transformer.nonexistent.lora_A.weight": torch.zeros(4, 32),
        "transformer.nonexistent.lora_B.weight": torch.zeros(32, 4),
    }
    with pytest.raises(InvalidInput, match="2 of 6 keys match no transformer layer"):
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


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "0 bytes, shorter than the 8-byte header length"),
        (b"\x01\x02\x03", "3 bytes, shorter than the 8-byte header length"),
        (struct.pack("<Q", 2) + b"[]", "its header is a JSON list, not an object of tensors"),
        (struct.pack("<Q", 1) + b"7", "its header is a JSON int, not an object of tensors"),
        (struct.pack("<Q", 20000) + b"[" * 10000 + b"]" * 10000, "its header is not valid JSON"),
        (struct.pack("<Q", 2**40) + b"{}", "its header length (1099511627776 bytes) exceeds the file or the format"),
        (struct.pack("<Q", 12) + b'{"w": "x"}  ', "its header entry 'w' is not a tensor"),
        (
            save_file_bytes({"w.lora_A.weight": torch.zeros(4, 8)})[:-10],
            "the header promises",
        ),
    ],
)
def test_malformed_lora_files_are_refused_naming_the_input(tiny_models, tmp_path, content, reason):
    path = tmp_path / "style.safetensors"
    path.write_bytes(content)
    with pytest.raises(InvalidInput) as error:
        lora.lora_layers(str(path), "extra_lora", tiny_models.transformers["original"], LoraDownloads(tmp_path))
    assert str(error.value).startswith("Invalid input 'extra_lora': style.safetensors is not a valid .safetensors")
    assert reason in str(error.value)
