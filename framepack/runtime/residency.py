"""How much of the model to keep on the GPU for a memory budget: a pure function of sizes, explained in numbers.

Below high-VRAM mode the transformer's blocks stream from host memory (`streaming.BlockStreamer`). Streaming
all 60 blocks moves 25.7 GB per forward; with a budget larger than the minimum, the first blocks can stay
resident instead, so fewer bytes cross the host link and the next streamed block's copy hides behind the
resident blocks' compute. `plan_residency` fills the budget in order of use per request:
1. what every configuration needs: the transformer's other modules (embedders, refiner, head), the working set
   (activations at the request's size and a tiled VAE decode's peak) and the two streaming slots;
2. transformer blocks, the first ones first (used 2 * steps * sections times per request);
3. the VAE (used once per section) when all blocks fit; then room for decoding whole frames (1.7x faster than
   in tiles, `decode_tiling`); then the text and image encoders (used once per request). Encoders that are not
   resident visit the GPU in one copy for their calls where the budget holds them beside the held blocks (the
   Llama and CLIP together, then SigLIP: `Residency.encoders_visit`), and otherwise stream layer by layer.
If every block fits, the slots are not needed and that room goes to the next items.

Sizes are bytes. Shapes of nothing: this module does no tensor work.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 2**30
# Activations of a 640-bucket section and its tiled VAE decode in low-VRAM mode: a 6 GiB cap ran a 5-second
# video at 5.94 GiB peak reserved (H200, BENCHMARKS.md "Low-VRAM mode"), of which 2 slots and the non-block
# modules were about 2 GiB. Of that, the part that grows with the sequence (the blocks' activations) is taken
# to be 2.5 GiB; the rest (tiled VAE decode, encoder blocks, allocator slack) does not grow with the request.
WORKING_SET_640_BYTES = 4 * GIB
_SEQUENCE_PART_640 = int(2.5 * GIB)
# The widest bucket of the 640 family (416x960) with the trained window of 9 latent frames.
REFERENCE_SIZE = (416, 960, 9)


# GPU memory one 5-latent window's VAE decode (17 frames at 544x704) needs beyond its input, by spatial tiling
# (tile, stride) in pixels, None for whole frames; fastest first. H200, `vae_decode_peaks` in the low-VRAM
# benchmark (BENCHMARKS.md "Memory budgets"), where a window took 0.36 s whole, 0.61 s in 256-pixel tiles (the
# reference's low-VRAM tiling, diffusers' default), 0.65 s in 192 and 0.9 to 1.1 s in 128. (decoding.DECODE_GIB_640,
# 20.8 GiB, is another quantity: what a background decode added to the peak beside sampling, on an H100.)
DECODE_PEAK_GIB_640 = {None: 16.3, (256, 192): 2.84, (192, 144): 1.62, (128, 96): 0.76}
_PIXELS_640 = 544 * 704
# Allocator fragmentation and longer windows' bookkeeping (the same margin as the background-decode plan).
DECODE_MARGIN = 1.15
PLANNING_FRAME = (416, 960)  # the widest bucket of the 640 family: setup plans for it


def decode_bytes(tiling: tuple[int, int] | None, height: int, width: int) -> int:
    """GPU bytes a VAE decode of `height` x `width` frames with `tiling` needs beyond its input: a whole-frame
    decode grows with the area (and, at large sizes, with the mid-block's dense mask); a tile's does not."""
    peak = DECODE_PEAK_GIB_640[tiling] * GIB
    if tiling is None:
        peak = max(peak * height * width / _PIXELS_640, mid_block_mask_bytes(height, width))
    return int(peak * DECODE_MARGIN)


def mid_block_mask_bytes(height: int, width: int) -> int:
    """Peak bytes of the dense causal mask diffusers builds for the decoder's mid-block attention.

    It covers one 5-latent tile's L = 5 * (height / 8) * (width / 8) tokens, and a bool, a float32 and a float16
    (L, L) copy exist at once (read from diffusers' code). Below 3.5x the 640 bucket's area the convolutions'
    activations need more.
    """
    tokens = 5 * (height // 8) * (width // 8)
    return (1 + 4 + 2) * tokens**2


def decode_tiling(room: int, height: int, width: int) -> tuple[int, int] | None:
    """The fastest spatial tiling (None: whole frames) whose decode fits in `room` bytes; the smallest tile if
    none fits, the least memory the decode runs in."""
    for tiling in DECODE_PEAK_GIB_640:
        if decode_bytes(tiling, height, width) <= room:
            return tiling
    return list(DECODE_PEAK_GIB_640)[-1]


def sequence_tokens(height: int, width: int, window: int) -> int:
    """Tokens the blocks attend over for a (height, width) pixel section with `window` latent frames.

    The latent is (height/8, width/8); 1x2x2 patches give h*w/4 tokens per latent frame for the window and the
    two clean frames, and the 2x and 4x history (2 and 16 frames, kernels 2x4x4 and 4x8x8) add a quarter of a
    frame each: h*w/4 * (window + 2.5).
    """
    return (height // 8) * (width // 8) * (4 * window + 10) // 16


def working_set_bytes(height: int, width: int, window: int) -> int:
    """GPU memory a request of this size needs beside the weights: the 640 measurement, its sequence part
    scaled by the token count (never below the fixed part)."""
    fixed = WORKING_SET_640_BYTES - _SEQUENCE_PART_640
    return fixed + _SEQUENCE_PART_640 * sequence_tokens(height, width, window) // sequence_tokens(*REFERENCE_SIZE)


@dataclass(frozen=True)
class ModelSizes:
    """Bytes of each part: `blocks` in forward order (dual-stream, then single-stream)."""

    blocks: tuple[int, ...]
    transformer_other: int
    vae: int
    encoders: int  # Llama, CLIP and SigLIP together
    encoders_at_once: int = 0  # the most on the GPU at once when they visit (Llama and CLIP); 0: all of them

    @property
    def visiting_bytes(self) -> int:
        return self.encoders_at_once or self.encoders


@dataclass(frozen=True)
class Residency:
    """What stays on the GPU: the first `resident_blocks` blocks, and the VAE and encoders if flagged;
    `encoders_visit`: encoders that are not resident come in whole for their call (else layer by layer)."""

    resident_blocks: int
    total_blocks: int
    vae_resident: bool
    encoders_resident: bool
    streamed_bytes_per_forward: int
    budget: int
    working_set: int
    encoders_visit: bool = False

    @property
    def all_blocks_resident(self) -> bool:
        return self.resident_blocks == self.total_blocks

    def describe(self) -> str:
        """One log line: the decision in numbers."""
        parts = [
            f"budget {self.budget / GIB:.1f} GiB (working set {self.working_set / GIB:.1f} GiB)",
            f"{self.resident_blocks}/{self.total_blocks} transformer blocks resident",
            f"{self.streamed_bytes_per_forward / GIB:.1f} GiB streamed per forward",
            f"VAE {'resident' if self.vae_resident else 'on the GPU only while used'}",
            f"encoders {'resident' if self.encoders_resident else self._encoders_elsewhere}",
        ]
        return ", ".join(parts)

    @property
    def _encoders_elsewhere(self) -> str:
        return "on the GPU whole while called" if self.encoders_visit else "streamed layer by layer"


def plan_residency(budget: int, sizes: ModelSizes, working_set: int = WORKING_SET_640_BYTES) -> Residency:
    """The most that fits in `budget` bytes of GPU memory, in the order of the module docstring.

    A budget below the minimum (other modules, working set, two slots) still streams every block: that is the
    least memory the engine can run in, and the allocator reports what it really needed.
    """
    slots = 2 * max(sizes.blocks)
    room = budget - sizes.transformer_other - working_set
    if room >= sum(sizes.blocks):  # every block fits: no slots needed
        resident, room = len(sizes.blocks), room - sum(sizes.blocks)
    else:
        room -= slots
        resident = 0
        while resident < len(sizes.blocks) and sizes.blocks[resident] <= room:
            room -= sizes.blocks[resident]
            resident += 1
    all_resident = resident == len(sizes.blocks)
    vae_resident = all_resident and sizes.vae <= room
    room -= sizes.vae if vae_resident else 0
    whole_frames = max(decode_bytes(None, *PLANNING_FRAME) - working_set, 0)  # beyond the working set's tiles
    encoders_resident = vae_resident and sizes.encoders + whole_frames <= room
    # While the encoders run, the held blocks and the VAE are all there is on the GPU.
    beside_encoders = budget - sum(sizes.blocks[:resident]) - (sizes.vae if vae_resident else 0)
    return Residency(
        resident_blocks=resident,
        total_blocks=len(sizes.blocks),
        vae_resident=vae_resident,
        encoders_resident=encoders_resident,
        streamed_bytes_per_forward=sum(sizes.blocks[resident:]),
        budget=budget,
        working_set=working_set,
        encoders_visit=not encoders_resident and sizes.visiting_bytes <= beside_encoders,
    )


def decode_room(plan: Residency, sizes: ModelSizes, held_blocks: int) -> int:
    """Bytes a section's VAE decode has under `plan`'s budget: all but the held blocks, the VAE and resident
    encoders (the transformer's other modules, the slots and the activations are freed once a section has
    sampled)."""
    encoders = sizes.encoders if plan.encoders_resident else 0
    return plan.budget - sum(sizes.blocks[:held_blocks]) - sizes.vae - encoders


def blocks_for_working_set(setup: Residency, sizes: ModelSizes, working_set: int) -> int:
    """How many blocks fit in `setup`'s budget beside `working_set` (a request's, `working_set_bytes`), with the
    VAE and the encoders staying where `setup` placed them."""
    placed = (sizes.vae if setup.vae_resident else 0) + (sizes.encoders if setup.encoders_resident else 0)
    return plan_residency(setup.budget - placed, sizes, working_set).resident_blocks
