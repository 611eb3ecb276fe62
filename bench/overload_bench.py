"""Overload benchmark: goodput of the whole suite as callers pile up, and throughput through a Redis outage.

  .venv/bin/python bench/overload_bench.py --out bench/results/overload.json

Runs the four services with the tiny pack on this machine (Redis, the vLLM CPU engine, loopback gRPC),
indexes a small gallery, then, for image_only and cvsi, keeps 1, 4, 16 and 64 callers busy for a fixed
time each (closed loop: a caller sends its next search when the previous one ends). Every search has a
new reference image, so no stage is answered from a cache, and a deadline. A caller told
RESOURCE_EXHAUSTED waits for the retry hint the server sent (trailing metadata) before trying again, as a
well-behaved client does.

Keys (issue 14):
- `goodput[]`: `strategy`, `concurrency`, `ok_per_s` (searches answered OK with nothing degraded, per second
  of the run), `p50_ms` / `p99_ms` (latency of those), `resource_exhausted` (calls refused at admission).
- `redis_outage`: `ok_per_s_up`, `ok_per_s_down`, `ok_per_s_none` (bench/redis_outage.py).
`goodput_detail[]` adds, per run, every other status and the OK-but-degraded searches, so nothing is hidden.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import platform
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from bench_images import random_gallery, random_png

from cir.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from cir_client.retriever import STRATEGIES, connect, index_folder
from cir_tools.local_suite import LocalSuite
from cir_tools.packs.tiny import build_tiny_pack
from cir_tools.termination import exit_on_sigterm

COLLECTION = "overload"
RETRY_HINT_HEADERS = ("x-cir-retry-after-ms", "grpc-retry-pushback-ms")
DEFAULT_RETRY_MS = 100.0


@dataclass
class RunCounts:
    ok_ms: list[float] = field(default_factory=list)
    degraded: int = 0
    codes: collections.Counter[str] = field(default_factory=collections.Counter)


def _retry_after_s(error: grpc.aio.AioRpcError) -> float:
    for key, value in error.trailing_metadata() or ():
        if key in RETRY_HINT_HEADERS:
            try:
                return float(value) / 1000.0
            except ValueError:
                pass
    return DEFAULT_RETRY_MS / 1000.0


async def _caller(
    stub: retriever_pb2_grpc.RetrieverServiceStub,
    strategy: str,
    deadline_s: float,
    stop_at: float,
    seed: int,
    counts: RunCounts,
) -> None:
    rng = np.random.default_rng(seed)
    words = ["red", "blue", "larger", "smaller", "striped", "at night", "on grass", "two of them"]
    pick = random.Random(seed)
    while time.monotonic() < stop_at:
        request = retriever_pb2.SearchRequest(
            collection=COLLECTION,
            modification_text=f"the same but {pick.choice(words)} {pick.randrange(10**6)}",
            strategy=STRATEGIES[strategy],
            top_k=10,
        )
        request.reference_image.data = random_png(rng)
        started = time.perf_counter()
        try:
            response = await stub.Search(request, timeout=deadline_s)
        except grpc.aio.AioRpcError as error:
            counts.codes[error.code().name] += 1
            if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                await asyncio.sleep(min(_retry_after_s(error), max(0.0, stop_at - time.monotonic())))
            continue
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        counts.codes["OK"] += 1
        if response.degradations:
            counts.degraded += 1
        else:
            counts.ok_ms.append(elapsed_ms)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(float(np.percentile(np.asarray(values), q)), 1)


async def _run(address: str, strategy: str, concurrency: int, seconds: float, deadline_s: float) -> dict:
    counts = RunCounts()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = retriever_pb2_grpc.RetrieverServiceStub(channel)
        started = time.monotonic()
        stop_at = started + seconds
        await asyncio.gather(
            *(
                _caller(stub, strategy, deadline_s, stop_at, 1000 * concurrency + i, counts)
                for i in range(concurrency)
            )
        )
        # Callers finish the search they had started; the rate counts the whole time they ran.
        elapsed = time.monotonic() - started
    ok = len(counts.ok_ms)
    summary = {
        "strategy": strategy,
        "concurrency": concurrency,
        "ok_per_s": round(ok / elapsed, 3),
        "p50_ms": _percentile(counts.ok_ms, 50),
        "p99_ms": _percentile(counts.ok_ms, 99),
        "resource_exhausted": counts.codes["RESOURCE_EXHAUSTED"],
    }
    detail = {
        "strategy": strategy,
        "concurrency": concurrency,
        "seconds": round(elapsed, 1),
        "deadline_s": deadline_s,
        "ok_not_degraded": ok,
        "ok_degraded": counts.degraded,
        "codes": dict(counts.codes),
        "median_ok_ms": round(statistics.median(counts.ok_ms), 1) if counts.ok_ms else None,
    }
    return {"summary": summary, "detail": detail}


def bench_goodput(
    profile: Path,
    workdir: Path,
    strategies: list[str],
    concurrencies: list[int],
    seconds: dict[str, float],
    deadlines: dict[str, float],
) -> tuple[list[dict], list[dict]]:
    suite = LocalSuite(profile=profile, workdir=workdir / "suite")
    suite.start(timeout_s=600)
    goodput: list[dict] = []
    details: list[dict] = []
    try:
        stub = connect(suite.retriever_address)
        index_folder(stub, COLLECTION, random_gallery(workdir / "gallery", 32, seed=7))
        for strategy in strategies:
            # One untimed search first: the first call of each stage loads lazily.
            asyncio.run(_run(suite.retriever_address, strategy, 1, 0.1, deadlines[strategy] * 3))
            for concurrency in concurrencies:
                result = asyncio.run(
                    _run(
                        suite.retriever_address, strategy, concurrency, seconds[strategy], deadlines[strategy]
                    )
                )
                print(json.dumps(result), flush=True)
                goodput.append(result["summary"])
                details.append(result["detail"])
    finally:
        suite.stop()
    return goodput, details


def main() -> None:
    exit_on_sigterm()  # a killed bench still stops the processes it started
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="bench/results/overload.json")
    parser.add_argument("--concurrency", default="1,4,16,64", help="comma-separated caller counts")
    parser.add_argument("--strategies", default="image_only,cvsi", help="comma-separated strategies")
    parser.add_argument("--seconds-image-only", type=float, default=20.0)
    parser.add_argument("--seconds-cvsi", type=float, default=60.0)
    parser.add_argument("--deadline-image-only", type=float, default=2.0, help="per-search deadline (s)")
    parser.add_argument("--deadline-cvsi", type=float, default=10.0, help="per-search deadline (s)")
    parser.add_argument("--skip-redis-outage", action="store_true")
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    results: dict = {"machine": {"python": platform.python_version(), "cpus": _cpus()}}
    with tempfile.TemporaryDirectory() as tmp:
        profile = build_tiny_pack(Path(tmp) / "pack", echo=None)
        goodput, details = bench_goodput(
            profile,
            Path(tmp),
            args.strategies.split(","),
            concurrencies,
            {"image_only": args.seconds_image_only, "cvsi": args.seconds_cvsi},
            {"image_only": args.deadline_image_only, "cvsi": args.deadline_cvsi},
        )
        results["goodput"] = goodput
        results["goodput_detail"] = details
        if not args.skip_redis_outage:
            from redis_outage import measure_redis_outage  # bench/ is on sys.path when run as a script

            results["redis_outage"] = measure_redis_outage(profile, Path(tmp) / "outage")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
