"""`cir models`: model packs.

- `cir models tiny`: tiny random models in the real formats (the wiring, fast; rankings mean nothing).
- `cir models world`: the four model families trained on the synthetic scene world (minutes on CPU; cached).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="models_command", required=True, metavar="SUBCOMMAND")
    tiny = commands.add_parser(
        "tiny", help="write tiny random models in the real formats, plus a profile pointing at them"
    )
    tiny.add_argument("--out", required=True, help="output folder (created if missing)")
    world = commands.add_parser(
        "world",
        help="train CLIP, Phi, BLIP-2 and the LLM on the synthetic scene world, plus a profile (minutes)",
    )
    world.add_argument(
        "--out",
        default=None,
        help="output folder (default: the shared world-pack cache, where the demo and tests look); "
        "stages already built with the same sources and recipes are reused",
    )


def run(args: argparse.Namespace) -> int:
    from cir_common.vocabulary import PROFILE_ENV

    if args.models_command == "world":
        from cir_tools.packs.world import build_world_pack, default_pack_dir

        out = Path(args.out) if args.out else default_pack_dir()
        profile = build_world_pack(out)
        print(f"world model pack written to {out.resolve()}")
        print(f"profile: {profile}  (use it with {PROFILE_ENV}={profile})")
        return 0

    from cir_tools.packs.tiny import build_tiny_pack

    profile = build_tiny_pack(Path(args.out))
    print(f"tiny model pack written to {Path(args.out).resolve()}")
    print(f"profile: {profile}  (use it with {PROFILE_ENV}={profile})")
    print("these weights are random: rankings made with them show the wiring, not quality")
    return 0
