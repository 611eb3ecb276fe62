"""`cir models`: model packs (`cir models tiny`: tiny random models in the real formats)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="models_command", required=True, metavar="SUBCOMMAND")
    tiny = commands.add_parser(
        "tiny", help="write tiny random models in the real formats, plus a profile pointing at them"
    )
    tiny.add_argument("--out", required=True, help="output folder (created if missing)")


def run(args: argparse.Namespace) -> int:
    # One pack so far: `models_command` is "tiny".
    from cir_common.vocabulary import PROFILE_ENV
    from cir_tools.packs.tiny import build_tiny_pack

    profile = build_tiny_pack(Path(args.out))
    print(f"tiny model pack written to {Path(args.out).resolve()}")
    print(f"profile: {profile}  (use it with {PROFILE_ENV}={profile})")
    print("these weights are random: rankings made with them show the wiring, not quality")
    return 0
