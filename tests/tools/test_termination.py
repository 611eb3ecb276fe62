"""A tool that calls exit_on_sigterm() runs its cleanup when it is sent SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from cir_tools.termination import SIGTERM_EXIT_STATUS

_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from cir_tools.termination import exit_on_sigterm

    marker = Path(sys.argv[1])
    if sys.argv[2] == "handled":
        exit_on_sigterm()
    try:
        print("ready", flush=True)
        time.sleep(120)
    finally:
        marker.write_text("cleaned up")
    """
)


def _run_and_terminate(tmp_path: Path, mode: str) -> tuple[int, Path]:
    marker = tmp_path / f"marker-{mode}"
    process = subprocess.Popen(
        [sys.executable, "-c", _SCRIPT, str(marker), mode], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        process.send_signal(signal.SIGTERM)
        return process.wait(timeout=60), marker
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_sigterm_runs_finally_blocks_and_exits_143(tmp_path: Path) -> None:
    status, marker = _run_and_terminate(tmp_path, "handled")
    assert status == SIGTERM_EXIT_STATUS == 143
    assert marker.read_text() == "cleaned up"


def test_without_it_sigterm_skips_cleanup(tmp_path: Path) -> None:
    # The control: Python's default action, which left bench suites running.
    status, marker = _run_and_terminate(tmp_path, "default")
    assert status == -signal.SIGTERM
    assert not marker.exists()
