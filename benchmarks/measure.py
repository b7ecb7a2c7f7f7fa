"""Measuring: seconds per call, GPU clocks and power, GPU time by kernel kind, distances, peak memory."""

from __future__ import annotations

import resource
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import torch


def time_call(fn, device: torch.device, warmup: int, repeat: int) -> list[float]:
    """Seconds per call (CUDA events on a GPU), after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
    return times


def median_seconds(fn, device: torch.device, warmup: int, repeat: int) -> float:
    return float(np.median(time_call(fn, device, warmup, repeat)))


def relative_l2(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected||, in float64 (0 when both are zero)."""
    expected = expected.double()
    return float((actual.double() - expected).norm() / expected.norm().clamp_min(1e-30))


def peak_memory(device: torch.device) -> dict:
    """Peak allocated and reserved GPU memory (GiB) since the last reset; empty off CUDA."""
    if device.type != "cuda":
        return {}
    return {
        "peak_allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30,
        "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30,
    }


def peak_rss_gib() -> float:
    """This process's peak resident host memory (GiB; Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def current_rss_gib() -> float:
    """This process's resident host memory now (GiB), from /proc (0 where there is none)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return 0.0
    line = next((line for line in status.splitlines() if line.startswith("VmRSS:")), "VmRSS: 0 kB")
    return int(line.split()[1]) / 2**20


class GpuClocks:
    """Mean SM clock (MHz) and board power (W) while the block runs, from `nvidia-smi` every 100 ms.

    The same kernels can run slower when the GPU lowers its clock at its power limit; this shows whether it did.
    Empty off CUDA or without nvidia-smi.
    """

    def __init__(self, device: torch.device):
        self.index = (
            device.index
            if device.index is not None
            else (torch.cuda.current_device() if device.type == "cuda" else None)
        )
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        command = [
            "nvidia-smi",
            f"--id={self.index}",
            "--query-gpu=clocks.sm,power.draw",
            "--format=csv,noheader,nounits",
        ]
        while not self._stop.is_set():
            try:
                line = subprocess.run(command, capture_output=True, text=True, timeout=5).stdout.strip()
                clock, power = (float(value) for value in line.split(","))
            except (OSError, ValueError, subprocess.TimeoutExpired):
                return
            self.samples.append((clock, power))
            self._stop.wait(0.1)

    def __enter__(self) -> GpuClocks:
        if self.index is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def summary(self) -> dict:
        if not self.samples:
            return {}
        clocks, powers = zip(*self.samples)
        return {"sm_clock_mhz": float(np.mean(clocks)), "power_w": float(np.mean(powers)), "samples": len(self.samples)}


def kernel_time_split(fn, device: torch.device) -> dict:
    """GPU seconds of one call of `fn` by kernel kind (attention, matrix products, everything else)."""
    if device.type != "cuda":
        return {}
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as trace:
        fn()
        torch.cuda.synchronize(device)
    split = {"attention": 0.0, "matmul": 0.0, "other": 0.0}
    for event in trace.key_averages():
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        name = event.key.lower()
        # Compiled element-wise kernels are named after the ops they feed ("triton_..._attention_..."): other.
        kind = (
            "other"
            if name.startswith("triton")
            else "attention"
            if any(k in name for k in ("fmha", "flash", "sdpa", "attention", "attn_fwd"))
            else "matmul"
            if any(k in name for k in ("gemm", "nvjet", "xmma", "cutlass"))
            else "other"
        )
        split[kind] += event.self_device_time_total / 1e6
    return split


def read_mp4_frames(path: Path) -> tuple[torch.Tensor, float]:
    """Decode an MP4 back to (T, H, W, 3) uint8 RGB frames and its frame rate (to compare outputs)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate)
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    return torch.from_numpy(np.stack(frames)), rate
