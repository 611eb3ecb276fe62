"""Writes the sample gallery that ships with the repository (samples/gallery/*.png).

Synthetic, so freely usable: every combination of shape, colour and background, drawn with Pillow.
Re-running it produces byte-identical files.
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


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for shape, colour, background in itertools.product(SHAPES, COLOURS, BACKGROUNDS):
        image = draw(shape, COLOURS[colour], BACKGROUNDS[background])
        image.save(out / f"{colour}-{shape}-{background}.png", optimize=True)


if __name__ == "__main__":
    main(
        Path(sys.argv[1])
        if len(sys.argv) > 1
        else Path(__file__).resolve().parents[1] / "samples" / "gallery"
    )
