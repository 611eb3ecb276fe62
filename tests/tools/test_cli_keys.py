"""`cir keys`: a new key printed once with its keys-file entry, which the retriever loads."""

from __future__ import annotations

import io
import stat

from cir_retriever.auth import RateLimit, Role, key_digest, parse_keys
from cir_tools.cli import main as cir


def test_generate_prints_the_key_once_and_an_entry_with_its_digest(capsys):
    assert cir(["keys", "generate", "--name", "web", "--role", "search"]) == 0
    out = capsys.readouterr().out
    key = next(line for line in out.splitlines() if line.startswith("cir_"))
    assert out.count(key) == 1
    entry = out[out.index("[[keys]]") :]
    (parsed,) = parse_keys(entry)
    assert (parsed.name, parsed.role, parsed.digest, parsed.rate_limit) == (
        "web",
        Role.SEARCH,
        key_digest(key),
        None,
    )


def test_generate_writes_the_key_to_a_private_file_and_prints_the_entry_alone(tmp_path, capsys):
    key_file = tmp_path / "ci.key"
    argv = [
        "keys",
        "generate",
        "--name",
        "ci",
        "--role",
        "write",
        "--requests-per-second",
        "5",
        "--burst",
        "10",
    ]
    assert cir([*argv, "--key-out", str(key_file)]) == 0
    key = key_file.read_text().strip()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    (parsed,) = parse_keys(capsys.readouterr().out)
    assert (parsed.digest, parsed.role, parsed.rate_limit) == (
        key_digest(key),
        Role.WRITE,
        RateLimit(5.0, 10),
    )
    assert cir([*argv, "--key-out", str(key_file)]) == 2  # never overwritten
    assert "the file exists" in capsys.readouterr().err
    assert key_file.read_text().strip() == key


def test_hash_reads_the_key_from_stdin(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("cir_made-elsewhere\n"))
    assert cir(["keys", "hash", "--name", "ops", "--role", "admin"]) == 0
    (parsed,) = parse_keys(capsys.readouterr().out)
    assert (parsed.name, parsed.role, parsed.digest) == ("ops", Role.ADMIN, key_digest("cir_made-elsewhere"))


def test_a_burst_without_a_rate_is_refused(capsys):
    assert cir(["keys", "generate", "--name", "x", "--role", "search", "--burst", "3"]) == 2
    assert "--burst needs --requests-per-second" in capsys.readouterr().err
