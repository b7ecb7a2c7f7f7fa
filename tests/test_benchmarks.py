"""The benchmarks run (tiny architecture, CPU): they must not rot between GPU sessions."""

import json
import shutil
from pathlib import Path

import pytest
from helpers.paths import TINY_WEIGHTS

from benchmarks import cli
from framepack.core.magcache import MagCacheSettings, skipped_calls

pytestmark = pytest.mark.e2e  # the GPU benchmark harness, in processes of its own

ROOT = Path(__file__).resolve().parent.parent


def run_bench(out, flags: str) -> None:
    """`python -m benchmarks FLAGS --out OUT`, in-process; it must exit 0."""
    assert cli.main([*flags.split(), "--out", str(out)]) == 0


def test_tiny_benchmark_runs_and_paths_agree(tmp_path):
    out = tmp_path / "bench.json"
    run_bench(out, "--size tiny --repeat 1 --e2e --magcache --e2e-seconds 0.8 --steps 2")
    report = json.loads(out.read_text())
    # On the CPU in float32 our staged path and the stock forward agree exactly.
    assert report["forward_relative_l2"] == 0.0 and report["e2e_latents_relative_l2"] == 0.0
    runs = {"stock_teacache_off", "eager_teacache_on", "ours_teacache_off", "ours_teacache_on", "ours_magcache"}
    assert set(report["e2e"]) == runs
    # At 2 steps MagCache's schedule skips nothing (the last step's ratio is too far from 1): the exact video.
    assert report["e2e"]["ours_magcache"]["block_stack_runs_per_section"] == 2
    assert report["e2e_ours_magcache_latents_relative_l2_vs_ours_exact"] == 0.0
    assert report["e2e"]["stock_teacache_off"]["block_stack_runs_per_section"] is None
    assert report["e2e_teacache_on_latents_relative_l2"] == 0.0


def test_tiny_benchmark_teacache_runs_only_against_the_reference_decode(tmp_path):
    out = tmp_path / "bench.json"
    run_bench(
        out,
        "--size tiny --repeat 1 --e2e --teacache-runs-only --compare-reference-decode --e2e-seconds 1.2 --steps 2 "
        "--preview-cost",
    )
    report = json.loads(out.read_text())
    assert set(report["e2e"]) == {"eager_teacache_on", "ours_teacache_on", "ours_reference_decode_teacache_on"}
    assert "e2e_speedup_teacache_on" in report
    # The studio's live preview: made at the first step at least, the window's 9 latent frames side by side.
    cost = report["preview_cost"]
    assert cost["previews"] >= 2 and cost["preview_shape"] == [4, 9 * 6, 3] and cost["ratio_with_over_without"] > 0
    comparison = report["e2e_our_decode_teacache_on"]
    assert comparison["frames_equal"] and comparison["frames_max_difference"] == 0
    # Off the GPU our loop decides to decode in line, and says so; its one section (10 latents) is 4 tiles.
    assert report["e2e"]["ours_teacache_on"]["decode_plan"] == [
        "VAE decode: after each section (the VAE is not resident on a GPU)",
        "VAE decode: 4 tiles decoded (0 ahead of their section), 0 reused",
    ]
    assert report["e2e"]["ours_reference_decode_teacache_on"]["decode_plan"] == []  # told, not decided


def test_tiny_benchmark_fp8_decode_and_f1(tmp_path):
    out = tmp_path / "bench.json"
    run_bench(
        out,
        "--size tiny --repeat 1 --e2e --no-teacache-runs --fp8 --decode --cfg-batch --e2e-seconds 0.8 --steps 2 "
        "--variant f1 --kernels native sage",
    )
    report = json.loads(out.read_text())
    assert report["e2e"]["ours_teacache_off"]["frames"] == 37  # F1's one section: start latent + 9
    assert set(report["e2e"]) == {"stock_teacache_off", "ours_teacache_off", "ours_fp8_teacache_off"}
    assert report["fp8_layers"] == 34
    # Off the GPU the kernels' probes say why they cannot run; the native kernel is the stock forward's.
    assert report["attention_kernels"]["sage"] == {"skipped": "SageAttention needs a CUDA GPU"}
    assert report["attention_kernels"]["native"]["relative_l2_vs_stock"] == 0.0
    assert 1e-4 < report["forward_fp8_relative_l2_vs_ours_bf16"] < 5e-2
    # On the CPU only the exact padding applies (GroupNorm compiles on CUDA): the pixels are bit-identical.
    assert report["decode"]["relative_l2"] == 0.0 and report["decode"]["uint8_max_change"] == 0
    assert report["kernels_stock_s"] == {} and report["clocks_stock"] == {}  # both need a GPU
    # Both CFG branches in one batch-2 call give the positive branch's batch-1 output (float32, CPU).
    assert report["cfg_batch"]["two_calls_s"] > 0 and report["cfg_batch"]["relative_l2"] < 1e-6


