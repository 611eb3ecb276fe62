"""The world pack's stage cache: a stage is rebuilt exactly when its digest changes, and those after it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cir_tools.packs.world import BUILD_REPORT, Stage, build_stages, stage_digest
from cir_tools.training.progress import ProgressBar, quiet


def _stages(calls: list[str], recipe_a: int = 1, fail_b: bool = False) -> list[Stage]:
    def build_a(folder: Path, root: Path, progress: object) -> None:
        calls.append("a")
        (folder / "weights.txt").write_text(f"a{recipe_a}")

    def build_b(folder: Path, root: Path, progress: object) -> None:
        calls.append("b")
        if fail_b:
            raise RuntimeError("interrupted")
        # Reads the earlier stage, as the mapping networks read the CLIP.
        (folder / "weights.txt").write_text((root / "a" / "weights.txt").read_text() + "+b")

    return [
        Stage("a", build_a, modules=("cir_tools.world.scene",), recipe={"n": recipe_a}),
        Stage("b", build_b, modules=("cir_tools.world.render",), recipe={"n": 1}, after=("a",)),
    ]


def test_second_build_reuses_every_stage(tmp_path):
    calls: list[str] = []
    first = build_stages(tmp_path, _stages(calls), echo=None, progress=lambda _: quiet)
    second = build_stages(tmp_path, _stages(calls), echo=None, progress=lambda _: quiet)
    assert calls == ["a", "b"]
    assert [r.cached for r in first] == [False, False]
    assert [r.cached for r in second] == [True, True]
    report = json.loads((tmp_path / BUILD_REPORT).read_text())
    assert set(report) == {"a", "b"} and report["a"]["cached"] is True
    assert (tmp_path / "b" / "weights.txt").read_text() == "a1+b"


def test_a_changed_recipe_rebuilds_that_stage_and_the_ones_after_it(tmp_path):
    calls: list[str] = []
    build_stages(tmp_path, _stages(calls), echo=None, progress=lambda _: quiet)
    build_stages(tmp_path, _stages(calls, recipe_a=2), echo=None, progress=lambda _: quiet)
    assert calls == ["a", "b", "a", "b"]
    assert (tmp_path / "b" / "weights.txt").read_text() == "a2+b"


def test_an_interrupted_stage_is_built_again_and_the_finished_one_is_kept(tmp_path):
    calls: list[str] = []
    with pytest.raises(RuntimeError, match="interrupted"):
        build_stages(tmp_path, _stages(calls, fail_b=True), echo=None, progress=lambda _: quiet)
    build_stages(tmp_path, _stages(calls), echo=None, progress=lambda _: quiet)
    assert calls == ["a", "b", "b"]


def test_the_digest_covers_the_upstream_stages_and_the_sources():
    stage = _stages([])[1]
    assert stage_digest(stage, ["x"]) != stage_digest(stage, ["y"])
    other_source = Stage(stage.name, stage.build, ("cir_tools.world.edits",), stage.recipe, stage.after)
    assert stage_digest(stage, ["x"]) != stage_digest(other_source, ["x"])
    assert stage_digest(stage, ["x"]) == stage_digest(stage, ["x"])


def test_the_progress_bar_prints_a_line_per_tenth_off_a_terminal(tmp_path):
    log = tmp_path / "log.txt"
    with log.open("w") as stream:
        bar = ProgressBar("clip", stream=stream)
        for step in range(1, 101):
            bar(step, 100, 1.0 / step)
    lines = log.read_text().splitlines()
    # The first step (the bar is alive), then one per tenth.
    assert len(lines) == 11
    assert " 1/100 " in lines[0] and " 10/100 " in lines[1]
    assert lines[-1].startswith("clip [" + "#" * 30 + "] 100/100 loss 0.0100")
