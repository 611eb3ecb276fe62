"""The world's vocabulary (as data) and its scenes: one to three objects in horizontal slots on a background.

The vocabulary is deliberately small and its colours far apart, so that tiny models trained for a few minutes
on CPU can tell every value apart at 32x32 pixels. Object colours and background colours are disjoint
palettes, so an object never has its background's colour whatever an edit does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "MAX_OBJECTS",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "TEXTURES",
    "Scene",
    "WorldObject",
    "sample_scene",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")

# Object colours: saturated and far apart in RGB (and from every background colour).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (40, 80, 235),
    "yellow": (245, 220, 40),
    "purple": (150, 50, 200),
    "orange": (250, 135, 20),
}

SIZES: tuple[str, ...] = ("small", "large")

# Left to right; a scene has at most one object per slot, so a position names an object uniquely.
POSITIONS: tuple[str, ...] = ("left", "center", "right")

# Background colours: neutral, none of them close to an object colour.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128),
    "black": (20, 20, 20),
    "white": (240, 240, 240),
    "brown": (105, 70, 40),
}

TEXTURES: tuple[str, ...] = ("plain", "striped", "dotted")

MAX_OBJECTS = len(POSITIONS)

# How many objects a sampled scene has: two is the most useful (every edit kind applies), so it is favoured.
_OBJECT_COUNT_WEIGHTS: tuple[tuple[int, float], ...] = ((1, 0.3), (2, 0.4), (3, 0.3))


@dataclass(frozen=True)
class WorldObject:
    """One shape in a scene; `position` is its slot ("left", "center" or "right")."""

    shape: str
    colour: str
    size: str
    position: str

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}")
        if self.colour not in COLOURS:
            raise ValueError(f"unknown object colour {self.colour!r}")
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}")
        if self.position not in POSITIONS:
            raise ValueError(f"unknown position {self.position!r}")


@dataclass(frozen=True)
class Scene:
    """A scene: its objects left to right (one per slot at most) on a background colour with a texture.

    Build scenes with `Scene.of`, which sorts the objects into slot order, so that equal scenes compare equal.
    """

    objects: tuple[WorldObject, ...]
    background: str
    texture: str

    def __post_init__(self) -> None:
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise ValueError(f"a scene has 1 to {MAX_OBJECTS} objects, got {len(self.objects)}")
        slots = [POSITIONS.index(item.position) for item in self.objects]
        if slots != sorted(set(slots)):
            raise ValueError("objects must occupy distinct slots, listed left to right (use Scene.of)")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"unknown background colour {self.background!r}")
        if self.texture not in TEXTURES:
            raise ValueError(f"unknown texture {self.texture!r}")

    @classmethod
    def of(cls, objects: tuple[WorldObject, ...] | list[WorldObject], background: str, texture: str) -> Scene:
        ordered = tuple(sorted(objects, key=lambda item: POSITIONS.index(item.position)))
        return cls(ordered, background, texture)

    def at(self, position: str) -> WorldObject | None:
        """The object in slot `position`, or None when the slot is empty."""
        for item in self.objects:
            if item.position == position:
                return item
        return None

    def free_positions(self) -> tuple[str, ...]:
        taken = {item.position for item in self.objects}
        return tuple(position for position in POSITIONS if position not in taken)


def sample_scene(rng: random.Random) -> Scene:
    """A random scene; every draw comes from `rng`, so a seeded generator gives the same scene every time."""
    counts = [count for count, _ in _OBJECT_COUNT_WEIGHTS]
    weights = [weight for _, weight in _OBJECT_COUNT_WEIGHTS]
    count = rng.choices(counts, weights=weights)[0]
    positions = rng.sample(POSITIONS, count)
    objects = [
        WorldObject(
            shape=rng.choice(SHAPES),
            colour=rng.choice(tuple(COLOURS)),
            size=rng.choice(SIZES),
            position=position,
        )
        for position in positions
    ]
    return Scene.of(objects, background=rng.choice(tuple(BACKGROUNDS)), texture=rng.choice(TEXTURES))
