"""The `cir` command line.

Subcommands that need a service's models import that service's package lazily, so the
command works in any image and says which package is missing when one is.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def _models_tiny(args: argparse.Namespace) -> int:
    from cir_common.tiny_pack import build_tiny_pack

    profile = build_tiny_pack(Path(args.out))
    print(f"tiny model pack written to {Path(args.out).resolve()}")
    print(f"profile: {profile}  (use it with CIR_PROFILE={profile})")
    print("these weights are random: rankings made with them show the wiring, not quality")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cir", description="Zero-shot composed image retrieval suite.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = commands.add_parser("models", help="model packs")
    model_commands = models.add_subparsers(dest="models_command", required=True, metavar="SUBCOMMAND")
    tiny = model_commands.add_parser(
        "tiny", help="write tiny random models in the real formats, plus a profile pointing at them"
    )
    tiny.add_argument("--out", required=True, help="output folder (created if missing)")
    tiny.set_defaults(handler=_models_tiny)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except ModuleNotFoundError as exc:
        print(
            f"cir: missing package {exc.name!r}; install the suite: scripts/install-dev.sh", file=sys.stderr
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
