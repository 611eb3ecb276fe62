"""SIGTERM as an orderly exit for long-running tools (the benches).

Python's default SIGTERM action ends the process at once: `finally` blocks and context managers do not run,
so a bench killed that way leaves the suite it started (four services and Redis, each its own process group)
running. With `exit_on_sigterm()` the signal raises SystemExit in the main thread instead, as Ctrl-C raises
KeyboardInterrupt, and the bench's cleanup stops what it started.
"""

from __future__ import annotations

import signal
from types import FrameType

# 128 + SIGTERM: the status a shell reports for a process that SIGTERM ended.
SIGTERM_EXIT_STATUS = 128 + signal.SIGTERM


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(SIGTERM_EXIT_STATUS)


def exit_on_sigterm() -> None:
    """From now on, SIGTERM raises SystemExit(143) in the main thread (call it from the main thread)."""
    signal.signal(signal.SIGTERM, _raise_exit)
