"""How much of the model to keep on the GPU for a memory budget: a pure function of sizes, explained in numbers.

Below high-VRAM mode the transformer's blocks stream from host memory (`streaming.BlockStreamer`). Streaming
all 60 blocks moves 25.7 GB per forward; with a budget larger than the minimum, the first blocks can stay
resident instead, so fewer bytes cross the host link and the next streamed block's copy hides behind the
resident blocks' compute. `plan_residency` fills the budget in order of use per request:
1. what every configuration needs: the transformer's other modules (embedders, refiner, head), the working set
   (activations at the request's size and a tiled VAE decode's peak) and the two streaming slots;
2. transformer blocks, the first ones first (used 2 * steps * sections times per request);
3. the VAE (used once per section) when all blocks fit; then room for decoding whole frames (1.7x faster than
   in tiles, `memory_costs.decode_tiling`); then the text and image encoders (used once per request). Encoders
   that are not resident visit the GPU in one copy for their calls where the budget holds them beside the held
   blocks (the Llama and CLIP together, then SigLIP: `Residency.encoders_visit`), and otherwise stream layer by
   layer.
If every block fits, the slots are not needed and that room goes to the next items.

Sizes are bytes. Shapes of nothing: this module does no tensor work.
"""

from __future__ import annotations

from dataclasses import dataclass

from .memory_costs import GIB, WIDEST_640, decode_bytes, working_set_bytes

# The working set a setup plans for before a request's size is known: the widest 640 bucket, the trained window.
SETUP_WORKING_SET = working_set_bytes(*WIDEST_640, 9)


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


def plan_residency(budget: int, sizes: ModelSizes, working_set: int = SETUP_WORKING_SET) -> Residency:
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
    whole_frames = max(decode_bytes(None, *WIDEST_640) - working_set, 0)  # beyond the working set's tiles
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
    """How many blocks fit in `setup`'s budget beside `working_set` (a request's,
    `memory_costs.working_set_bytes`), with the VAE and the encoders staying where `setup` placed them."""
    placed = (sizes.vae if setup.vae_resident else 0) + (sizes.encoders if setup.encoders_resident else 0)
    return plan_residency(setup.budget - placed, sizes, working_set).resident_blocks
