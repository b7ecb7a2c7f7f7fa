"""The GPU memory cost model: each measured constant once, named by what it measures, and the sizes derived
from them. Pure arithmetic on pixel sizes and token counts; no tensor work.

The measurements behind every constant, with their GPUs and runs, are in BENCHMARKS.md ("The memory cost
model"); each field below names its row. `COSTS` is the model the engine plans with: the memory mode
(`memory.py`), what a low-VRAM budget holds (`residency.py`) and whether a section decodes in the background
(`decoding.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

GIB = 2**30
# A VAE tiling: (tile, stride) in pixels, or None for whole frames.
Tiling = tuple[int, int] | None


@dataclass(frozen=True)
class MemoryCosts:
    """Measured GPU memory, in GiB, at the sizes named (a "640" size is a bucket of the reference's 640 family)."""

    # Row "high-VRAM threshold": the bf16 transformer, the fp16 encoders and VAE, and a 640 section's activations.
    high_vram_min_gib: float = 60.0
    # Row "both variants resident": the same with the second transformer beside the first.
    both_variants_min_gib: float = 100.0
    # Row "reserved": what an automatic low-VRAM budget leaves out (CUDA context, cuBLAS workspaces, fragments).
    reserved_gib: float = 1.5
    # Row "low-VRAM working set": a 640 section's activations and its tiled decode beside the weights.
    working_set_640_gib: float = 4.0
    # Row "low-VRAM working set": of that, the part that grows with the blocks' token count.
    working_set_sequence_640_gib: float = 2.5
    # Row "decode peak by tiling": one 5-latent window's decode at 544x704, beyond its input, fastest first.
    decode_peak_544x704_gib: dict[Tiling, float] = field(
        default_factory=lambda: {None: 16.3, (256, 192): 2.84, (192, 144): 1.62, (128, 96): 0.76}
    )
    # Row "background decode": what a high-VRAM section decode added to the peak beside sampling, at 544x704.
    background_decode_544x704_gib: float = 20.8
    # Row "background decode": sampling's own addition beside that decode, with room for longer prompts.
    background_sampling_544x704_gib: float = 4.0
    # Row "fragmentation margin": the allocator's fragments and longer windows' bookkeeping, on every estimate.
    margin: float = 1.15


COSTS = MemoryCosts()
DECODE_MEASURED_AT = (544, 704)  # (height, width) of the decode measurements
WIDEST_640 = (416, 960)  # the widest bucket of the 640 family: what a low-VRAM setup plans for
WORKING_SET_MEASURED_AT = (*WIDEST_640, 9)  # (height, width, latent window) of the working-set measurement


def sequence_tokens(height: int, width: int, window: int) -> int:
    """Tokens the blocks attend over for a (height, width) pixel section with `window` latent frames.

    The latent is (height/8, width/8); 1x2x2 patches give h*w/4 tokens per latent frame for the window and the
    two clean frames, and the 2x and 4x history (2 and 16 frames, kernels 2x4x4 and 4x8x8) add a quarter of a
    frame each: h*w/4 * (window + 2.5).
    """
    return (height // 8) * (width // 8) * (4 * window + 10) // 16


def working_set_bytes(height: int, width: int, window: int, costs: MemoryCosts = COSTS) -> int:
    """GPU memory a request of this size needs beside the weights in low-VRAM mode: the measured working set,
    its sequence part scaled by the token count (never below the fixed part)."""
    sequence = int(costs.working_set_sequence_640_gib * GIB)
    fixed = int(costs.working_set_640_gib * GIB) - sequence
    return fixed + sequence * sequence_tokens(height, width, window) // sequence_tokens(*WORKING_SET_MEASURED_AT)


def mid_block_mask_bytes(height: int, width: int) -> int:
    """Peak bytes of the dense causal mask diffusers builds for the VAE decoder's mid-block attention.

    It covers one 5-latent tile's L = 5 * (height / 8) * (width / 8) tokens, and a bool, a float32 and a float16
    (L, L) copy exist at once (read from diffusers' code). Below 3.5x the 640 bucket's area the convolutions'
    activations need more.
    """
    tokens = 5 * (height // 8) * (width // 8)
    return (1 + 4 + 2) * tokens**2


def _area_ratio(height: int, width: int) -> float:
    return height * width / (DECODE_MEASURED_AT[0] * DECODE_MEASURED_AT[1])


def decode_bytes(tiling: Tiling, height: int, width: int, costs: MemoryCosts = COSTS) -> int:
    """GPU bytes a VAE decode of `height` x `width` frames with `tiling` needs beyond its input: a whole-frame
    decode grows with the area (and, at large sizes, with the mid-block's dense mask); a tile's does not."""
    peak = costs.decode_peak_544x704_gib[tiling] * GIB
    if tiling is None:
        peak = max(peak * _area_ratio(height, width), mid_block_mask_bytes(height, width))
    return int(peak * costs.margin)


def decode_tiling(room: int, height: int, width: int, costs: MemoryCosts = COSTS) -> Tiling:
    """The fastest tiling whose decode fits in `room` bytes; the smallest tile if none fits, the least memory
    the decode runs in."""
    for tiling in costs.decode_peak_544x704_gib:
        if decode_bytes(tiling, height, width, costs) <= room:
            return tiling
    return list(costs.decode_peak_544x704_gib)[-1]


def background_decode_bytes(height: int, width: int, costs: MemoryCosts = COSTS) -> int:
    """GPU bytes a background decode at `height` x `width` pixels needs beyond what is allocated before sampling:
    the decode and the sampling beside it, both growing with the area (the decode at least the mid-block mask)."""
    area = _area_ratio(height, width)
    decode = max(costs.background_decode_544x704_gib * GIB * area, mid_block_mask_bytes(height, width))
    return int((decode + costs.background_sampling_544x704_gib * GIB * area) * costs.margin)
