"""Images the benchmarks send: random pixels, so no two searches share a cache entry unless meant to.

Imported by the bench scripts as a sibling module (`python bench/<script>.py` puts bench/ on the path).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def random_png(rng: np.random.Generator, size: int = 64) -> bytes:
    """A size x size PNG of random pixels drawn from `rng`."""
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def random_gallery(folder: Path, count: int, seed: int, size: int = 80) -> Path:
    """`count` random PNGs (g000.png, ...) in `folder`, the same for the same seed."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        (folder / f"g{index:03d}.png").write_bytes(random_png(rng, size))
    return folder
