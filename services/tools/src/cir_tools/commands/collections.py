"""`cir collections`: create, list and inspect collections."""

from __future__ import annotations

import argparse

from cir_tools.commands._retriever import add_address_argument, print_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="collections_command", required=True, metavar="SUBCOMMAND")
    create = commands.add_parser("create", help="create a collection with explicit settings")
    create.add_argument("name")
    create.add_argument(
        "--filterable",
        default="",
        metavar="FIELDS",
        help="metadata fields searches may filter on, e.g. color:string,price:float,in_stock:bool,size:int",
    )
    create.add_argument("--num-captions", type=int, default=0, help="captions per image (default: server's)")
    create.add_argument("--decoding-variant", default="", help="nucleus or beam_sample (default: server's)")
    create.add_argument("--preprocessing", default="", help="targetpad or model_default (default: server's)")
    create.add_argument("--ann", default="", help="approximate index: hnsw or ivf (default: exact search)")
    listing = commands.add_parser("list", help="names of all collections")
    info = commands.add_parser("info", help="size, settings and models of one collection")
    info.add_argument("name")
    for sub in (create, listing, info):
        add_address_argument(sub)


def run(args: argparse.Namespace) -> int:
    from cir.retriever.v1 import retriever_pb2
    from cir_client.retriever import connect, parse_filterable

    stub = connect(args.address)
    if args.collections_command == "list":
        for name in stub.ListCollections(retriever_pb2.ListCollectionsRequest()).collections:
            print(name)
        return 0
    if args.collections_command == "info":
        print_json(stub.GetCollectionInfo(retriever_pb2.GetCollectionInfoRequest(collection=args.name)))
        return 0
    settings = retriever_pb2.CollectionSettings(
        num_captions=args.num_captions,
        decoding_variant=args.decoding_variant,
        preprocessing=args.preprocessing,
        filterable_fields=parse_filterable(args.filterable),
        ann=args.ann,
    )
    print_json(
        stub.CreateCollection(retriever_pb2.CreateCollectionRequest(collection=args.name, settings=settings))
    )
    return 0
