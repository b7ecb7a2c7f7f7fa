"""The HunyuanVideo VAE's framewise decode, tile by tile, so that a tile two sections share is decoded once.

diffusers decodes more than 4 latents in temporal tiles (docs/ALGORITHM.md §7.1): tiles of 5 latents every 3, each
decoded on its own, neighbours cross-faded over 4 pixel frames. A tile's pixels depend only on its own latents.
A section's decode window is its new latents plus the previous section's (§7.2). With a latent window of 9, a
multiple of the stride, two of the previous decode's tiles come back with the same latents; decoding them again
gives the same pixels bit for bit (same inputs, same kernels), so `TileDecoder` keeps them. Tiles that lie
wholly in latents known before a section samples can also be decoded ahead (`TileDecoder.prefetch`), in the
background while it samples; for the last section that shortens the one decode nothing can hide.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.planner import pixel_frames


@dataclass(frozen=True)
class TemporalTiling:
    """diffusers' framewise decoding: `tile_latents` latents every `stride_latents`, cross-faded over
    `blend_frames` pixel frames; each tile after the first contributes `stride_frames` frames."""

    tile_latents: int
    stride_latents: int
    blend_frames: int
    stride_frames: int

    @classmethod
    def of(cls, vae) -> TemporalTiling | None:
        """The tiling `vae.decode` uses (5, 3, 4, 12 by default); None when framewise decoding is off."""
        if not vae.use_framewise_decoding:
            return None
        ratio = vae.temporal_compression_ratio
        return cls(
            tile_latents=vae.tile_sample_min_num_frames // ratio + 1,
            stride_latents=vae.tile_sample_stride_num_frames // ratio,
            blend_frames=vae.tile_sample_min_num_frames - vae.tile_sample_stride_num_frames,
            stride_frames=vae.tile_sample_stride_num_frames,
        )


def tile_spans(num_latents: int, tiling: TemporalTiling | None) -> list[tuple[int, int]]:
    """The [start, stop) latent range of each tile; one span when the decode is not tiled.

    diffusers tiles only above `tile_latents - 1` latents; the last tiles may be shorter, down to one latent.
    """
    if tiling is None or num_latents < tiling.tile_latents:
        return [(0, num_latents)]
    return [
        (start, min(start + tiling.tile_latents, num_latents)) for start in range(0, num_latents, tiling.stride_latents)
    ]


def cross_fade(previous: torch.Tensor, current: torch.Tensor, frames: int) -> torch.Tensor:
    """`current` (B, C, T, H, W) with its first n frames faded in from `previous`'s last n (out of place).

    n = min(frames, both lengths); frame x is previous[x - n] * (1 - x/n) + current[x] * (x/n).
    """
    count = min(previous.shape[2], current.shape[2], frames)
    if count == 0:
        return current
    faded = current.clone()
    for x in range(count):
        # One frame at a time with Python-float weights, as diffusers computes it: a float16 weight tensor would
        # round 1/3 and 2/3 differently.
        faded[:, :, x] = previous[:, :, x - count] * (1 - x / count) + current[:, :, x] * (x / count)
    return faded


def join_tiles(tiles: list[torch.Tensor], tiling: TemporalTiling | None, num_latents: int) -> torch.Tensor:
    """Each tile's decoded pixels (B, C, 4n - 3, H, W), in `tile_spans` order -> (B, C, 4T - 3, H, W).

    A later tile drops its first frame: a causal decode turns its first latent into one frame, the moment its
    predecessor already shows, so the rest lines up with the predecessor's last frames, which it fades in from.
    """
    if len(tiles) == 1:
        return tiles[0]
    kept, previous = [], None
    for index, pixels in enumerate(tiles):
        if index:
            pixels = cross_fade(previous, pixels[:, :, 1:], tiling.blend_frames)
        kept.append(pixels[:, :, : tiling.stride_frames + (0 if index else 1)])
        previous = pixels
    return torch.cat(kept, dim=2)[:, :, : pixel_frames(num_latents)]


class TileDecoder:
    """Decodes (1, 16, T, h, w) latents (as sampled) as `vae.decode` does, keeping the last decode's tiles.

    Tiles are found again by their latents (compared exactly), so any two decodes may share them. The kept
    pixels stay where the VAE decodes, between decodes too: 17 frames at 544x704 take 39 MB per tile, up to 7
    tiles (the working set's fixed part holds them; a 4 GiB GPU decoded so). The VAE's weights must be on its
    execution device while `decode` and `prefetch` run: resident, or inside a `streaming.weights_on_device` visit.
    `decoded`, `reused` and `prefetched` count tiles.
    """

    def __init__(self, vae):
        self.vae = vae
        self.tiling = TemporalTiling.of(vae)
        self._kept: list[tuple[torch.Tensor, torch.Tensor]] = []  # (tile latents, its untrimmed pixels)
        self.decoded = self.reused = self.prefetched = 0

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(1, 16, T, h, w) -> (1, 3, 4T - 3, 8h, 8w) pixels on the VAE's device, equal to `vae.decode`'s."""
        tiles = [latents[:, :, start:stop] for start, stop in tile_spans(latents.shape[2], self.tiling)]
        pixels = []
        for tile in tiles:
            found = self._find(tile)
            if found is None:
                found = self._decode_tile(tile)
            else:
                self.reused += 1
            pixels.append(found)
        self._kept = list(zip(tiles, pixels))
        return join_tiles(pixels, self.tiling, latents.shape[2])

    @torch.no_grad()
    def prefetch(self, window_latents: int, offset: int, known: torch.Tensor) -> None:
        """Decode ahead the tiles of a coming decode of `window_latents` latents that lie wholly in `known`.

        `known` (1, 16, K, h, w) are the window's latents [offset, offset + K), already generated.
        """
        for start, stop in tile_spans(window_latents, self.tiling):
            if start >= offset and stop <= offset + known.shape[2]:
                tile = known[:, :, start - offset : stop - offset]
                if self._find(tile) is None:
                    self._kept.append((tile, self._decode_tile(tile)))
                    self.prefetched += 1

    def clear(self) -> None:
        """Forget the kept tiles (frees their memory)."""
        self._kept = []

    def _find(self, tile: torch.Tensor) -> torch.Tensor | None:
        for latents, pixels in self._kept:
            if latents.shape == tile.shape and torch.equal(latents, tile):
                return pixels
        return None

    def _decode_tile(self, tile: torch.Tensor) -> torch.Tensor:
        """One tile, as diffusers decodes it: spatially tiled where the VAE's tiling is on and the tile is large."""
        vae = self.vae
        self.decoded += 1
        z = (tile / vae.config.scaling_factor).to(device=vae.device, dtype=vae.dtype)
        min_height = vae.tile_sample_min_height // vae.spatial_compression_ratio
        min_width = vae.tile_sample_min_width // vae.spatial_compression_ratio
        if vae.use_tiling and (z.shape[-1] > min_width or z.shape[-2] > min_height):
            return vae.tiled_decode(z).sample
        return vae.decoder(vae.post_quant_conv(z))
