"""The README's main job: `cir demo` starts the suite, indexes the samples, queries, writes HTML.

Also the start-up wait that `cir demo` and `cir serve` use: its progress lines and its limit's setting,
checked on a process that never serves (fast: no model is loaded).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cir_tools.cli import main
from cir_tools.local_redis import free_port
from cir_tools.local_suite import LocalSuite, ServiceProcess, SuiteError


def _hanging_suite(workdir: Path) -> LocalSuite:
    """A suite whose reasoner is alive but never listens: what a model that loads forever looks like."""
    suite = LocalSuite(profile=workdir / "profile.toml", workdir=workdir)
    log_path = workdir / "reasoner.log"
    log_path.write_text("loading the LLM ...\n", encoding="utf-8")
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"],
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # like the suite's services: stop() signals its process group
    )
    suite.processes["reasoner"] = ServiceProcess("reasoner", free_port(), process, log_path)
    return suite


@pytest.fixture
def hanging(tmp_path: Path) -> Iterator[LocalSuite]:
    suite = _hanging_suite(tmp_path)
    yield suite
    suite.stop()


def _progress(printed: str) -> list[str]:
    return [line for line in printed.splitlines() if line.startswith("still starting after ")]


def test_a_start_up_wait_prints_progress_and_its_limit_names_the_setting(
    hanging: LocalSuite, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SuiteError) as caught:
        hanging.wait_serving(timeout_s=2.0, progress_every_s=0.2)
    lines = _progress(capsys.readouterr().out)
    # At least one line: the last check before giving up reports first (the count depends on the machine).
    assert lines
    for line in lines:
        assert re.fullmatch(
            r"still starting after \d+ s: reasoner \(\d+ s\); limit 2 s \(CIR_STARTUP_TIMEOUT_S\)", line
        ), line
    message = str(caught.value)
    assert message.startswith(
        "reasoner was not SERVING after 2 s, the start-up limit (CIR_STARTUP_TIMEOUT_S; raise it"
    )
    assert "loading the LLM ..." in message  # the service's log says why


def test_the_start_up_limit_is_a_setting(
    hanging: LocalSuite, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIR_STARTUP_TIMEOUT_S", "1.5")
    with pytest.raises(SuiteError) as caught:
        hanging.wait_serving(progress_every_s=0.2)
    assert "reasoner was not SERVING after 1.5 s" in str(caught.value)
    assert all(
        line.endswith("limit 1.5 s (CIR_STARTUP_TIMEOUT_S)") for line in _progress(capsys.readouterr().out)
    )


@pytest.mark.parametrize("value", ["soon", "0", "-5", "nan"])
def test_a_malformed_start_up_limit_fails_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("CIR_STARTUP_TIMEOUT_S", value)
    suite = LocalSuite(profile=tmp_path / "profile.toml", workdir=tmp_path / "suite")
    with pytest.raises(
        SuiteError, match=re.escape(f"CIR_STARTUP_TIMEOUT_S={value!r}: set the start-up limit")
    ):
        suite.start()
    assert not suite.processes and suite.redis is None and not (tmp_path / "suite").exists()


@pytest.mark.slow
def test_demo_runs_the_main_job_and_writes_a_page(
    tmp_path: Path, tiny_pack: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIR_STARTUP_TIMEOUT_S", "900")  # a loaded CI machine; the demo reads the setting
    assert main(["demo", "--out", str(tmp_path), "--profile", str(tiny_pack)]) == 0
    printed = capsys.readouterr().out
    assert "start-up limit 900 s, CIR_STARTUP_TIMEOUT_S" in printed
    assert "indexed: {'indexed': 24}" in printed
    assert printed.count("query: ") == 4
    assert "strategy cvsi" in printed and "strategy lincir" in printed
    page = (tmp_path / "demo.html").read_text()
    # every query shows its reference and 5 hits, each as an embedded image
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == 4 * (1 + 5)
    assert "edited captions" in page
    # the tiny pack's weights are random, and the page and the console say so
    assert "RANDOM weights" in page and "RANDOM weights" in printed
