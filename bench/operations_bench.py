"""Operations overhead: search latency and throughput with metrics + tracing + TLS + API keys on versus off.

  .venv/bin/python bench/operations_bench.py --out bench/results/operations.json

Two local suites (tiny pack, real Redis) run side by side. `off` is the suite as shipped: plaintext, no
metrics, no tracing, no keys. `on` turns every operations feature on at once (`--features` picks some):
Prometheus metrics on every service (`metrics`), OTLP tracing to a receiver in a process of its own, as a
collector is (`tracing`; decoding the suite's spans in this process would slow the searches it times), TLS
on every gRPC port with mTLS between the retriever and the model services (`tls`), a TLS Redis with a
password (`redis-tls`), and API keys on the retriever (`keys`; the caller sends one, over TLS when `tls` is
on). Searches alternate between the two suites in short blocks, so that the drift of a loaded machine falls
on both alike, and every search has a reference image of its own (no cache hit decides a latency). After
the runs, every metrics endpoint is scraped and the received spans counted, so a
feature that silently stayed off cannot pass for a cheap one.

Keys (issue 16):
- `runs[]`: `strategy`, `mode` (off / on), `concurrency`, `searches`, `p50_ms`, `p95_ms`, `searches_per_s`,
  and `cpu_ms_per_search{}`: CPU milliseconds per search of each service (with the processes it started),
  Redis and the caller (Linux /proc; where the extra time of `on` goes).
- `overhead[]`: `strategy`, `concurrency`, `p50_slower_pct` (on against off), `searches_per_s_ratio`.
- `target_p50_slower_pct`: 3.0 (the issue's target).
- `checks`: `spans_received`, `metrics_endpoints_scraped`, `metrics_samples`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import secrets
import statistics
import tempfile
import time
import urllib.request
from collections import Counter as Tally
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trustme
from bench_images import random_gallery, random_png
from prometheus_client.parser import text_string_to_metric_families

from cir.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from cir_client.retriever import Credentials, connect, index_folder, search_request
from cir_common.vocabulary import SERVICES, TLS_CA_FILE_ENV, Service
from cir_tools.local_redis import RedisTls, free_port
from cir_tools.local_suite import LocalSuite
from cir_tools.otlp_sink import otlp_sink_process
from cir_tools.packs.tiny import build_tiny_pack
from cir_tools.termination import exit_on_sigterm

COLLECTION = "operations"
MODEL_SERVICES = (Service.ENCODER, Service.CAPTIONER, Service.REASONER)
TARGET_P50_SLOWER_PCT = 3.0


def _pem_files(ca: trustme.CA, folder: Path, role: str) -> tuple[str, str, str]:
    """cert.pem, key.pem (for 127.0.0.1) and ca.pem under folder/role."""
    target = folder / role
    target.mkdir(parents=True)
    issued = ca.issue_cert("127.0.0.1")
    (target / "cert.pem").write_bytes(issued.cert_chain_pems[0].bytes())
    (target / "key.pem").write_bytes(issued.private_key_pem.bytes())
    (target / "ca.pem").write_bytes(ca.cert_pem.bytes())
    return str(target / "cert.pem"), str(target / "key.pem"), str(target / "ca.pem")


# `tls`: TLS on every gRPC port, mTLS between the retriever and the model services; `redis-tls`: the cache
# over TLS with a password (rediss://). Apart, so that each one's cost can be told.
FEATURES = ("metrics", "tracing", "tls", "redis-tls", "keys")


@dataclass
class OnSuite:
    """The `on` suite's environment, its TLS Redis (None: plain), the caller's credentials, metrics ports."""

    env: dict[str, str] = field(default_factory=dict)
    redis_tls: RedisTls | None = None
    credentials: Credentials = field(default_factory=Credentials)
    metrics_ports: list[int] = field(default_factory=list)


def operations_on(
    workdir: Path, otlp_endpoint: str, features: Sequence[str] = FEATURES, sample_ratio: float = 1.0
) -> OnSuite:
    """The `on` suite with `features` turned on (all of them by default); traces of `sample_ratio` of the
    searches recorded (the standard parent-based ratio sampler: a search's spans are all kept or none)."""
    on = OnSuite()
    if "tracing" in features:
        on.env |= {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_endpoint}
        if sample_ratio < 1.0:
            on.env |= {
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": str(sample_ratio),
            }
    if "metrics" in features:
        for service in Service:
            port = free_port()
            on.metrics_ports.append(port)
            on.env[f"{SERVICES[service].env_prefix}METRICS_PORT"] = str(port)
    ca_file = ""
    ca = trustme.CA()
    pki = workdir / "pki"
    if "tls" in features:
        for service in Service:
            prefix = SERVICES[service].env_prefix
            cert, key, ca_file = _pem_files(ca, pki, service.value)
            on.env |= {f"{prefix}TLS_CERT_FILE": cert, f"{prefix}TLS_KEY_FILE": key}
            if service in MODEL_SERVICES:
                on.env[f"{prefix}TLS_CLIENT_CA_FILE"] = ca_file  # mTLS: only the retriever's certificate
        cert, key, ca_file = _pem_files(ca, pki, "downstream")
        on.env |= {
            "CIR_RETRIEVER_DOWNSTREAM_TLS_CA_FILE": ca_file,
            "CIR_RETRIEVER_DOWNSTREAM_TLS_CERT_FILE": cert,
            "CIR_RETRIEVER_DOWNSTREAM_TLS_KEY_FILE": key,
            TLS_CA_FILE_ENV: ca_file,  # the local suite's start-up probe checks the retriever's port with it
        }
    if "redis-tls" in features:
        on.redis_tls = RedisTls(*_pem_files(ca, pki, "redis"))
    key_text = ""
    if "keys" in features:
        key_text = secrets.token_urlsafe(32)
        keys_file = workdir / "keys.toml"
        digest = hashlib.sha256(key_text.encode()).hexdigest()
        entry = f'[[keys]]\nname = "bench"\nsha256 = "{digest}"\nrole = "admin"\n'
        keys_file.write_text(entry, encoding="utf-8")
        on.env["CIR_RETRIEVER_API_KEYS_FILE"] = str(keys_file)
    on.credentials = Credentials(api_key=key_text, tls_ca_file=ca_file)
    return on


def _search(
    stub: retriever_pb2_grpc.RetrieverServiceStub, strategy: str, image: bytes
) -> tuple[float, retriever_pb2.SearchResponse]:
    request = search_request(COLLECTION, "the same but brighter", strategy=strategy, top_k=10)
    request.reference_image.data = image
    started = time.perf_counter()
    response = stub.Search(request, timeout=120)
    return (time.perf_counter() - started) * 1000.0, response


def _block(
    stub: retriever_pb2_grpc.RetrieverServiceStub, strategy: str, images: list[bytes], concurrency: int
) -> tuple[list[float], float]:
    """Latencies (ms) of searches over `images` with `concurrency` callers, and the block's wall time (s)."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(lambda image: _search(stub, strategy, image), images))
    for _, response in results:
        if response.degradations:
            raise RuntimeError(f"a {strategy} search degraded: {list(response.degradations)}")
    return [latency for latency, _ in results], time.perf_counter() - started


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def compare(
    stubs: dict[str, retriever_pb2_grpc.RetrieverServiceStub],
    suites: dict[str, LocalSuite],
    strategy: str,
    concurrency: int,
    searches: int,
    block: int,
    seed: int,
) -> list[dict]:
    """Alternating blocks of `block` searches on each suite, `searches` in all per suite; one row per mode,
    with the CPU each process of the suite (and the caller, this process) spent per search."""
    rng = np.random.default_rng(seed)
    latencies: dict[str, list[float]] = {mode: [] for mode in stubs}
    seconds: dict[str, float] = dict.fromkeys(stubs, 0.0)
    cpu_s: dict[str, Tally[str]] = {mode: Tally() for mode in stubs}
    for first in range(0, searches, block):
        images = [random_png(rng) for _ in range(min(block, searches - first))]
        # The same images for both, in an order that alternates which suite goes first.
        order = list(stubs) if (first // block) % 2 == 0 else list(reversed(stubs))
        for mode in order:
            before, caller = suites[mode].cpu_seconds(), time.process_time()
            measured, wall = _block(stubs[mode], strategy, images, concurrency)
            cpu_s[mode]["caller"] += time.process_time() - caller
            cpu_s[mode].update({p: s - before.get(p, 0.0) for p, s in suites[mode].cpu_seconds().items()})
            latencies[mode] += measured
            seconds[mode] += wall
    return [
        {
            "strategy": strategy,
            "mode": mode,
            "concurrency": concurrency,
            "searches": len(latencies[mode]),
            "p50_ms": round(_percentile(latencies[mode], 50), 2),
            "p95_ms": round(_percentile(latencies[mode], 95), 2),
            "searches_per_s": round(len(latencies[mode]) / seconds[mode], 2),
            "cpu_ms_per_search": {
                process: round(used * 1000.0 / len(latencies[mode]), 3)
                for process, used in sorted(cpu_s[mode].items())
            },
        }
        for mode in stubs
    ]


def _scrape(ports: list[int]) -> tuple[int, int]:
    """(endpoints that answered, samples parsed) over the `on` suite's metrics ports."""
    answered = samples = 0
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            families = list(text_string_to_metric_families(reply.read().decode("utf-8")))
        answered += 1
        samples += sum(len(family.samples) for family in families)
    return answered, samples


def main() -> None:
    exit_on_sigterm()  # a killed bench still stops the processes it started
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench/results/operations.json")
    parser.add_argument("--strategies", default="image_only,lincir")
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--searches", type=int, default=120, help="per suite, strategy and concurrency")
    parser.add_argument("--block", type=int, default=10, help="searches per alternating block")
    parser.add_argument("--gallery", type=int, default=24)
    parser.add_argument(
        "--features",
        default=",".join(FEATURES),
        help="what `on` turns on (default all): " + ", ".join(FEATURES),
    )
    parser.add_argument(
        "--trace-sample-ratio",
        type=float,
        default=1.0,
        help="share of searches traced (default 1: every one); production usually samples, e.g. 0.1",
    )
    args = parser.parse_args()
    features = [f for f in args.features.split(",") if f]
    unknown = set(features) - set(FEATURES)
    if unknown:
        parser.error(f"unknown features {sorted(unknown)}; choose from {', '.join(FEATURES)}")

    with (
        tempfile.TemporaryDirectory(prefix="cir-operations-bench-") as scratch,
        otlp_sink_process(Path(scratch)) as sink,
    ):
        work = Path(scratch)
        profile = build_tiny_pack(work / "tiny-pack", echo=None)
        on = operations_on(work, sink.endpoint, features, args.trace_sample_ratio)
        suites = {
            "off": LocalSuite(profile=profile, workdir=work / "off"),
            "on": LocalSuite(
                profile=profile,
                workdir=work / "on",
                extra_env=on.env,
                redis_tls=on.redis_tls,
                redis_password=secrets.token_urlsafe(16) if on.redis_tls else None,
            ),
        }
        try:
            for suite in suites.values():
                suite.start(timeout_s=900)
            stubs = {
                "off": connect(suites["off"].retriever_address, Credentials()),
                "on": connect(suites["on"].retriever_address, on.credentials),
            }
            gallery = random_gallery(work / "gallery", args.gallery, seed=11)
            for mode, stub in stubs.items():
                summary = index_folder(stub, COLLECTION, gallery)
                if summary.failures:
                    raise RuntimeError(f"{mode}: indexing failed: {summary.failures[:3]}")
            runs: list[dict] = []
            for seed, strategy in enumerate(args.strategies.split(",")):
                for concurrency in (int(c) for c in args.concurrency.split(",")):
                    _block(stubs["off"], strategy, [random_png(np.random.default_rng(99))] * 4, 1)  # warm-up
                    _block(stubs["on"], strategy, [random_png(np.random.default_rng(99))] * 4, 1)
                    rows = compare(stubs, suites, strategy, concurrency, args.searches, args.block, seed)
                    runs += rows
                    print(json.dumps(rows), flush=True)
            endpoints, samples = _scrape(on.metrics_ports)
        finally:
            for suite in suites.values():
                suite.stop()  # flushes every process's spans to the sink
        spans = sum(sink.stop().values())

    overhead = []
    for off in (r for r in runs if r["mode"] == "off"):
        on = next(
            r
            for r in runs
            if r["mode"] == "on"
            and (r["strategy"], r["concurrency"]) == (off["strategy"], off["concurrency"])
        )
        overhead.append(
            {
                "strategy": off["strategy"],
                "concurrency": off["concurrency"],
                "p50_slower_pct": round((on["p50_ms"] / off["p50_ms"] - 1.0) * 100.0, 2),
                "searches_per_s_ratio": round(on["searches_per_s"] / off["searches_per_s"], 3),
            }
        )
    result = {
        "features": features,
        "trace_sample_ratio": args.trace_sample_ratio,
        "runs": runs,
        "overhead": overhead,
        "target_p50_slower_pct": TARGET_P50_SLOWER_PCT,
        "checks": {
            "spans_received": spans,
            "metrics_endpoints_scraped": endpoints,
            "metrics_samples": samples,
        },
        "machine": {"python": platform.python_version(), "cpus": _cpus()},
        "median_p50_slower_pct": round(statistics.median(o["p50_slower_pct"] for o in overhead), 2),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result["overhead"], indent=2))
    print(f"written: {out}")


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