@pytest.mark.parametrize(("flags", "steps"), [("", 2), ("--adaptive --magcache", 8)])
def test_tiny_low_vram_benchmark_loads_saved_random_weights(tmp_path, flags, steps):
    weights, out = tmp_path / "weights", tmp_path / "low.json"
    assert cli.main(["--size", "tiny", "--save-random-weights", str(weights)]) == 0
    run_bench(
        out,
        f"--size tiny --low-vram --weights {weights} --vram-cap-gb 6 --e2e-seconds 1.2 --steps {steps} "
        f"--short-caps-gb 8 --short-seconds 0.8 --short-steps 1 {flags}",
    )
    low = json.loads(out.read_text())["low_vram"]
    assert low["weights_gib"] > 0 and low["host_peak_rss_low_gib"] >= low["host_peak_rss_after_placement_gib"]
    long_run = f"cap_6gib_1.2s_{steps}steps"
    for run, high in ((long_run, f"high_1.2s_{steps}steps"), ("cap_8gib_0.8s_1steps", "high_0.8s_1steps")):
        # No GPU here: both runs are the CPU plan, so they reproduce the high-VRAM run exactly.
        assert low[run]["frames"] == low[high]["frames"] and low[run]["relative_l2_vs_high"] == 0.0
    # With MagCache the streamed blocks run only on the steps its schedule keeps (4 of 8).
    kept = steps - len(skipped_calls("original", steps, MagCacheSettings())) if "--magcache" in flags else steps
    assert low[long_run]["block_stack_runs_per_section"] == kept and kept in (2, 4)


def test_tiny_cold_start_benchmark_times_fresh_processes(tmp_path):
    weights, out, scratch = tmp_path / "weights", tmp_path / "cold.json", tmp_path / "scratch"
    shutil.copytree(TINY_WEIGHTS, weights)
    # The same tree as "before" and "after": the protocol, the timings and the comparison, not a speed-up.
    run_bench(
        out,
        f"--size tiny --cold-start --weights {weights} --before-code {ROOT} --scratch {scratch} "
        "--cold-start-runs before after",
    )
    report = json.loads(out.read_text())
    assert report["read_ceiling"]["gib"] > 0 and report["read_ceiling"]["parallel_gib_s"] > 0
    names = {"first", "warm", "new prompt length", "other bucket", "other variant"}
    for run in ("before", "after"):
        result = report["runs"][run]
        assert result["returncode"] == 0 and set(result["predictions"]) == names
        assert 0 < result["import_s"] < result["ready_s"] and result["setup_s"] < result["ready_s"]
        assert list(result["phases"])[:4] == ["weights check", "reading", "placement", "acceleration"]
    # Eager on the CPU, same code and seed: the videos are identical.
    assert report["output_difference"] == {name.replace(" ", "-"): 0.0 for name in names}


def test_tiny_parallel_benchmark_compares_one_process_with_three(tmp_path):
    weights, out = tmp_path / "weights", tmp_path / "parallel.json"
    run_bench(out, f"--size tiny --parallel --gpus 3 --weights {weights} --repeat 1 --e2e-seconds 0.8 --steps 2")
    report = json.loads(out.read_text())["parallel"]
    one, three = report["1_gpu"], report["3_gpu"]
    assert one["forward_s"] > 0 and three["forward_s"] > 0 and one["e2e"]["frames"] == three["e2e"]["frames"]
    # float32 on the CPU: the three processes compute what one does.
    assert three["forward_relative_l2"] < 1e-5 and three["e2e_latents_relative_l2"] < 1e-5
    # Per forward: scatter, two broadcasts, gather, and three exchanges in each of the 4 tiny blocks.
    assert three["collectives_per_forward"] == 4 + 3 * 4 and three["communication_per_forward_s"] > 0
    assert set(three["peak_memory"]) == {"rank 0", "rank 1", "rank 2"}
