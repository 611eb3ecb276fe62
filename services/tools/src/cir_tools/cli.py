"""The `cir` command line: a registry of subcommands, each imported only when it is the one that runs.

`COMMANDS` names every subcommand with its module and one-line help, so `cir --help` lists them all without
importing any; `cir search ...` imports `cir_tools.commands.search` alone. A command module has
`add_arguments(parser)` and `run(args) -> int`; what it needs beyond that (grpc stubs, torch, the services,
the evaluation package) it imports itself, and a package missing from the image is reported by name.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    module: str  # defines add_arguments(parser) and run(args) -> int
    help: str


COMMANDS: dict[str, Command] = {
    "demo": Command(
        "cir_tools.commands.demo", "start the suite, index the sample gallery, run queries, write HTML"
    ),
    "serve": Command(
        "cir_tools.commands.serve", "run the four services and a Redis cache on loopback until Ctrl-C"
    ),
    "index": Command("cir_tools.commands.index", "ingest a folder of images into a collection"),
    "search": Command(
        "cir_tools.commands.search", "composed search: a reference image changed as the text says"
    ),
    "collections": Command("cir_tools.commands.collections", "create, list and inspect collections"),
    "eval": Command(
        "cir_tools.commands.eval",
        "evaluate on CIRCO, CIRR or FashionIQ with the official protocols (metrics, report)",
    ),
    "synthetic-dataset": Command(
        "cir_tools.commands.synthetic_dataset",
        "write a tiny CIRCO / CIRR / FashionIQ split in its official layout",
    ),
    "models": Command("cir_tools.commands.models", "model packs"),
    "train": Command("cir_tools.commands.train", "train models on CPU (phi: a mapping network for a CLIP)"),
    "triplets": Command(
        "cir_tools.commands.triplets", "InstructCIR training triplets: pair, caption and describe images"
    ),
    "keys": Command("cir_tools.commands.keys", "make an API key of the retriever and its keys-file entry"),
}


def chosen_command(argv: Sequence[str]) -> str | None:
    """The subcommand `argv` names: its first word that is not an option (`cir` itself has only -h)."""
    return next((word for word in argv if not word.startswith("-")), None)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for `argv` (default: sys.argv[1:]): every subcommand is listed, and the one `argv` names
    gets its arguments from its module, the only command module imported."""
    argv = sys.argv[1:] if argv is None else argv
    chosen = chosen_command(argv)
    parser = argparse.ArgumentParser(prog="cir", description="Zero-shot composed image retrieval suite.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        subparser = commands.add_parser(name, help=command.help)
        if name == chosen:
            module = importlib.import_module(command.module)
            module.add_arguments(subparser)
            subparser.set_defaults(handler=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser = build_parser(argv)  # imports the chosen command's module
    except ModuleNotFoundError as exc:
        return _missing_package(exc)
    args = parser.parse_args(argv)
    if getattr(args, "profile", None) is None and "profile" in args:
        from cir_common.vocabulary import PROFILE_ENV

        args.profile = os.environ.get(PROFILE_ENV) or None
    try:
        return int(args.handler(args))
    except ModuleNotFoundError as exc:
        return _missing_package(exc)
    except Exception as exc:
        code = _reported(exc)
        if code is None:
            raise
        return code


def _missing_package(exc: ModuleNotFoundError) -> int:
    print(f"cir: missing package {exc.name!r}; install the suite: scripts/install-dev.sh", file=sys.stderr)
    return 2


def _reported(exc: Exception) -> int | None:
    """Prints the one line a command's expected error deserves and returns the exit status; None: a bug."""
    if _is_rpc_error(exc):
        print(f"cir: {exc.code().name}: {exc.details()}", file=sys.stderr)  # type: ignore[attr-defined]
        return 1
    if isinstance(exc, FileNotFoundError | NotADirectoryError):
        # The OS's own errors name the path; the suite's carry a message of their own.
        message = f"{exc.filename}: {exc.strerror.lower()}" if exc.filename and exc.strerror else exc
        print(f"cir: {message}", file=sys.stderr)
        return 2
    if isinstance(exc, ValueError):  # UsageError: a command-line value to change
        print(f"cir: {exc}", file=sys.stderr)
        return 2
    if isinstance(exc, RuntimeError):  # SuiteError and friends: a service did not start
        print(f"cir: {exc}", file=sys.stderr)
        return 1
    return None


def _is_rpc_error(exc: Exception) -> bool:
    # grpc is not imported here (`cir --help` and `cir models` need none of it): an RpcError can only come
    # from a grpc that the command has loaded.
    grpc = sys.modules.get("grpc")
    return grpc is not None and isinstance(exc, grpc.RpcError)


if __name__ == "__main__":
    sys.exit(main())
