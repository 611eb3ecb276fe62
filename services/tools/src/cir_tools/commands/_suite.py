"""What the commands that start a local suite (demo, serve) share."""

from __future__ import annotations

import argparse


def add_profile_argument(parser: argparse.ArgumentParser) -> None:
    # None: `cir` fills in $CIR_PROFILE; still None, the command builds the tiny pack.
    parser.add_argument(
        "--profile", default=None, help="profile TOML (default: $CIR_PROFILE, else the tiny pack)"
    )
