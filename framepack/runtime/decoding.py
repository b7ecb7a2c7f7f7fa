"""VAE decoding of each finished section, optionally in the background while the next section samples.

The reference decodes a section right after sampling it, so the GPU's sampling waits for every decode. Nothing
in the next section's sampling depends on the pixels (it reads only latents), so `SectionDecoder` can run the
decode and the soft append in a worker thread, on its own CUDA stream, while the main thread samples. The pixels
are the same: the same kernels run on the same inputs, in section order.

The price is memory: the decode's activations (about 21 GiB at 544x704) are then held alongside the sampling's,
so the decode goes to the background only where the GPU has room for both (`background_decode_fits`). Both
saturate a GPU at its power limit, so overlapping alone gains little. What pays is decoding less: tiles shared
with the previous section are reused, and the next section's known tiles are decoded ahead (`tiled_decode.py`),
which leaves 4 of the last section's 7 tiles to wait for (the gains, with the same frames: BENCHMARKS.md).
"""

from __future__ import annotations

import contextlib
import functools
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from ..core.frames import FrameAssembler
from ..core.progress import ProgressReporter
from .memory_costs import background_decode_bytes
from .streaming import weights_on_device
from .tiled_decode import TileDecoder


@torch.no_grad()
def vae_decode(latents: torch.Tensor, vae, tiles: TileDecoder | None = None) -> torch.Tensor:
    """(1, 16, T, h, w) scaled latents -> (1, 3, 4T - 3, 8h, 8w) pixels in about [-1, 1], on the CPU.

    With `tiles` (for `vae`), temporal tiles decoded before are reused: the pixels are the same.
    From a GPU the pixels land in page-locked memory: a pageable copy of one section's 160 MB took 0.1 s.
    """
    if tiles is not None:
        pixels = tiles.decode(latents)
    else:
        pixels = vae.decode((latents / vae.config.scaling_factor).to(device=vae.device, dtype=vae.dtype)).sample
    if pixels.device.type != "cuda":
        return pixels.cpu()
    return torch.empty(pixels.shape, dtype=pixels.dtype, pin_memory=True).copy_(pixels)


def background_decode_fits(available_bytes: int, height: int, width: int) -> bool:
    """Whether `available_bytes` of free GPU memory hold a background decode and the sampling beside it."""
    return available_bytes >= background_decode_bytes(height, width)


def background_decode_plan(vae, height: int, width: int) -> tuple[bool, str]:
    """Decide, before sampling starts, whether sections decode in the background; returns (yes, how and why)."""
    device = vae.device
    if device.type != "cuda":
        return False, "after each section (the VAE is not resident on a GPU)"
    free, total = torch.cuda.mem_get_info(device)
    # A process limited to a fraction of the GPU (torch.cuda.set_per_process_memory_fraction) has less.
    limit = torch.cuda.get_per_process_memory_fraction(device) * total - torch.cuda.memory_reserved(device)
    free = min(free, int(limit))
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    available, needed = free + cached, background_decode_bytes(height, width)
    verdict = f"{available / 2**30:.1f} GiB free, {needed / 2**30:.1f} GiB needed"
    if background_decode_fits(available, height, width):
        return True, f"in the background while the next section samples ({verdict})"
    return False, f"after each section ({verdict} to overlap it with sampling)"


@functools.cache
def _decode_stream(device: torch.device) -> torch.cuda.Stream:
    # One stream for the process: the allocator caches memory per stream, so a new stream per generation
    # could not reuse the previous decode's blocks.
    return torch.cuda.Stream(device)


@dataclass(frozen=True)
class UpcomingDecode:
    """The next section's decode window as far as it is known: `window_latents` latents, of which `known`
    (1, 16, K, h, w), already generated, sit at [offset, offset + K) (`Variant.known_decode_history`)."""

    window_latents: int
    offset: int
    known: torch.Tensor


class SectionDecoder:
    """Decodes sections in generation order and adds their pixels to a FrameAssembler.

    With `background`, each decode runs in one worker thread (on its own CUDA stream on a GPU) while the caller
    goes on; at most one decode is in flight, and a failed decode raises from the next `submit` or `finish`.
    With `reuse_tiles` (the VAE resident on the execution device, or visiting it for each decode), temporal tiles
    shared with the previous section's decode are not decoded again (`tiled_decode.py`); in the background, the
    next decode's tiles that are known already are decoded ahead too. The pixels are the same either way.
    Timings: "decode" is the time the caller spends decoding or waiting for a decode, "decode_in_background"
    the worker's decode time. Use as a context manager: leaving it waits for a decode still running.
    """

    def __init__(
        self, vae, assembler: FrameAssembler, progress: ProgressReporter, background: bool, reuse_tiles: bool = False
    ):
        self.vae = vae
        self.assembler = assembler
        self.progress = progress
        self.tiles = TileDecoder(vae) if reuse_tiles else None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="framepack-decode") if background else None
        self._stream = _decode_stream(vae.device) if background and vae.device.type == "cuda" else None
        self._in_flight: Future | None = None

    def __enter__(self) -> SectionDecoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def submit(self, latents: torch.Tensor, upcoming: UpcomingDecode | None = None) -> None:
        """Decode (1, 16, T, h, w) latents (on the CPU, not modified afterwards) and append their pixels.

        `upcoming`: what is known of the next section's decode, for decoding its tiles ahead in the background.
        """
        self._wait()
        if self._executor is None:
            with self.progress.stage("decode"):
                self._decode(latents)
        else:
            self._in_flight = self._executor.submit(self._decode_in_background, latents, upcoming)

    def finish(self) -> torch.Tensor:
        """Wait for the last decode; all frames (T, H, W, 3) uint8 in video order."""
        self._wait()
        return self.assembler.frames()

    def close(self) -> None:
        """Stop the worker and free the kept tiles. A decode already on the GPU cannot be interrupted, so this
        waits for it."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        if self.tiles is not None:
            self.tiles.clear()

    def _decode(self, latents: torch.Tensor) -> None:
        with weights_on_device(self.vae):  # a streamed VAE is copied in once for all of the section's tiles
            self.assembler.add(vae_decode(latents, self.vae, self.tiles))

    def _decode_in_background(self, latents: torch.Tensor, upcoming: UpcomingDecode | None) -> None:
        stream = torch.cuda.stream(self._stream) if self._stream is not None else contextlib.nullcontext()
        # One visit of a streamed VAE covers the decode and the tiles decoded ahead.
        with self.progress.stage("decode_in_background"), stream, weights_on_device(self.vae):
            self._decode(latents)
            if upcoming is not None and self.tiles is not None:
                self.tiles.prefetch(upcoming.window_latents, upcoming.offset, upcoming.known)

    def _wait(self) -> None:
        if self._in_flight is not None:
            in_flight, self._in_flight = self._in_flight, None
            with self.progress.stage("decode"):
                in_flight.result()
