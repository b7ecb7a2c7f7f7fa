"""Cheap pictures of latents while they are sampled: a linear map from the 16 latent channels to RGB.

The map is fitted per request by least squares, from the start image's own latent to the start image itself
(downscaled to the latent grid), so it needs no decoder pass and no constants of a particular VAE. Applying it
is one small matrix product per step, far below a transformer pass.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F


def fit_latent_to_rgb(latent: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """A (17, 3) map from [16 latent channels, 1] to RGB in [-1, 1], fitted on one image.

    Args:
        latent: (1, 16, 1, h, w) the image's latent.
        image: (H, W, 3) uint8, the image the latent encodes (H = 8h, W = 8w).
    """
    _, channels, _, height, width = latent.shape
    rgb = image.permute(2, 0, 1)[None].float() / 127.5 - 1.0
    target = F.adaptive_avg_pool2d(rgb, (height, width))[0].reshape(3, -1).T  # (h*w, 3)
    features = latent[0, :, 0].reshape(channels, -1).T.float()  # (h*w, 16)
    features = torch.cat([features, torch.ones(features.shape[0], 1)], dim=1)
    return torch.linalg.lstsq(features, target).solution


def latent_preview(latents: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """The frames of (1, 16, T, h, w) latents side by side as one (h, T*w, 3) uint8 picture."""
    x = latents[0].float().permute(1, 2, 3, 0)  # (T, h, w, 16)
    rgb = x @ projection[:-1].to(x.device) + projection[-1].to(x.device)  # (T, h, w, 3)
    picture = torch.cat(list(rgb), dim=1)  # (h, T*w, 3)
    return ((picture.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


class ThrottledPreview:
    """The sampler's `on_step` hook that makes a preview picture at most every `interval` seconds.

    Give it the generation's recorded tensors first (`record`: it keeps the start image and its latent, and fits
    the map on the first preview); `emit(section, step, picture)` receives each (h, T*w, 3) uint8 picture.
    """

    def __init__(self, emit, interval: float, clock=time.monotonic):
        self.emit, self.interval, self.clock = emit, interval, clock
        self.kept: dict[str, torch.Tensor] = {}
        self.projection: torch.Tensor | None = None
        self.last = float("-inf")

    def record(self, name: str, tensor: torch.Tensor) -> None:
        if name in ("image_cropped_uint8", "start_latent"):
            self.kept[name] = tensor.detach().cpu()

    def __call__(self, section: int, step: int, x0: torch.Tensor) -> None:
        now = self.clock()
        if now - self.last < self.interval or "start_latent" not in self.kept:
            return
        self.last = now
        if self.projection is None:
            self.projection = fit_latent_to_rgb(self.kept["start_latent"], self.kept["image_cropped_uint8"])
        self.emit(section, step, latent_preview(x0, self.projection))
