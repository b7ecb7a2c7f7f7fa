"""The two FramePack models' direction of generation, one object each.

`original` (inverted anti-drifting, lllyasviel/FramePackI2V_HY) generates the video's sections from the end
backwards and prepends each to the history; `f1` (lllyasviel/FramePack_F1_I2V_HY_20250503) generates forwards
and appends. Everything that depends on that direction is here: the section plan, where the 1x/2x/4x context
sits in the history, how the start latent and each new section join the history, which latents are the newest,
what of a decode window is known before its section samples, and whether decoded frames go before or after.

History tensors are (1, 16, T, h, w) latents on their time axis.
"""

from __future__ import annotations

import torch

from . import planner
from .planner import HISTORY_FRAMES, SectionPlan


class Variant:
    """The direction-dependent parts of the generation loop (see the module docstring)."""

    name: str
    prepends: bool  # new sections and their frames go before the earlier ones
    has_end_slot: bool  # its first generated section is the video's end, so an end frame can guide it

    def plan_sections(self, num_sections: int, latent_window_size: int) -> list[SectionPlan]:
        """The sections of a video in generation order."""
        raise NotImplementedError

    def context_slices(self) -> tuple[slice, slice, slice]:
        """Where the 1x, 2x and 4x context latents sit in the history's time axis."""
        raise NotImplementedError

    def start_history(self, empty: torch.Tensor, start_latent: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The history before the first section (from `empty` zeros), and how many latents of it are video."""
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

    def plan_sections(self, num_sections: int, latent_window_size: int) -> list[SectionPlan]:
        return planner.inverted_sections(num_sections, latent_window_size)

    def context_slices(self) -> tuple[slice, slice, slice]:
        # Newest at the front; the zero frames of the empty history stay at the tail.
        return slice(0, 1), slice(1, 3), slice(3, HISTORY_FRAMES)

    def start_history(self, empty: torch.Tensor, start_latent: torch.Tensor) -> tuple[torch.Tensor, int]:
        return empty, 0

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

    def plan_sections(self, num_sections: int, latent_window_size: int) -> list[SectionPlan]:
        return planner.forward_sections(num_sections, latent_window_size)

    def context_slices(self) -> tuple[slice, slice, slice]:
        return slice(-1, None), slice(-3, -1), slice(-HISTORY_FRAMES, -3)

    def start_history(self, empty: torch.Tensor, start_latent: torch.Tensor) -> tuple[torch.Tensor, int]:
        return torch.cat([empty, start_latent], dim=2), 1

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
