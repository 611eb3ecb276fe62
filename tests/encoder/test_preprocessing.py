"""CVSI's target pad: output shape and where the padding goes on tall, wide and square images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cir_encoder.preprocessing import build_image_transform, pad_to_target_ratio


def _white(width: int, height: int) -> Image.Image:
    return Image.new("RGB", (width, height), (255, 255, 255))


@pytest.mark.parametrize(
    ("size", "expected_size", "expected_offset"),
    [
        ((100, 300), (240, 300), (70, 0)),  # tall: 300 / 1.25 = 240 wide, bars left and right
        ((300, 100), (300, 240), (0, 70)),  # wide: bars top and bottom
        ((200, 200), (200, 200), (0, 0)),  # square: untouched
        ((110, 100), (110, 100), (0, 0)),  # ratio 1.1 < 1.25: untouched
        ((125, 100), (125, 100), (0, 0)),  # exactly 1.25: padded to itself
    ],
)
def test_target_pad_geometry(size, expected_size, expected_offset):
    padded = pad_to_target_ratio(_white(*size), 1.25)
    assert padded.size == expected_size
    pixels = np.asarray(padded)
    x0, y0 = expected_offset
    # the original sits at the offset, white; everything outside it is black padding
    assert (pixels[y0 : y0 + size[1], x0 : x0 + size[0]] == 255).all()
    mask = np.ones(pixels.shape[:2], dtype=bool)
    mask[y0 : y0 + size[1], x0 : x0 + size[0]] = False
    assert (pixels[mask] == 0).all()


def test_odd_padding_truncates_like_the_published_code():
    padded = pad_to_target_ratio(_white(101, 300), 1.25)
    assert padded.size == (101 + 2 * int((240 - 101) / 2), 300)


def test_targetpad_keeps_the_ends_a_center_crop_would_cut(tiny_clip):
    wide = Image.new("RGB", (400, 100), (0, 0, 0))
    wide.paste((255, 0, 0), (0, 0, 80, 100))  # a red band at the far left
    targetpad = build_image_transform("targetpad", tiny_clip.preprocess, 1.25)(wide)
    default = build_image_transform("model_default", tiny_clip.preprocess, 1.25)(wide)
    size = tiny_clip.image_size[0]
    assert targetpad.shape == default.shape == (3, size, size)
    # red (high first channel) survives only with target pad
    assert targetpad[0].max() > default[0].max() + 1.0


@pytest.mark.parametrize("size", [(30, 90), (90, 30), (64, 64), (500, 499)])
def test_tensor_shape_for_any_input(tiny_clip, size):
    tensor = build_image_transform("targetpad", tiny_clip.preprocess, 1.25)(_white(*size))
    assert tuple(tensor.shape) == (3, *tiny_clip.image_size)
