"""Image preprocessing for the CLIP image encoder (method.md 2.4)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PIL import Image

from cir_common.errors import InvalidArgument
from cir_common.vocabulary import Preprocessing

# Defaults of the encoder settings max_aspect_ratio and max_image_pixels. Past 20:1 the picture is a sliver
# of the model's input either way (bars around a thin strip, or a center crop of a small part of it), and
# the model's resize of the shorter side to its input size makes a canvas of aspect x size^2 pixels.
DEFAULT_MAX_ASPECT_RATIO = 20.0
DEFAULT_MAX_CANVAS_PIXELS = 50_000_000


def _ratio_text(ratio: float) -> str:
    return f"{ratio:.1f}".removesuffix(".0")


def check_aspect_ratio(
    size: tuple[int, int], max_ratio: float, label: str = "image", setting: str = "max_aspect_ratio"
) -> None:
    """INVALID_ARGUMENT for an image longer than `max_ratio` : 1 (either way), saying what to send instead."""
    width, height = size
    long_side, short_side = max(width, height), max(min(width, height), 1)
    ratio = long_side / short_side
    if ratio > max_ratio:
        limit = _ratio_text(max_ratio)
        raise InvalidArgument(
            f"{label} is {width}x{height}: aspect ratio {_ratio_text(ratio)}:1 is beyond the limit of "
            f"{limit}:1 ({setting}); crop it, or pad it to at most {limit}:1"
        )


def pad_to_target_ratio(
    image: Image.Image, target_ratio: float, max_pixels: int = DEFAULT_MAX_CANVAS_PIXELS
) -> Image.Image:
    """CVSI's "target pad": an image longer than `target_ratio` : 1 gets black bars on its short sides.

    The bars bring the long:short ratio down to `target_ratio`, so the center crop that follows keeps
    most of the image instead of cutting the ends off. Images already within the ratio are untouched.

    The padded canvas never has more than `max_pixels` pixels: an image whose canvas would is first
    scaled down so that it fits (the same picture as padding then resizing, up to interpolation), so a
    small, long image cannot make a huge canvas.
    """
    width, height = image.size
    long_side, short_side = max(width, height), max(min(width, height), 1)
    if long_side / short_side < target_ratio:
        return image
    canvas_pixels = long_side * (long_side / target_ratio)
    if canvas_pixels > max_pixels:
        scale = (max_pixels / canvas_pixels) ** 0.5
        width, height = max(int(width * scale), 1), max(int(height * scale), 1)
        image = image.resize((width, height), Image.Resampling.BICUBIC)
        long_side = max(width, height)
    padded_long = long_side / target_ratio
    # Truncation matches the published preprocessing, which pads by int(...) on each side.
    pad_x = max(int((padded_long - width) / 2), 0)
    pad_y = max(int((padded_long - height) / 2), 0)
    canvas = Image.new(image.mode, (width + 2 * pad_x, height + 2 * pad_y), 0)
    canvas.paste(image, (pad_x, pad_y))
    return canvas


def build_image_transform(
    kind: Preprocessing,
    model_transform: Callable[[Image.Image], Any],
    target_ratio: float,
    *,
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
    max_canvas_pixels: int = DEFAULT_MAX_CANVAS_PIXELS,
) -> Callable[[Image.Image], Any]:
    """The tensor transform for `kind`. targetpad = pad, then the model's own resize/crop/normalise.

    Images beyond `max_aspect_ratio` : 1 are refused (INVALID_ARGUMENT) with either kind: the model's
    resize of the shorter side would otherwise make a canvas of ratio x size^2 pixels.
    """
    if kind == Preprocessing.MODEL_DEFAULT:

        def model_default(image: Image.Image) -> Any:
            check_aspect_ratio(image.size, max_aspect_ratio)
            return model_transform(image)

        return model_default
    if kind == Preprocessing.TARGETPAD:

        def targetpad(image: Image.Image) -> Any:
            check_aspect_ratio(image.size, max_aspect_ratio)
            return model_transform(pad_to_target_ratio(image, target_ratio, max_canvas_pixels))

        return targetpad
    raise ValueError(f"unknown preprocessing {kind!r}; choose one of {', '.join(Preprocessing)}")
