"""The two FramePack models' direction of generation, one object each.

`original` (inverted anti-drifting, lllyasviel/FramePackI2V_HY) generates the video's sections from the end
backwards and prepends each to the history; `f1` (lllyasviel/FramePack_F1_I2V_HY_20250503) generates forwards
and appends. Everything that depends on that direction is here: the section plan, where the 1x/2x/4x context
sits in the history, how the start latent and each new section join the history, which latents are the newest,
what of a decode window is known before its section samples, whether decoded frames go before or after, and
where a continued video's latents go (`continuation_slots`).

History tensors are (1, 16, T, h, w) latents on their time axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import planner
from .planner import HISTORY_FRAMES, SectionPlan


@dataclass(frozen=True)
class StartSlots:
    """What the clean latents around the start hold (each (1, 16, T, h, w)).

    start_latent: the start slot's latent (1 frame), which the video begins with; start_context: latents placed
    before it in the start group (None: none); history_seed: what a forward history starts from.
    """

    start_latent: torch.Tensor
    start_context: torch.Tensor | None
    history_seed: torch.Tensor


class Variant:
    """The direction-dependent parts of the generation loop (see the module docstring)."""

    name: str
    prepends: bool  # new sections and their frames go before the earlier ones
    has_end_slot: bool  # its first generated section is the video's end, so an end frame can guide it
    default_video_context: int  # a continued video's latents used when video_context_frames is 0

    def plan_sections(self, num_sections: int, latent_window_size: int, start_latents: int = 1) -> list[SectionPlan]:
        """The sections of a video in generation order (`start_latents`: the start group's size)."""
        raise NotImplementedError

    def continuation_slots(self, context: torch.Tensor, anchor: torch.Tensor, last_frame: torch.Tensor) -> StartSlots:
        """Where a continued video's last latents `context` go, with the `anchor` image's latent (the input image,
        or the video's last frame) and `last_frame`, the video's last frame encoded alone (one frame, as a start
        image is; the context's last latent covers up to 4 frames). The video begins with the frame of the
        context's last latent, the input's last, which the output drops."""
        raise NotImplementedError

    def context_slices(self) -> tuple[slice, slice, slice]:
        """Where the 1x, 2x and 4x context latents sit in the history's time axis."""
        raise NotImplementedError

    def start_history(self, empty: torch.Tensor, seed: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The history before the first section (from `empty` zeros and `StartSlots.history_seed`), and how many
        latents of it are video."""
        raise NotImplementedError

    def add_section(
        self, history: torch.Tensor, latents: torch.Tensor, section: SectionPlan, start_latent: torch.Tensor
    ) -> tuple[torch.Tensor, int]:
        """The history with a sampled section joined, and how many video latents that added.

        torch.cat makes a new tensor, so slices of the previous history handed elsewhere never change.
        """
        raise NotImplementedError

    def newest(self, history: torch.Tensor, count: int) -> torch.Tensor:
        """The `count` most recently generated latents of `history`, in time order."""
        raise NotImplementedError

    def known_decode_history(self, section: SectionPlan, latent_window_size: int) -> tuple[int, int] | None:
        """The part of `section`'s decode window already in the history before it samples: (offset, count).

        The window is the section's new latents and the newest history latents next to them in time. None for
        the first section, which decodes only what it generated.
        """
        if section.decode_latents is None:
            return None
        new = self._new_latents(section, latent_window_size)
        return (new if self.prepends else 0), section.decode_latents - new

    def _new_latents(self, section: SectionPlan, latent_window_size: int) -> int:
        return latent_window_size


class Inverted(Variant):
    """The original FramePack: the end first; the start latent joins the history after the last section."""

    name, prepends, has_end_slot = "original", True, True
    default_video_context = 1  # the start slot it was trained with

    def plan_sections(self, num_sections: int, latent_window_size: int, start_latents: int = 1) -> list[SectionPlan]:
        return planner.inverted_sections(num_sections, latent_window_size, start_latents)

    def continuation_slots(self, context: torch.Tensor, anchor: torch.Tensor, last_frame: torch.Tensor) -> StartSlots:
        # The start slot is the video's last frame, encoded alone as the model's start images always were, so the
        # end-first sections lead back to it; the video's earlier latents go before it, as FP-Studio's "Video"
        # model does (the causal VAE's first latents do not depend on later frames). The history holds only the
        # future.
        before = context[:, :, :-1]
        return StartSlots(last_frame, before if before.shape[2] else None, last_frame)

    def start_history(self, empty: torch.Tensor, seed: torch.Tensor) -> tuple[torch.Tensor, int]:
        return empty, 0

    def context_slices(self) -> tuple[slice, slice, slice]:
        # Newest at the front; the zero frames of the empty history stay at the tail.
        return slice(0, 1), slice(1, 3), slice(3, HISTORY_FRAMES)

    def add_section(self, history, latents, section, start_latent):
        if section.is_last:
            latents = torch.cat([start_latent, latents], dim=2)
        return torch.cat([latents, history], dim=2), latents.shape[2]

    def newest(self, history: torch.Tensor, count: int) -> torch.Tensor:
        return history[:, :, :count]

    def _new_latents(self, section: SectionPlan, latent_window_size: int) -> int:
        return latent_window_size + (1 if section.is_last else 0)


class Forward(Variant):
    """FramePack-F1: the start first; the start latent is the history's newest latent from the beginning."""

    name, prepends, has_end_slot = "f1", False, False
    default_video_context = HISTORY_FRAMES  # its whole 1x, 2x and 4x history

    def plan_sections(self, num_sections: int, latent_window_size: int, start_latents: int = 1) -> list[SectionPlan]:
        if start_latents != 1:
            raise ValueError("f1's start group is one latent; a continued video's latents go into its history")
        return planner.forward_sections(num_sections, latent_window_size)

    def continuation_slots(self, context: torch.Tensor, anchor: torch.Tensor, last_frame: torch.Tensor) -> StartSlots:
        # The video's latents are the history the first section continues, newest last, as its own sections
        # would be; the anchor image keeps the start slot it has in every F1 section.
        return StartSlots(anchor, None, context)

    def context_slices(self) -> tuple[slice, slice, slice]:
        return slice(-1, None), slice(-3, -1), slice(-HISTORY_FRAMES, -3)

    def start_history(self, empty: torch.Tensor, seed: torch.Tensor) -> tuple[torch.Tensor, int]:
        return torch.cat([empty, seed], dim=2), 1

    def add_section(self, history, latents, section, start_latent):
        return torch.cat([history, latents], dim=2), latents.shape[2]

    def newest(self, history: torch.Tensor, count: int) -> torch.Tensor:
        return history[:, :, history.shape[2] - count :]


VARIANTS: dict[str, Variant] = {variant.name: variant for variant in (Inverted(), Forward())}


def variant_named(name: str) -> Variant:
    """The Variant of a model_variant input; ValueError for an unknown name."""
    if name not in VARIANTS:
        raise ValueError(f"unknown model variant {name!r}; known: {', '.join(VARIANTS)}")
    return VARIANTS[name]
