"""Progress of a training loop: one callback type for every trainer and the bar `cir` draws with it.

A trainer calls `progress(step, total, loss)` after each optimiser step (step counts from 1). The bar
redraws in place on a terminal and prints a line every tenth of the run otherwise (CI logs, pipes), so a
long build shows it is alive without flooding a log.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

Progress = Callable[[int, int, float], None]

_WIDTH = 30


class ProgressBar:
    """`progress(step, total, loss)` drawn as `label [#####.....] step/total loss 1.234 12.3s`."""

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.started = time.perf_counter()
        self._last_tenth = -1

    def __call__(self, step: int, total: int, loss: float) -> None:
        total = max(total, 1)
        filled = int(_WIDTH * min(step, total) / total)
        elapsed = time.perf_counter() - self.started
        line = (
            f"{self.label} [{'#' * filled}{'.' * (_WIDTH - filled)}] {step}/{total} "
            f"loss {loss:.4f} {elapsed:.1f}s"
        )
        done = step >= total
        if self.stream.isatty():
            print(line, end="\n" if done else "\r", file=self.stream, flush=True)
            return
        tenth = 10 * step // total
        if tenth != self._last_tenth or done:
            self._last_tenth = tenth
            print(line, file=self.stream, flush=True)


def quiet(step: int, total: int, loss: float) -> None:
    """A progress callback that draws nothing (tests, library use)."""
