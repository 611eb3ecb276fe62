"""`cir demo`: start the suite, index the sample gallery, run queries, write HTML."""

from __future__ import annotations

import argparse
from pathlib import Path

from cir_tools.commands._suite import add_profile_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    add_profile_argument(parser)
    parser.add_argument(
        "--gallery",
        default=None,
        help="image folder to index (default: the sample gallery, drawn into OUT/gallery)",
    )


def run(args: argparse.Namespace) -> int:
    from cir_tools.demo import run_demo

    run_demo(
        Path(args.out),
        Path(args.profile) if args.profile else None,
        Path(args.gallery) if args.gallery else None,
    )
    return 0
