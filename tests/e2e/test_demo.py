"""The README's main job: `cir demo` starts the suite, indexes the samples, queries, writes HTML."""

from __future__ import annotations

import re

import pytest

from cir_common.cli import main

pytestmark = pytest.mark.slow


def test_demo_runs_the_main_job_and_writes_a_page(tmp_path, tiny_pack, capsys):
    assert main(["demo", "--out", str(tmp_path), "--profile", str(tiny_pack)]) == 0
    printed = capsys.readouterr().out
    assert "indexed: {'indexed': 24}" in printed
    assert printed.count("query: ") == 4
    assert "strategy cvsi" in printed and "strategy lincir" in printed
    page = (tmp_path / "demo.html").read_text()
    # every query shows its reference and 5 hits, each as an embedded image
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == 4 * (1 + 5)
    assert "edited captions" in page
    # the tiny pack's weights are random, and the page and the console say so
    assert "RANDOM weights" in page and "RANDOM weights" in printed
