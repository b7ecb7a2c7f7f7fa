"""Bucket rule, resize and crop, prompt template crop point and padding (docs/ALGORITHM.md §3)."""

import numpy as np
import pytest
import torch
from helpers.media import png_header
from helpers.paths import START_IMAGE

from framepack.core import planner
from framepack.core.request import check_image_file
from framepack.errors import InvalidInput
from framepack.runtime import conditioning
from framepack.runtime.conditioning import load_rgb_image


@pytest.mark.parametrize(
    ("height", "width", "bucket"),
    [
        (512, 512, (640, 608)),
        (1080, 1920, (480, 832)),
        (768, 1024, (544, 704)),
        (1920, 1080, (832, 480)),
        (100, 140, (512, 768)),
    ],
)
def test_nearest_bucket(height, width, bucket):
    # Square inputs tie between 608x640 and 640x608; the later entry wins.
    assert planner.nearest_bucket(height, width) == bucket


def test_bucket_table_640_is_the_reference_table():
    table = planner.bucket_table(640)
    assert len(table) == 14 and table[0] == (416, 960) and table[-1] == (960, 416)
    assert all(h % 16 == 0 and w % 16 == 0 for h, w in planner.bucket_table(480))


def test_explicit_size_overrides_bucket():
    assert planner.output_size(100, 140, 640, 96, 64) == (64, 96)
    assert planner.output_size(100, 140, 640, 0, 0) == (512, 768)


def test_resize_and_center_crop():
    image = conditioning.load_rgb_image(START_IMAGE)
    assert image.shape == (100, 140, 3) and image.dtype == np.uint8
    cropped = conditioning.resize_and_center_crop(image, 96, 64)
    assert cropped.shape == (64, 96, 3)
    assert conditioning.resize_and_center_crop(image, 140, 100) is image


def test_template_crop_point_with_tiny_tokenizer(tiny_models):
    assert conditioning.template_crop_start(tiny_models.tokenizer) == 191


def test_prompt_embeds_keep_only_prompt_tokens(tiny_models):
    encoders = (tiny_models.text_encoder, tiny_models.text_encoder_2, tiny_models.tokenizer, tiny_models.tokenizer_2)
    crop = conditioning.template_crop_start(tiny_models.tokenizer)
    short = conditioning.encode_prompt("a cat", *encoders, crop)
    longer = conditioning.encode_prompt("a cat walks along the beach", *encoders, crop)
    assert short.embeds.shape[1] < longer.embeds.shape[1] <= conditioning.MAX_PROMPT_TOKENS
    assert short.pooled.shape == (1, tiny_models.text_encoder_2.config.hidden_size)
    # Very long prompts are truncated to 256 tokens.
    huge = conditioning.encode_prompt("word " * 600, *encoders, crop)
    assert huge.embeds.shape[1] == conditioning.MAX_PROMPT_TOKENS


def test_pad_prompt_embeds_mask():
    embeds = torch.randn(1, 7, 16)
    padded, mask = conditioning.pad_prompt_embeds(embeds)
    assert padded.shape == (1, 512, 16) and mask.shape == (1, 512)
    assert mask[0, :7].all() and not mask[0, 7:].any()
    assert torch.equal(padded[:, :7], embeds) and not padded[:, 7:].any()


def test_images_are_decoded_once_and_a_bad_body_names_its_input(tmp_path):
    # Header and chunk structure are sound, so the request's check (which decodes nothing) passes; the pixels
    # are missing, which only the one decode, at use, finds.
    hollow = tmp_path / "hollow.png"
    hollow.write_bytes(png_header(64, 48))
    check_image_file("end_image", hollow)
    with pytest.raises(InvalidInput, match="'end_image': could not read hollow.png as an image"):
        load_rgb_image(hollow, "end_image")
