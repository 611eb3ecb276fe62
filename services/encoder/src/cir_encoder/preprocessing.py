"""Image preprocessing for the CLIP image encoder (method.md 2.4)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PIL import Image

TARGETPAD = "targetpad"
MODEL_DEFAULT = "model_default"
PREPROCESSING_CHOICES = (TARGETPAD, MODEL_DEFAULT)


def pad_to_target_ratio(image: Image.Image, target_ratio: float) -> Image.Image:
    """CVSI's "target pad": an image longer than `target_ratio` : 1 gets black bars on its short sides.

    The bars bring the long:short ratio down to `target_ratio`, so the center crop that follows keeps
    most of the image instead of cutting the ends off. Images already within the ratio are untouched.
    """
    width, height = image.size
    long_side, short_side = max(width, height), min(width, height)
    if long_side / short_side < target_ratio:
        return image
    padded_long = long_side / target_ratio
    # Truncation matches the published preprocessing, which pads by int(...) on each side.
    pad_x = max(int((padded_long - width) / 2), 0)
    pad_y = max(int((padded_long - height) / 2), 0)
    canvas = Image.new(image.mode, (width + 2 * pad_x, height + 2 * pad_y), 0)
    canvas.paste(image, (pad_x, pad_y))
    return canvas


def build_image_transform(
    kind: str, model_transform: Callable[[Image.Image], Any], target_ratio: float
) -> Callable[[Image.Image], Any]:
    """The tensor transform for `kind`. targetpad = pad, then the model's own resize/crop/normalise."""
    if kind == MODEL_DEFAULT:
        return model_transform
    if kind == TARGETPAD:
        return lambda image: model_transform(pad_to_target_ratio(image, target_ratio))
    raise ValueError(f"unknown preprocessing {kind!r}; choose one of {', '.join(PREPROCESSING_CHOICES)}")
