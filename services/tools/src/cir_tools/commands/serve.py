"""`cir serve`: run the four services and a Redis cache on loopback until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from cir_common.vocabulary import RETRIEVER, SERVICES
from cir_tools.commands._suite import add_profile_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_profile_argument(parser)
    parser.add_argument(
        "--workdir", default="out/serve", help="logs, gallery store and the tiny pack go here"
    )
    parser.add_argument("--no-redis", action="store_true", help="use in-process caches instead of Redis")
    parser.add_argument(
        "--store",
        choices=("local", "milvus"),
        default="local",
        help="gallery store: local files, or a local Milvus engine (milvus-lite), as replicas use it",
    )
    ports = sorted(identity.default_port for identity in SERVICES.values())
    defaults = f"{ports[0]}-{ports[-1]} (retriever {RETRIEVER.default_port})"
    parser.add_argument(
        "--any-ports", action="store_true", help=f"free ports instead of the defaults {defaults}"
    )


def run(args: argparse.Namespace) -> int:
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
