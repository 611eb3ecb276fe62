"""How long each query stage has recently taken in this process, to shed work a deadline cannot cover.

A search whose remaining time cannot cover a stage gains nothing from starting it: the work is thrown
away when the deadline passes, and it takes capacity from searches that could still finish. Each stage
name (the same names as the response's `timings`) keeps its last `window` observed durations; its
estimate is the `quantile` of them. A window and a quantile rather than a mean: the model services cache
their answers by content, so a stage's durations are bimodal (a cache hit takes milliseconds, a miss the
whole generation) and a few stragglers must not move the estimate far. A stage never observed has no
estimate, and is run (cold start).

Single-threaded by design: the retriever's event loop is the only caller.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from cir_retriever.settings import check_stage_estimates


@dataclass(frozen=True)
class Shortfall:
    """A stage that the time left cannot cover, by the estimates."""

    stage: str
    stage_ms: float  # the stage's own estimate
    after_ms: float  # the estimates of the stages that must still follow it
    left_ms: float  # what the request's deadline leaves now

    @property
    def needed_ms(self) -> float:
        return self.stage_ms + self.after_ms

    def describe(self) -> str:
        after = f" + {self.after_ms:.0f} ms for the stages after it" if self.after_ms else ""
        return (
            f"estimated {self.needed_ms:.0f} ms ({self.stage} {self.stage_ms:.0f} ms{after}), "
            f"{max(self.left_ms, 0.0):.0f} ms left"
        )


class StageEstimates:
    def __init__(self, window: int, quantile: float) -> None:
        check_stage_estimates(window, quantile)
        self._window = window
        self._quantile = quantile
        self._observed: dict[str, deque[float]] = {}
        # Each search asks for several estimates and adds a few observations: an estimate is computed once
        # per change of its window, not at every question.
        self._estimates: dict[str, float] = {}

    def observe(self, stage: str, milliseconds: float) -> None:
        recent = self._observed.get(stage)
        if recent is None:
            recent = self._observed[stage] = deque(maxlen=self._window)
        recent.append(max(float(milliseconds), 0.0))
        self._estimates.pop(stage, None)

    def estimate_ms(self, stage: str) -> float | None:
        """The stage's estimated duration; None before its first observation."""
        estimate = self._estimates.get(stage)
        if estimate is None:
            recent = self._observed.get(stage)
            if not recent:
                return None
            estimate = self._estimates[stage] = quantile(sorted(recent), self._quantile)
        return estimate

    def total_ms(self, stages: Iterable[str]) -> float:
        """The estimates of `stages` one after another; a stage without an estimate counts as 0."""
        return sum(self.estimate_ms(stage) or 0.0 for stage in stages)

    def shortfall(self, stage: str, after: Iterable[str], left_s: float) -> Shortfall | None:
        """Why `stage` (then `after`) cannot fit the `left_s` seconds left; None when it may run."""
        own = self.estimate_ms(stage)
        if own is None:
            return None  # never observed: run it, and learn
        after_ms = self.total_ms(after)
        left_ms = left_s * 1000.0
        if own + after_ms <= left_ms:
            return None
        return Shortfall(stage, own, after_ms, left_ms)

    def snapshot(self) -> dict[str, float]:
        """Every stage's current estimate (ms)."""
        return {stage: value for stage in self._observed if (value := self.estimate_ms(stage)) is not None}


def quantile(ordered: list[float], q: float) -> float:
    """The `q` quantile of the ascending, non-empty `ordered`, interpolated linearly between the two closest
    ranks (numpy's default method). Plain Python: a window is small, numpy's set-up per call is not."""
    position = (len(ordered) - 1) * q
    below = int(position)
    if below + 1 >= len(ordered):
        return ordered[-1]
    return ordered[below] + (position - below) * (ordered[below + 1] - ordered[below])
