"""`cir index`: ingest a folder of images into a collection."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cir_tools.commands._retriever import DEFAULT_ADDRESS, add_address_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder")
    parser.add_argument("--collection", required=True)
    add_address_argument(parser, help=f"retriever host:port (default {DEFAULT_ADDRESS})")


def run(args: argparse.Namespace) -> int:
    from cir_client.retriever import connect, index_folder, progress_bar

    summary = index_folder(connect(args.address), args.collection, Path(args.folder), progress_bar)
    print(f"{summary.total} files: " + ", ".join(f"{k} {v}" for k, v in sorted(summary.counts.items())))
    for item_id, why in summary.failures:
        print(f"  failed {item_id}: {why}", file=sys.stderr)
    return 1 if summary.failures else 0
