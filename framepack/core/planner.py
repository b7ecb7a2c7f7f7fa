"""Section planning for both FramePack variants: pure functions of the request's numbers (docs/ALGORITHM.md §6).

A video is generated in sections of `latent_window_size` (lws) latent frames. The "original" variant generates
them in reverse video order (inverted anti-drifting: the end first, each new section prepended to the history);
"f1" generates forwards (each section appended); `variants.py` holds what depends on that direction. Every
section sees the start latent and a fixed-size context of 1 + 2 + 16 history latents, embedded at 1x, 2x and
4x compression; only RoPE time indices tell the model where each piece sits.
"""

from __future__ import annotations

from dataclasses import dataclass

VIDEO_FPS = 30
LATENT_FRAMES_TO_PIXELS = 4  # the VAE's temporal compression
HISTORY_1X, HISTORY_2X, HISTORY_4X = 1, 2, 16
HISTORY_FRAMES = HISTORY_1X + HISTORY_2X + HISTORY_4X

# (height, width) buckets of the reference's 640 family.
BUCKETS_640 = (
    (416, 960),
    (448, 864),
    (480, 832),
    (512, 768),
    (544, 704),
    (576, 672),
    (608, 640),
    (640, 608),
    (672, 576),
    (704, 544),
    (768, 512),
    (832, 480),
    (864, 448),
    (960, 416),
)


def bucket_table(resolution: int = 640) -> tuple[tuple[int, int], ...]:
    """Buckets of a resolution family: the 640 table exactly, other families scaled to multiples of 16."""
    if resolution == 640:
        return BUCKETS_640
    scale = resolution / 640
    return tuple((max(16, round(h * scale / 16) * 16), max(16, round(w * scale / 16) * 16)) for h, w in BUCKETS_640)


def nearest_bucket(height: int, width: int, resolution: int = 640) -> tuple[int, int]:
    """The bucket minimising |H * bw - W * bh|; ties go to the later table entry, as in the reference."""
    best, best_metric = None, float("inf")
    for bucket_h, bucket_w in bucket_table(resolution):
        metric = abs(height * bucket_w - width * bucket_h)
        if metric <= best_metric:
            best, best_metric = (bucket_h, bucket_w), metric
    return best


def output_size(image_height: int, image_width: int, resolution: int, width: int, height: int) -> tuple[int, int]:
    """(height, width) of the video: explicit width/height when given, else the nearest bucket."""
    if width and height:
        return height, width
    return nearest_bucket(image_height, image_width, resolution)


def section_count(total_seconds: float, latent_window_size: int) -> int:
    """Number of sections: Python's round (banker's rounding: 2.5 -> 2), at least 1."""
    return int(max(round(total_seconds * VIDEO_FPS / (latent_window_size * LATENT_FRAMES_TO_PIXELS)), 1))


def latent_paddings(num_sections: int) -> list[int]:
    """Original variant's padding per generated section: N-1, ..., 0, or 3, 2, ..., 2, 1, 0 above four sections.

    The padding (in windows) is the RoPE gap between the start frame and the section being generated; the
    reference caps it at 3 then repeats 2 because that "looks better" than the true distance.
    """
    if num_sections > 4:
        return [3] + [2] * (num_sections - 3) + [1, 0]
    return list(reversed(range(num_sections)))


def total_latent_frames(num_sections: int, latent_window_size: int) -> int:
    """Latent frames of the finished video: every section's window plus the start latent."""
    return num_sections * latent_window_size + 1


def pixel_frames(latent_frames: int) -> int:
    """Frames the causal VAE decodes from `latent_frames` latents: the first latent gives one frame, others 4."""
    return LATENT_FRAMES_TO_PIXELS * (latent_frames - 1) + 1


def overlap_frames(latent_window_size: int) -> int:
    """Pixel frames cross-faded between consecutive decoded sections (soft append)."""
    return latent_window_size * LATENT_FRAMES_TO_PIXELS - 3


@dataclass(frozen=True)
class SectionPlan:
    """Everything about one section that does not depend on tensors.

    Indices are RoPE time positions fed to the transformer: `latent_indices` (lws) for the noisy window,
    `clean_latent_indices` for [start latent, 1x history] (2; the original variant continuing a video puts more
    of the video's latents before its start latent), then 2 and 16 positions for the 2x and 4x history.
    `decode_latents` is how many latents to decode after this section (None: every latent generated so far),
    from the newest end of the history.
    """

    generation_index: int
    video_index: int
    is_first: bool
    is_last: bool
    latent_padding: int | None
    latent_indices: tuple[int, ...]
    clean_latent_indices: tuple[int, ...]
    clean_latent_2x_indices: tuple[int, ...]
    clean_latent_4x_indices: tuple[int, ...]
    decode_latents: int | None


def _split(values: range, sizes: list[int]) -> list[tuple[int, ...]]:
    parts, start = [], 0
    for size in sizes:
        parts.append(tuple(values[start : start + size]))
        start += size
    return parts


def _original_section(index: int, num_sections: int, padding: int, lws: int, start_latents: int) -> SectionPlan:
    padding_size = padding * lws
    sizes = [start_latents, padding_size, lws, HISTORY_1X, HISTORY_2X, HISTORY_4X]
    pre, _blank, latent, post, two_x, four_x = _split(range(sum(sizes)), sizes)
    is_last = padding == 0
    decode = None if index == 0 else 2 * lws + (1 if is_last else 0)
    return SectionPlan(
        generation_index=index,
        video_index=num_sections - 1 - index,
        is_first=index == 0,
        is_last=is_last,
        latent_padding=padding,
        latent_indices=latent,
        clean_latent_indices=(*pre, post[0]),
        clean_latent_2x_indices=two_x,
        clean_latent_4x_indices=four_x,
        decode_latents=decode,
    )


def _f1_section(index: int, num_sections: int, lws: int) -> SectionPlan:
    sizes = [1, HISTORY_4X, HISTORY_2X, HISTORY_1X, lws]
    start, four_x, two_x, one_x, latent = _split(range(sum(sizes)), sizes)
    return SectionPlan(
        generation_index=index,
        video_index=index,
        is_first=index == 0,
        is_last=index == num_sections - 1,
        latent_padding=None,
        latent_indices=latent,
        clean_latent_indices=(start[0], one_x[0]),
        clean_latent_2x_indices=two_x,
        clean_latent_4x_indices=four_x,
        decode_latents=None if index == 0 else 2 * lws,
    )


def inverted_sections(num_sections: int, latent_window_size: int, start_latents: int = 1) -> list[SectionPlan]:
    """The original variant's sections in generation order: the end of the video first.

    `start_latents` clean latents lead the layout (time indices 0 .. start_latents - 1): the start latent, and
    before it, when a video is continued, that many - 1 of the video's last latents (FP-Studio's "Video" model).
    """
    return [
        _original_section(i, num_sections, padding, latent_window_size, start_latents)
        for i, padding in enumerate(latent_paddings(num_sections))
    ]


def forward_sections(num_sections: int, latent_window_size: int) -> list[SectionPlan]:
    """F1's sections in generation order: the start of the video first."""
    return [_f1_section(i, num_sections, latent_window_size) for i in range(num_sections)]
