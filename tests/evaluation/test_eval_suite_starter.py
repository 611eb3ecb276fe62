"""Evaluation only talks to a retriever address; without one it asks the caller's suite starter for one."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from cir_evaluation.runner import EvalRunError, retriever_stub
from cir_tools.commands import eval as eval_command
from cir_tools.local_suite import local_suite_address


def test_no_address_and_no_starter_names_the_option(tmp_path: Path) -> None:
    with (
        pytest.raises(EvalRunError, match="--address"),
        retriever_stub(None, None, tmp_path, print, start_suite=None),
    ):
        pass


def test_the_starter_runs_for_the_duration_with_the_profile_and_workdir(tmp_path: Path) -> None:
    calls: list[tuple[Path | None, Path]] = []
    stopped: list[bool] = []

    @contextlib.contextmanager
    def starter(profile: Path | None, workdir: Path, echo: object) -> Iterator[str]:
        calls.append((profile, workdir))
        try:
            yield "127.0.0.1:1"
        finally:
            stopped.append(True)

    profile = tmp_path / "profile.toml"
    with retriever_stub(None, profile, tmp_path, print, start_suite=starter) as stub:
        assert stub is not None
        assert stopped == []
    assert calls == [(profile, tmp_path)]
    assert stopped == [True]


def test_the_eval_command_hands_evaluation_the_local_suite(monkeypatch: pytest.MonkeyPatch) -> None:
    import cir_evaluation.cli

    seen: dict[str, object] = {}

    def fake_run(args: object, start_suite: object = None) -> int:
        seen["start_suite"] = start_suite
        return 0

    monkeypatch.setattr(cir_evaluation.cli, "run", fake_run)
    assert eval_command.run(object()) == 0  # type: ignore[arg-type]
    assert seen["start_suite"] is local_suite_address
