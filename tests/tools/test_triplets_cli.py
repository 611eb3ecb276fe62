"""`cir triplets` refuses bad arguments before calling any service (nothing listens on port 9)."""

from __future__ import annotations

import pytest

from cir_tools.cli import main as cir

NOWHERE = [
    "--address",
    "127.0.0.1:9",
    "--captioner-address",
    "127.0.0.1:9",
    "--reasoner-address",
    "127.0.0.1:9",
]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["--pairs", "nearest"],
            "argument --pairs: 'nearest' is not a pairing; write random, knn or same-metadata:KEY",
        ),
        (["--pairs", "same-metadata"], "argument --pairs: 'same-metadata' names no metadata key"),
        (["--pairs", "same-metadata:"], "argument --pairs: 'same-metadata:' names no metadata key"),
        (["--pairs", "knn:3"], "argument --pairs: 'knn:3': knn takes no argument"),
        (["--pairs", "random", "--count", "0"], "argument --count: 0 is less than 1"),
        (["--pairs", "random", "--count", "many"], "argument --count: 'many' is not a whole number"),
        (["--pairs", "random", "--batch-size", "-2"], "argument --batch-size: -2 is less than 1"),
    ],
)
def test_bad_arguments_exit_2_with_a_message_naming_the_accepted_forms(
    tmp_path, capsys, arguments: list[str], message: str
) -> None:
    out = tmp_path / "t.jsonl"
    with pytest.raises(SystemExit) as exit_:
        cir(["triplets", "--collection", "c", "--out", str(out), *arguments, *NOWHERE])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
