"""`cir` loads only the subcommand that runs: its help answers without the ML stack or the other commands."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cir_tools.cli import COMMANDS, main

# Unimportable in the subprocess: what no help text may need.
BLOCKED = ("torch", "transformers", "open_clip", "cir_evaluation", "cir_tools.demo")
_PROBE = """
import contextlib, io, json, sys
for name in {blocked!r}:
    sys.modules[name] = None
from cir_tools.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        main({argv!r})
        code = None
    except SystemExit as exit:
        code = exit.code
print(json.dumps({{"code": code, "help": out.getvalue(), "modules": sorted(sys.modules)}}))
"""


def _help_in_a_fresh_interpreter(argv: list[str]) -> tuple[str, set[str]]:
    code = _PROBE.format(blocked=BLOCKED, argv=argv)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["code"] == 0, done.stderr
    return result["help"], set(result["modules"])


def _commands_loaded(modules: set[str]) -> set[str]:
    return {name for name in modules if name.startswith("cir_tools.commands.")}


def test_cir_help_lists_every_command_and_imports_none() -> None:
    text, modules = _help_in_a_fresh_interpreter(["--help"])
    for name, command in COMMANDS.items():
        assert name in text
        assert command.help.split()[0] in text
    assert not _commands_loaded(modules)
    # Not even gRPC: the stubs load with the command that calls a service.
    assert "grpc" not in modules and "cir.retriever.v1.retriever_pb2_grpc" not in modules


@pytest.mark.parametrize("command", ["index", "search", "models", "train"])
def test_a_command_help_imports_that_command_alone(command: str) -> None:
    text, modules = _help_in_a_fresh_interpreter([command, "--help"])
    assert text.startswith(f"usage: cir {command} ")
    assert _commands_loaded(modules) <= {f"cir_tools.commands.{command}", "cir_tools.commands._retriever"}
    assert f"cir_tools.commands.{command}" in modules
    assert not {"cir_tools.local_suite", "cir_tools.packs.tiny_encoder"} & modules


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_registered_command_answers_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main([command, "--help"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: cir {command} ")


def test_an_unknown_command_is_refused_with_the_list(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["serach"])
    assert exit.value.code == 2
    assert "invalid choice: 'serach'" in capsys.readouterr().err
