"""Draw a scene as an RGB image: a textured background and each object centred in its horizontal slot.

Drawing happens at four times the requested size and is then downscaled, which anti-aliases the edges the
same way on every machine. `variant` 0 is the exact layout; other variants move and scale each object a little
(from a generator seeded by the scene and the variant), so one semantic scene has several distinct renderings.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from cir_tools.world.scene import BACKGROUNDS, COLOURS, POSITIONS, Scene, WorldObject

__all__ = ["RenderStyle", "render"]


@dataclass(frozen=True)
class RenderStyle:
    """Geometry as fractions of the image side."""

    large_radius: float = 0.15
    small_radius: float = 0.09
    centre_height: float = 0.5
    # Per-variant jitter bounds: small enough that a large object stays inside its slot.
    jitter_x: float = 0.02
    jitter_y: float = 0.1
    jitter_scale: float = 0.08
    stripe_period: float = 0.125
    dot_period: float = 0.125
    dot_radius: float = 0.025
    # How far the texture's pattern shade moves from the background colour (towards white or black).
    pattern_contrast: float = 0.3
    supersample: int = 4


DEFAULT_STYLE = RenderStyle()


def render(scene: Scene, size: int = 64, variant: int = 0, style: RenderStyle = DEFAULT_STYLE) -> Image.Image:
    """The scene as a `size` x `size` RGB image; the same arguments always give the same pixels."""
    if size < 8:
        raise ValueError(f"image size must be at least 8 pixels, got {size}")
    canvas_size = size * style.supersample
    background = BACKGROUNDS[scene.background]
    canvas = Image.new("RGB", (canvas_size, canvas_size), background)
    draw = ImageDraw.Draw(canvas)
    _draw_texture(draw, scene.texture, background, canvas_size, style)
    jitter = random.Random(f"{scene!r}/{variant}") if variant else None
    for item in scene.objects:
        _draw_object(draw, item, canvas_size, style, jitter)
    return canvas.resize((size, size), Image.Resampling.LANCZOS)


def _pattern_shade(colour: tuple[int, int, int], contrast: float) -> tuple[int, int, int]:
    # Dark backgrounds get a lighter pattern and light ones a darker one, so the texture is visible on all.
    luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    towards = 255 if luminance < 128 else 0
    return tuple(round(channel + (towards - channel) * contrast) for channel in colour)  # type: ignore[return-value]


def _draw_texture(
    draw: ImageDraw.ImageDraw, texture: str, background: tuple[int, int, int], side: int, style: RenderStyle
) -> None:
    shade = _pattern_shade(background, style.pattern_contrast)
    if texture == "striped":
        period = max(2, round(side * style.stripe_period))
        for start in range(0, side, period):
            draw.rectangle((start, 0, start + period // 2 - 1, side), fill=shade)
    elif texture == "dotted":
        period = side * style.dot_period
        radius = side * style.dot_radius
        steps = round(1 / style.dot_period)
        for row in range(steps):
            for column in range(steps):
                x = (column + 0.5) * period
                y = (row + 0.5) * period
                draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=shade)


def _draw_object(
    draw: ImageDraw.ImageDraw,
    item: WorldObject,
    side: int,
    style: RenderStyle,
    jitter: random.Random | None,
) -> None:
    slot = POSITIONS.index(item.position)
    centre_x = (slot + 0.5) / len(POSITIONS)
    centre_y = style.centre_height
    radius = style.large_radius if item.size == "large" else style.small_radius
    if jitter is not None:
        centre_x += jitter.uniform(-style.jitter_x, style.jitter_x)
        centre_y += jitter.uniform(-style.jitter_y, style.jitter_y)
        radius *= 1 + jitter.uniform(-style.jitter_scale, style.jitter_scale)
    x, y, r = centre_x * side, centre_y * side, radius * side
    fill = COLOURS[item.colour]
    if item.shape == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif item.shape == "square":
        half = r * 0.85  # about the circle's area, so sizes read the same across shapes
        draw.rectangle((x - half, y - half, x + half, y + half), fill=fill)
    elif item.shape == "triangle":
        draw.polygon([(x, y - r), (x - r, y + r * 0.8), (x + r, y + r * 0.8)], fill=fill)
    elif item.shape == "star":
        draw.polygon(_star_points(x, y, r * 1.05, r * 0.45), fill=fill)
    else:  # the scene validates shapes, so this is a vocabulary entry without a drawing
        raise ValueError(f"no drawing for shape {item.shape!r}")


def _star_points(x: float, y: float, outer: float, inner: float) -> list[tuple[float, float]]:
    points = []
    for corner in range(10):
        angle = -math.pi / 2 + corner * math.pi / 5
        reach = outer if corner % 2 == 0 else inner
        points.append((x + reach * math.cos(angle), y + reach * math.sin(angle)))
    return points
