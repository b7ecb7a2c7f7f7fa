"""Weights layout, checkpoint verification before loading, and the download/offline error paths."""

import shutil
import socket

import pytest
import torch
from helpers.paths import TINY_WEIGHTS
from safetensors.torch import load_file, save_file

from framepack.core.weights import (
    CheckpointMismatch,
    MissingWeights,
    download_patterns,
    ensure_weights,
    required_components,
    transformer_component,
    verify_transformer_checkpoint,
)

TRANSFORMER = transformer_component("original").path(TINY_WEIGHTS)


def test_tiny_checkpoints_match_their_configs():
    assert verify_transformer_checkpoint(TRANSFORMER) == 148
    assert verify_transformer_checkpoint(transformer_component("f1").path(TINY_WEIGHTS)) == 148


def _copy_transformer(tmp_path):
    folder = tmp_path / "transformer"
    shutil.copytree(TRANSFORMER, folder)
    return folder, folder / "diffusion_pytorch_model.safetensors"


def test_truncated_checkpoint_is_caught(tmp_path):
    folder, file = _copy_transformer(tmp_path)
    file.write_bytes(file.read_bytes()[:-1000])
    with pytest.raises(CheckpointMismatch, match="truncated"):
        verify_transformer_checkpoint(folder)


def test_wrong_and_missing_tensors_are_named(tmp_path):
    folder, file = _copy_transformer(tmp_path)
    tensors = load_file(file)
    tensors["proj_out.bias"] = torch.zeros(3)
    del tensors["x_embedder.proj.weight"]
    save_file(tensors, str(file))
    with pytest.raises(CheckpointMismatch) as error:
        verify_transformer_checkpoint(folder)
    assert "1 missing (first: x_embedder.proj.weight)" in str(error.value)
    assert "proj_out.bias [3] != [64]" in str(error.value)


def test_only_needed_subfolders_are_downloaded():
    patterns = {c.name: download_patterns(c) for c in required_components(("original", "f1"))}
    assert patterns["text_encoder"] == ["text_encoder/*"] and patterns["vae"] == ["vae/*"]
    assert patterns["transformer_original"] == ["*.json", "*.safetensors"]
    hunyuan = [
        p
        for c in required_components(("original",))
        if c.repo == "hunyuanvideo-community/HunyuanVideo"
        for p in download_patterns(c)
    ]
    assert not any(p.startswith("transformer") for p in hunyuan)  # never the 25 GB HunyuanVideo transformer


def test_offline_lists_exactly_what_is_missing(tmp_path, monkeypatch):
    shutil.copytree(TINY_WEIGHTS / "hunyuanvideo-community", tmp_path / "hunyuanvideo-community")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingWeights) as error:
        ensure_weights(tmp_path, ("f1",))
    message = str(error.value)
    assert "HF_HUB_OFFLINE is set, so nothing was downloaded: unset it to download them." in message
    assert str(tmp_path / "lllyasviel/flux_redux_bfl/image_encoder") in message
    assert str(tmp_path / "lllyasviel/FramePack_F1_I2V_HY_20250503") in message
    assert "text_encoder:" not in message and "FramePackI2V_HY " not in message


def test_failed_download_reports_what_is_missing(tmp_path, monkeypatch):
    with socket.socket() as sock:  # a local port with nothing listening: the hub client fails at once
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(MissingWeights) as error:
        ensure_weights(tmp_path, ("original",))
    message = str(error.value)
    assert "The download stopped: " in message and "the same command fetches only the rest" in message
    assert "download-weights --weights" not in message  # the command that failed does not recommend itself
    assert str(tmp_path / "lllyasviel/FramePackI2V_HY") in message
    assert not any(tmp_path.rglob("*.safetensors"))


def test_download_command_with_weights_present(run_cli):
    result = run_cli("download-weights", "--weights", str(TINY_WEIGHTS))
    assert result.code == 0
    assert "original transformer: 148 tensors match its config" in result.stderr


def test_download_command_rejects_unknown_variant(run_cli, tmp_path):
    result = run_cli("download-weights", "--weights", str(tmp_path), "--variants", "original,f3")
    assert result.code == 2 and "Invalid input '--variants'" in result.stderr
