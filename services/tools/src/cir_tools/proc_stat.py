"""What Linux's /proc says of processes: their session, and the CPU time they have used (how benchmarks tell
which service a GPU process belongs to and where a request's CPU goes).

CPU counts the user and system time of live processes only (a child that has exited and been reaped no
longer shows), which is what a benchmark that reads before and after a run of requests needs. The local suite
starts each service in a session of its own, so a service's session holds it and whatever it started.
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


def session_of(pid: int) -> int | None:
    """The session id of a process; None when it is gone or /proc is not there."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[3])


def process_cpu_s(pid: int) -> float:
    """CPU seconds one process has used so far (0.0 when it is gone or /proc is not there)."""
    fields = _stat_fields(pid)
    return 0.0 if fields is None else _ticks(fields) / _CLOCK_TICKS


def session_cpu_s(sid: int) -> float:
    """CPU seconds the live processes of session `sid` have used so far (a service and its engine workers)."""
    if not _PROC.is_dir():
        return 0.0
    ticks = 0
    for entry in os.scandir(_PROC):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(entry.name)
        if fields is not None and int(fields[3]) == sid:
            ticks += _ticks(fields)
    return ticks / _CLOCK_TICKS
