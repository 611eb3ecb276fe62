"""`cir triplets`: InstructCIR training triplets from a collection's images (method.md 4.2).

Pairs images of a collection (`--pairs random | knn | same-metadata:KEY`), captions both with the
captioner, asks the reasoner for the reformulation text from the first to the second, and appends one JSON
line per pair to `--out` (the format: cir_tools/triplets/output.py). Rerun with the same arguments, it
resumes: pairs already in the file are skipped.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from cir_common.vocabulary import CAPTIONER, REASONER, DecodingVariant
from cir_tools.commands._retriever import add_address_argument

if TYPE_CHECKING:
    from cir_tools.triplets.pairing import PairingSpec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cir_tools.triplets.pairing import PAIRING_FORMS

    parser.add_argument("--collection", required=True, help="the collection whose images are paired")
    parser.add_argument(
        "--pairs",
        required=True,
        type=_pairing,
        metavar="PAIRING",
        help=f"how images are paired: {PAIRING_FORMS} (KEY: a metadata key of the images)",
    )
    parser.add_argument("--out", required=True, help="JSONL file to write; an existing one is resumed")
    parser.add_argument("--count", type=_positive_int, help="pairs to make (default: one per image)")
    parser.add_argument("--seed", type=int, default=0, help="pairing and caption sampling seed (default: 0)")
    parser.add_argument(
        "--caption-prompt",
        help='text the captions continue, e.g. "a detailed description of the image:" (default: none)',
    )
    parser.add_argument(
        "--decoding",
        choices=[variant.value for variant in DecodingVariant],
        help="the captioner's decoding variant (default: the captioner's; nucleus is the cheaper one)",
    )
    parser.add_argument(
        "--num-captions", type=_positive_int, default=1, help="captions per image, joined (default: 1)"
    )
    parser.add_argument(
        "--template", default="", help="the reasoner's difference template (default: the reasoner's default)"
    )
    parser.add_argument("--batch-size", type=_positive_int, default=16, help="pairs per batch (default: 16)")
    parser.add_argument("--images-root", help="folder that relative image uris of the collection are under")
    parser.add_argument(
        "--max-tokens",
        type=_positive_int,
        default=48,
        help="longest difference answer in tokens (default: 48)",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="deadline of each call in seconds")
    add_address_argument(parser)
    parser.add_argument(
        "--captioner-address",
        default=CAPTIONER.default_address,
        help=f"captioner host:port (default {CAPTIONER.default_address})",
    )
    parser.add_argument(
        "--reasoner-address",
        default=REASONER.default_address,
        help=f"reasoner host:port (default {REASONER.default_address})",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cir_tools.triplets.job import (
        ServiceAddresses,
        SuiteClients,
        TripletJobConfig,
        progress_bar,
        run_triplet_job,
    )

    config = TripletJobConfig(
        collection=args.collection,
        pairing=args.pairs,
        out=Path(args.out),
        count=args.count,
        seed=args.seed,
        caption_prompt=args.caption_prompt,
        decoding=DecodingVariant(args.decoding) if args.decoding else None,
        num_captions=args.num_captions,
        template=args.template,
        batch_size=args.batch_size,
        images_root=Path(args.images_root) if args.images_root else None,
        max_tokens=args.max_tokens,
        rpc_timeout_s=args.timeout,
    )
    clients = SuiteClients(ServiceAddresses(args.address, args.captioner_address, args.reasoner_address))
    try:
        report = run_triplet_job(config, clients, progress=progress_bar)
    finally:
        clients.close()
    outcomes = ", ".join(f"{name} {count}" for name, count in sorted(report.outcomes.items())) or "none"
    print(
        f"wrote {report.written} triplets to {config.out} ({outcomes}); "
        f"{report.already_written + report.written} of {report.planned} pairs in the file"
    )
    return 0


def _pairing(text: str) -> PairingSpec:
    from cir_tools.triplets.pairing import parse_pairing

    try:
        return parse_pairing(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is less than 1; give at least 1")
    return value
