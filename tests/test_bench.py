"""The benchmark script runs (tiny architecture, CPU): it must not rot between GPU sessions."""

import json

import torch

from framepack import bench
from framepack.acceleration import accelerate


def test_tiny_benchmark_runs_and_paths_agree(tmp_path):
    out = tmp_path / "bench.json"
    assert bench.main(["--size", "tiny", "--out", str(out), "--repeat", "1", "--e2e", "--e2e-seconds", "0.8",
                       "--steps", "2"]) == 0
    report = json.loads(out.read_text())
    # On the CPU in float32 our staged path and the stock forward agree exactly.
    assert report["forward_relative_l2"] == 0.0 and report["e2e_latents_relative_l2"] == 0.0
    assert set(report["e2e"]) == {"stock_teacache_off", "eager_teacache_on", "ours_teacache_off",
                                  "ours_teacache_on"}


def test_acceleration_is_a_no_op_off_cuda(tiny_models):
    applied = accelerate(tiny_models.transformers["original"], torch.device("cpu"))
    assert applied.attention == "native" and not applied.compiled
    assert applied.notes == ["not on CUDA: eager PyTorch"]
