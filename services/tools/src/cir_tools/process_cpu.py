"""CPU time that processes have used, read from Linux's /proc: how benchmarks tell where a request's CPU goes.

Counts the user and system time of live processes only (a child that has exited and been reaped no longer
shows), which is what a benchmark that reads before and after a run of requests needs.
"""

from __future__ import annotations

import os
from pathlib import Path

_PROC = Path("/proc")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: str | int) -> list[str] | None:
    """/proc/PID/stat after the command name (which may hold spaces and parentheses); None once it is gone."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def _ticks(fields: list[str]) -> int:
    return int(fields[11]) + int(fields[12])  # utime, stime


def process_cpu_s(pid: int) -> float:
    """CPU seconds one process has used so far (0.0 when it is gone or /proc is not there)."""
    fields = _stat_fields(pid)
    return 0.0 if fields is None else _ticks(fields) / _CLOCK_TICKS


def group_cpu_s(pgid: int) -> float:
    """CPU seconds the live processes of process group `pgid` have used so far: a service and whatever it
    started (engine workers), since the local suite starts each service in a session of its own."""
    if not _PROC.is_dir():
        return 0.0
    ticks = 0
    for entry in os.scandir(_PROC):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(entry.name)
        if fields is not None and int(fields[2]) == pgid:
            ticks += _ticks(fields)
    return ticks / _CLOCK_TICKS
