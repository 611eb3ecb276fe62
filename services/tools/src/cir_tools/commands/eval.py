"""`cir eval`: evaluate on CIRCO, CIRR or FashionIQ with the official protocols (metrics, report).

The arguments and the run are the evaluation package's (`cir_evaluation.cli`). Where that package is not
installed, `cir eval` still parses and then reports the missing package by name.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    try:
        from cir_evaluation.cli import add_arguments as add_eval_arguments
    except ModuleNotFoundError:  # an image without the evaluation package: run() says so when used
        return
    add_eval_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from cir_evaluation.cli import run as run_eval
    from cir_tools.local_suite import local_suite_address

    return run_eval(args, start_suite=local_suite_address)
