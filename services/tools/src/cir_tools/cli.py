"""The `cir` command line.

Subcommands that need a service's models import that service's package lazily, so the
command works in any image and says which package is missing when one is.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import grpc
from google.protobuf import json_format

from cir.retriever.v1 import retriever_pb2

DEFAULT_ADDRESS = "127.0.0.1:50050"


def _models_tiny(args: argparse.Namespace) -> int:
    from cir_tools.packs.tiny import build_tiny_pack

    profile = build_tiny_pack(Path(args.out))
    print(f"tiny model pack written to {Path(args.out).resolve()}")
    print(f"profile: {profile}  (use it with CIR_PROFILE={profile})")
    print("these weights are random: rankings made with them show the wiring, not quality")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from cir_tools.local_suite import DEFAULT_PORTS, LocalSuite
    from cir_tools.packs.tiny import build_tiny_pack

    workdir = Path(args.workdir)
    profile = Path(args.profile) if args.profile else build_tiny_pack(workdir / "tiny-pack", echo=None)
    suite = LocalSuite(profile=profile, workdir=workdir, use_redis=not args.no_redis, store=args.store)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"starting encoder, captioner, reasoner, retriever with {profile} ...", flush=True)
    suite.start(ports=None if args.any_ports else DEFAULT_PORTS)
    try:
        for name, service in suite.processes.items():
            print(f"  {name:9s} {service.address}  (log: {service.log_path})")
        if suite.redis is not None:
            print(f"  cache     {suite.redis.url}")
        if suite.milvus is not None:
            print(f"  milvus    {suite.milvus.uri}  (gallery store; data in {suite.milvus.data_dir})")
        print(f"retriever (public API) at {suite.retriever_address}; Ctrl-C stops everything", flush=True)
        while not stop.wait(1.0):
            for name, service in suite.processes.items():
                if service.process.poll() is not None:
                    print(
                        f"{name} exited with {service.process.returncode}:\n{service.log_tail()}",
                        file=sys.stderr,
                    )
                    return 1
    finally:
        print("stopping ...", flush=True)
        suite.stop()
    return 0


def _index(args: argparse.Namespace) -> int:
    from cir_client.retriever import connect, index_folder, progress_bar

    summary = index_folder(connect(args.address), args.collection, Path(args.folder), progress_bar)
    print(f"{summary.total} files: " + ", ".join(f"{k} {v}" for k, v in sorted(summary.counts.items())))
    for item_id, why in summary.failures:
        print(f"  failed {item_id}: {why}", file=sys.stderr)
    return 1 if summary.failures else 0


def _search(args: argparse.Namespace) -> int:
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
        print(json.dumps(json_format.MessageToDict(response), indent=2))
    else:
        print(format_response(response))
    return 0


def _collections(args: argparse.Namespace) -> int:
    from cir_client.retriever import connect, parse_filterable

    stub = connect(args.address)
    if args.collections_command == "list":
        for name in stub.ListCollections(retriever_pb2.ListCollectionsRequest()).collections:
            print(name)
        return 0
    if args.collections_command == "info":
        info = stub.GetCollectionInfo(retriever_pb2.GetCollectionInfoRequest(collection=args.name))
        print(json.dumps(json_format.MessageToDict(info), indent=2))
        return 0
    settings = retriever_pb2.CollectionSettings(
        num_captions=args.num_captions,
        decoding_variant=args.decoding_variant,
        preprocessing=args.preprocessing,
        filterable_fields=parse_filterable(args.filterable),
        ann=args.ann,
    )
    created = stub.CreateCollection(
        retriever_pb2.CreateCollectionRequest(collection=args.name, settings=settings)
    )
    print(json.dumps(json_format.MessageToDict(created), indent=2))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from cir_tools.demo import run_demo

    run_demo(
        Path(args.out),
        Path(args.profile) if args.profile else None,
        Path(args.gallery) if args.gallery else None,
    )
    return 0


def _add_eval_arguments(parser: argparse.ArgumentParser, synthetic: bool = False) -> None:
    try:
        from cir_evaluation.cli import add_arguments, add_synthetic_arguments
    except ModuleNotFoundError as exc:  # an image without the retriever package: say so when used
        error = exc

        def missing(_: argparse.Namespace) -> int:
            raise error

        parser.set_defaults(handler=missing)
        return
    (add_synthetic_arguments if synthetic else add_arguments)(parser)


def build_parser() -> argparse.ArgumentParser:
    from cir_client.retriever import PRESETS, STRATEGIES

    parser = argparse.ArgumentParser(prog="cir", description="Zero-shot composed image retrieval suite.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="start the suite, index the sample gallery, run queries, write HTML"
    )
    demo.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    demo.add_argument(
        "--profile", default=None, help="profile TOML (default: $CIR_PROFILE, else the tiny pack)"
    )
    demo.add_argument(
        "--gallery",
        default=None,
        help="image folder to index (default: the sample gallery, drawn into OUT/gallery)",
    )
    demo.set_defaults(handler=_demo)

    serve = commands.add_parser(
        "serve", help="run the four services and a Redis cache on loopback until Ctrl-C"
    )
    serve.add_argument(
        "--profile", default=None, help="profile TOML (default: $CIR_PROFILE, else the tiny pack)"
    )
    serve.add_argument("--workdir", default="out/serve", help="logs, gallery store and the tiny pack go here")
    serve.add_argument("--no-redis", action="store_true", help="use in-process caches instead of Redis")
    serve.add_argument(
        "--store",
        choices=("local", "milvus"),
        default="local",
        help="gallery store: local files, or a local Milvus engine (milvus-lite), as replicas use it",
    )
    serve.add_argument(
        "--any-ports",
        action="store_true",
        help="free ports instead of the defaults 50050-50053 (retriever 50050)",
    )
    serve.set_defaults(handler=_serve)

    index = commands.add_parser("index", help="ingest a folder of images into a collection")
    index.add_argument("folder")
    index.add_argument("--collection", required=True)
    index.add_argument(
        "--address", default=DEFAULT_ADDRESS, help=f"retriever host:port (default {DEFAULT_ADDRESS})"
    )
    index.set_defaults(handler=_index)

    search = commands.add_parser("search", help="composed search: a reference image changed as the text says")
    search.add_argument("--collection", required=True)
    reference = search.add_mutually_exclusive_group(required=True)
    reference.add_argument("--image", help="reference image file")
    reference.add_argument("--id", help="reference image id already in the collection")
    search.add_argument(
        "--text", required=True, help='how to change the reference, e.g. "the same dress in red"'
    )
    search.add_argument("--strategy", default="cvsi", choices=sorted(STRATEGIES))
    search.add_argument("--preset", default="circo", choices=sorted(PRESETS))
    search.add_argument("--top-k", type=int, default=10)
    search.add_argument(
        "--explain", action="store_true", help="show captions, edits, objects, prompt, timings"
    )
    search.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="CONDITION",
        help="filter on a declared field: FIELD=VALUE, 'FIELD in A,B', FIELD<N (<=, >, >=); repeat to AND",
    )
    search.add_argument("--json", action="store_true", help="print the whole response as JSON")
    search.add_argument("--timeout", type=float, default=120.0, help="deadline in seconds")
    search.add_argument("--address", default=DEFAULT_ADDRESS)
    search.set_defaults(handler=_search)

    collections = commands.add_parser("collections", help="create, list and inspect collections")
    collection_commands = collections.add_subparsers(
        dest="collections_command", required=True, metavar="SUBCOMMAND"
    )
    create = collection_commands.add_parser("create", help="create a collection with explicit settings")
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
    listing = collection_commands.add_parser("list", help="names of all collections")
    info = collection_commands.add_parser("info", help="size, settings and models of one collection")
    info.add_argument("name")
    for sub in (create, listing, info):
        sub.add_argument("--address", default=DEFAULT_ADDRESS)
    collections.set_defaults(handler=_collections)

    evaluation = commands.add_parser(
        "eval", help="evaluate on CIRCO, CIRR or FashionIQ with the official protocols (metrics, report)"
    )
    _add_eval_arguments(evaluation)
    synthetic = commands.add_parser(
        "synthetic-dataset", help="write a tiny CIRCO / CIRR / FashionIQ split in its official layout"
    )
    _add_eval_arguments(synthetic, synthetic=True)

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
    if getattr(args, "profile", None) is None and "profile" in args:
        args.profile = os.environ.get("CIR_PROFILE") or None
    try:
        return int(args.handler(args))
    except ModuleNotFoundError as exc:
        print(
            f"cir: missing package {exc.name!r}; install the suite: scripts/install-dev.sh", file=sys.stderr
        )
        return 2
    except grpc.RpcError as exc:
        print(f"cir: {exc.code().name}: {exc.details()}", file=sys.stderr)  # type: ignore[attr-defined]
        return 1
    except (FileNotFoundError, NotADirectoryError) as exc:
        # The OS's own errors name the path; the suite's carry a message of their own.
        message = f"{exc.filename}: {exc.strerror.lower()}" if exc.filename and exc.strerror else exc
        print(f"cir: {message}", file=sys.stderr)
        return 2
    except ValueError as exc:  # UsageError: a command-line value to change
        print(f"cir: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # SuiteError and friends: a service did not start
        print(f"cir: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
