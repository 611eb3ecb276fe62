"""/proc read: a session's CPU total includes the processes its leader started; a process's session."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from cir_tools.proc_stat import process_cpu_s, session_cpu_s, session_of

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc")

# Burns about 0.3 s of CPU, says how much it used, then waits for stdin to close (so it is alive when read).
_BURN = textwrap.dedent(
    """
    import sys, time
    while time.process_time() < 0.3:
        pass
    print(time.process_time(), flush=True)
    sys.stdin.read()
    """
)
# Starts a burner child (in the leader's session), burns too, and reports both figures.
_LEADER = textwrap.dedent(
    f"""
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", {_BURN!r}], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    child_used = float(child.stdout.readline())
    while time.process_time() < 0.3:
        pass
    print(child.pid, child_used, time.process_time(), flush=True)
    sys.stdin.read()
    child.stdin.close()
    child.wait()
    """
)
TICK_S = 0.01  # /proc counts in clock ticks; allow one per process and a little start-up work


def test_a_sessions_cpu_is_its_leaders_and_its_childrens():
    leader = subprocess.Popen(
        [sys.executable, "-c", _LEADER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert leader.stdout is not None
        child_pid, child_used, leader_used = leader.stdout.readline().split()
        assert session_of(int(child_pid)) == session_of(leader.pid) == leader.pid
        own = process_cpu_s(leader.pid)
        child = process_cpu_s(int(child_pid))
        assert own == pytest.approx(float(leader_used), abs=5 * TICK_S)
        assert child == pytest.approx(float(child_used), abs=5 * TICK_S)
        assert session_cpu_s(leader.pid) == pytest.approx(own + child, abs=2 * TICK_S)
        assert session_cpu_s(leader.pid) >= 0.55
    finally:
        leader.communicate(timeout=60)
    assert process_cpu_s(leader.pid) == 0.0  # gone: nothing to read
    assert session_of(leader.pid) is None
    assert session_cpu_s(leader.pid) == 0.0
