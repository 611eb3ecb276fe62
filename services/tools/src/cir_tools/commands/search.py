"""`cir search`: composed search, a reference image changed as the text says."""

from __future__ import annotations

import argparse
from pathlib import Path

from cir.retriever.v1 import retriever_pb2
from cir_client.retriever import PRESETS, STRATEGIES
from cir_tools.commands._retriever import add_address_argument, print_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--collection", required=True)
    reference = parser.add_mutually_exclusive_group(required=True)
    reference.add_argument("--image", help="reference image file")
    reference.add_argument("--id", help="reference image id already in the collection")
    parser.add_argument(
        "--text", required=True, help='how to change the reference, e.g. "the same dress in red"'
    )
    parser.add_argument("--strategy", default="cvsi", choices=sorted(STRATEGIES))
    parser.add_argument("--preset", default="circo", choices=sorted(PRESETS))
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument(
        "--explain", action="store_true", help="show captions, edits, objects, prompt, timings"
    )
    parser.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="CONDITION",
        help="filter on a declared field: FIELD=VALUE, 'FIELD in A,B', FIELD<N (<=, >, >=); repeat to AND",
    )
    parser.add_argument("--json", action="store_true", help="print the whole response as JSON")
    parser.add_argument("--timeout", type=float, default=120.0, help="deadline in seconds")
    add_address_argument(parser)


def run(args: argparse.Namespace) -> int:
    from cir_client.retriever import connect, format_response, parse_where, search_request

    stub = connect(args.address)
    request = search_request(
        args.collection,
        args.text,
        image=Path(args.image) if args.image else None,
        reference_id=args.id,
        strategy=args.strategy,
        preset=args.preset,
        top_k=args.top_k,
        explain=args.explain,
    )
    if args.where:
        info = stub.GetCollectionInfo(retriever_pb2.GetCollectionInfoRequest(collection=args.collection))
        request.filter.CopyFrom(parse_where(args.where, info.settings.filterable_fields))
    response = stub.Search(request, timeout=args.timeout)
    if args.json:
        print_json(response)
    else:
        print(format_response(response))
    return 0
