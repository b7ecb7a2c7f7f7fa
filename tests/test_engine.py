"""The one engine start-up: what it loads, what it logs, and the options every generation on it gets."""

import torch
from helpers.paths import TINY_WEIGHTS

from framepack.config import EngineConfig, LoraDownloads
from framepack.logs import configure_logging
from framepack.serving.engine import load_engine


def test_load_engine_logs_its_decisions_and_carries_the_lora_settings(tmp_path, capsys):
    configure_logging("stderr")
    config = EngineConfig(
        weights_dir=TINY_WEIGHTS,
        variants=("f1",),
        device="cpu",
        dtype="float32",
        lora_cache_dir=tmp_path / "loras",
        lora_max_bytes=1234,
    )
    engine = load_engine(config)
    assert set(engine.models.transformers) == {"f1"} and engine.models.device == torch.device("cpu")
    assert engine.config.lora_downloads() == LoraDownloads(tmp_path / "loras", 1234)
    logged = capsys.readouterr().err
    assert "memory mode: cpu" in logged and "f1 transformer: 148 tensors match its config" in logged
    assert f"loaded f1 from {TINY_WEIGHTS} on cpu (torch.float32)" in logged


def test_loading_straight_onto_the_device_gives_the_same_weights():
    """High-VRAM mode reads the encoders, the VAE and the resident transformers with a device map; on the CPU
    the same path runs (onto the CPU) and must give exactly the weights the host path gives."""
    from framepack.models import load_models

    cpu = torch.device("cpu")
    host = load_models(TINY_WEIGHTS, ("original", "f1"), cpu, torch.float32)
    direct = load_models(TINY_WEIGHTS, ("original", "f1"), cpu, torch.float32, direct_variants=1)
    for name in ("text_encoder", "text_encoder_2", "image_encoder", "vae"):
        a, b = getattr(host, name).state_dict(), getattr(direct, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    for variant in ("original", "f1"):
        a, b = host.transformers[variant].state_dict(), direct.transformers[variant].state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), variant
