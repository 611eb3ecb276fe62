"""`cir keys`: API keys of the retriever's public API (CIR_RETRIEVER_API_KEYS_FILE).

`cir keys generate` makes a random key and prints it once, with the `[[keys]]` entry (its sha256, never the
key) to add to the keys file; `cir keys hash` prints the entry of a key read from stdin (one made elsewhere).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROLES = ("search", "write", "admin")  # cir_retriever.auth.Role, spelled out so that --help imports nothing


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="keys_command", required=True, metavar="SUBCOMMAND")
    generate = commands.add_parser(
        "generate", help="make a random key: print it once, and its [[keys]] entry for the keys file"
    )
    generate.add_argument(
        "--key-out",
        metavar="FILE",
        help="write the key to this new file (mode 0600) instead of printing it; stdout then holds the "
        "entry alone (e.g. `>> keys.toml`)",
    )
    hashing = commands.add_parser("hash", help="the [[keys]] entry of a key read from stdin")
    for sub in (generate, hashing):
        sub.add_argument("--name", required=True, help="who the key is for (shown in logs and errors)")
        sub.add_argument(
            "--role",
            required=True,
            choices=ROLES,
            help="search: Search and reading collections; write: also ingest, import, create, delete "
            "images; admin: also delete collections, export features, service stats",
        )
        sub.add_argument(
            "--requests-per-second", type=_above_zero, help="rate limit of the key (default: none)"
        )
        sub.add_argument(
            "--burst",
            type=_whole_above_zero,
            help="requests at once within the rate limit (default: the rate, at least 1)",
        )


def _above_zero(text: str) -> float:
    value = float(text)
    if not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a number above 0")
    return value


def _whole_above_zero(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a whole number of at least 1")
    return value


def run(args: argparse.Namespace) -> int:
    from cir_retriever.auth import Role, generate_key, keys_entry, parse_keys

    if args.burst is not None and args.requests_per_second is None:
        raise ValueError("--burst needs --requests-per-second (the rate that refills it)")
    if args.keys_command == "hash":
        key = sys.stdin.readline().strip()
        if not key:
            raise ValueError(
                "no key on stdin: pipe it in, e.g. `cir keys hash --name NAME --role ROLE < key.txt`"
            )
    else:
        key = generate_key()
    entry = keys_entry(args.name, key, Role(args.role), args.requests_per_second, args.burst)
    parse_keys(entry, source="the new entry")  # what the retriever will read: it must load
    if args.keys_command == "hash":
        print(entry, end="")
    elif args.key_out:
        _write_private(Path(args.key_out), key)
        print(f"the key of {args.name!r} is in {args.key_out}; its entry for the keys file:", file=sys.stderr)
        print(entry, end="")
    else:
        print(f"API key of {args.name!r} (role {args.role}), shown this once: the caller's CIR_API_KEY")
        print(key)
        print()
        print(
            "Its entry for the keys file (CIR_RETRIEVER_API_KEYS_FILE), with the key's sha256, not the key:"
        )
        print()
        print(entry, end="")
    return 0


def _write_private(path: Path, key: str) -> None:
    """Writes `key` to a new file only its owner may read; an existing file is never overwritten."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ValueError(f"--key-out {path}: the file exists; name a new one") from None
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(key + "\n")
