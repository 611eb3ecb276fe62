"""The sample gallery of the demo: every combination of shape, colour and background, drawn with Pillow.

Synthetic, so freely usable, and drawn on the spot, so `cir demo` works from an installed package as well
as from a checkout. The repository's `samples/gallery/*.png` are this module's output
(`python -m cir_tools.sample_gallery samples/gallery`); re-running it produces the same images.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (214, 39, 40), "green": (44, 160, 44), "blue": (31, 119, 180), "yellow": (238, 200, 30)}
BACKGROUNDS = {"light": (245, 245, 240), "dark": (40, 40, 48)}
SHAPES = ("circle", "square", "triangle")
SIZE = 128


def draw(shape: str, colour: tuple[int, int, int], background: tuple[int, int, int]) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), background)
    pen = ImageDraw.Draw(image)
    box = (28, 28, SIZE - 28, SIZE - 28)
    if shape == "circle":
        pen.ellipse(box, fill=colour)
    elif shape == "square":
        pen.rectangle(box, fill=colour)
    else:
        pen.polygon([(SIZE // 2, 24), (SIZE - 24, SIZE - 28), (24, SIZE - 28)], fill=colour)
    return image


def write_sample_gallery(out: Path) -> Path:
    """Write the 24 images into `out` (created if missing); return `out`."""
    out.mkdir(parents=True, exist_ok=True)
    for shape, colour, background in itertools.product(SHAPES, COLOURS, BACKGROUNDS):
        image = draw(shape, COLOURS[colour], BACKGROUNDS[background])
        image.save(out / f"{colour}-{shape}-{background}.png", optimize=True)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m cir_tools.sample_gallery OUT_DIR")
    write_sample_gallery(Path(sys.argv[1]))
