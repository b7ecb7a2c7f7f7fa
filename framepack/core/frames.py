"""Assembling decoded sections into the final frames: soft append and the reference's uint8 conversion.

Each decoded section overlaps the previous one by `overlap` pixel frames, cross-faded linearly
(docs/ALGORITHM.md §7.2). Frames outside the overlap never change again, so they are converted to uint8 as
soon as they are final: a long video is held as uint8 (a quarter of float32), with only the overlap in float.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def soft_append(first: torch.Tensor, second: torch.Tensor, overlap: int) -> torch.Tensor:
    """Join (B, C, T, H, W) clips: first's last `overlap` frames fade linearly (1 -> 0) into second's first.

    Returns first[:-overlap] ++ blend ++ second[overlap:] in first's dtype, as the reference's soft_append_bcthw.
    """
    if overlap <= 0:
        return torch.cat([first, second], dim=2)
    weights = torch.linspace(1, 0, overlap, dtype=first.dtype, device=first.device).view(1, 1, -1, 1, 1)
    blended = weights * first[:, :, -overlap:] + (1 - weights) * second[:, :, :overlap]
    return torch.cat([first[:, :, :-overlap], blended, second[:, :, overlap:]], dim=2).to(first)


def to_uint8_frames(pixels: torch.Tensor) -> torch.Tensor:
    """(1, 3, T, H, W) in [-1, 1] -> (T, H, W, 3) uint8, truncating like the reference (not rounding)."""
    scaled = torch.clamp(pixels.float(), -1.0, 1.0) * 127.5 + 127.5
    return scaled.to(torch.uint8)[0].permute(1, 2, 3, 0).contiguous()


class FrameAssembler:
    """Collects decoded sections in generation order and yields the video's uint8 frames in time order.

    `prepend=True` for the original variant (each new section goes before the previous ones), False for F1.
    Only the `overlap` frames that the next section will blend into are kept in float. With `prepend=False`,
    `on_final` (if given) receives each run of final uint8 frames (T, H, W, 3) as soon as it is final, in
    video order; the last `overlap` frames become final only in `frames()`. The video's first `drop_leading`
    frames are left out of both.
    """

    def __init__(
        self,
        overlap: int,
        prepend: bool,
        on_final: Callable[[torch.Tensor], None] | None = None,
        drop_leading: int = 0,
    ):
        self.overlap = overlap
        self.prepend = prepend
        self.on_final = None if prepend else on_final
        self.drop_leading = drop_leading
        self._to_drop = drop_leading  # of the frames still to be handed to on_final
        self.pending: torch.Tensor | None = None  # (1, 3, T, H, W) float frames still to be blended
        self.final: list[torch.Tensor] = []  # uint8 (T, H, W, 3) chunks, in generation order

    def add(self, pixels: torch.Tensor) -> None:
        """Add a decoded section (1, 3, T, H, W); the first section is taken whole."""
        if self.pending is None:
            joined = pixels
        elif self.prepend:
            joined = soft_append(pixels, self.pending, self.overlap)
        else:
            joined = soft_append(self.pending, pixels, self.overlap)
        keep = min(self.overlap, joined.shape[2])
        if self.prepend:
            self.pending, finished = joined[:, :, :keep], joined[:, :, keep:]
        else:
            self.pending, finished = joined[:, :, joined.shape[2] - keep :], joined[:, :, : joined.shape[2] - keep]
        if finished.shape[2]:
            self.final.append(to_uint8_frames(finished))
            if self.on_final is not None:
                self._hand_over(self.final[-1])

    def _hand_over(self, chunk: torch.Tensor) -> None:
        dropped = min(self._to_drop, chunk.shape[0])
        self._to_drop -= dropped
        if chunk.shape[0] > dropped:
            self.on_final(chunk[dropped:])

    def frames(self) -> torch.Tensor:
        """All frames (T, H, W, 3) uint8 in video order (the first `drop_leading` left out)."""
        chunks = list(reversed(self.final)) if self.prepend else list(self.final)
        pending = to_uint8_frames(self.pending)
        frames = torch.cat([pending] + chunks if self.prepend else chunks + [pending], dim=0)
        return frames[self.drop_leading :] if self.drop_leading else frames
