"""`cir synthetic-dataset`: write a tiny CIRCO / CIRR / FashionIQ split in its official layout.

The arguments and the writer are the evaluation package's (`cir_evaluation.cli`); see `commands.eval`.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    try:
        from cir_evaluation.cli import add_synthetic_arguments
    except ModuleNotFoundError:  # an image without the evaluation package: run() says so when used
        return
    add_synthetic_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from cir_evaluation.cli import write_synthetic

    return write_synthetic(args)
