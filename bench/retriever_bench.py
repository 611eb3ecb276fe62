"""Retriever benchmarks: query latency per stage (concurrent vs sequential stages) and ingestion throughput
(the gallery store's search, writes and memory: bench/store_bench.py).

  .venv/bin/python bench/retriever_bench.py --out bench/results/retriever.json

The query and ingestion figures run the whole suite (four processes on loopback, Redis, the
vLLM CPU engine) with the tiny pack; every query uses a new reference image so that no stage is
served from a cache.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cir_client.retriever import connect, index_folder, search_request
from cir_tools.local_suite import LocalSuite
from cir_tools.packs.tiny import build_tiny_pack
from cir_tools.termination import exit_on_sigterm


def _random_images(folder: Path, count: int, seed: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        pixels = rng.integers(0, 256, (96 + i % 5 * 8, 96, 3), dtype=np.uint8)
        path = folder / f"img-{seed}-{i:04d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def _query_latencies(suite: LocalSuite, references: list[Path], label: str) -> dict:
    stub = connect(suite.retriever_address)
    totals: list[float] = []
    stages: dict[str, list[float]] = {}
    for i, path in enumerate(references):
        request = search_request("bench", f"the same but {label} variant {i}", image=path, strategy="cvsi")
        started = time.perf_counter()
        response = stub.Search(request, timeout=300)
        totals.append((time.perf_counter() - started) * 1000.0)
        for timing in response.timings:
            stages.setdefault(timing.stage, []).append(timing.milliseconds)
        assert not response.degradations, response.degradations
    return {
        "queries": len(totals),
        "end_to_end_ms_median": round(statistics.median(totals), 1),
        "end_to_end_ms_mean": round(statistics.mean(totals), 1),
        "stage_ms_median": {name: round(statistics.median(v), 1) for name, v in sorted(stages.items())},
    }


def bench_queries(profile: Path, workdir: Path, queries: int) -> dict:
    gallery = workdir / "gallery"
    _random_images(gallery, 48, seed=1)
    suite = LocalSuite(profile=profile, workdir=workdir / "suite")
    suite.start(timeout_s=600)
    try:
        stub = connect(suite.retriever_address)
        started = time.perf_counter()
        summary = index_folder(stub, "bench", gallery)
        elapsed = time.perf_counter() - started
        ingestion = {
            "images": summary.total,
            "seconds": round(elapsed, 2),
            "images_per_s": round(summary.total / elapsed, 2),
        }
        print(f"ingestion: {ingestion}", flush=True)
        _query_latencies(suite, _random_images(workdir / "warm", 2, seed=9), "warm-up")
        concurrent = _query_latencies(suite, _random_images(workdir / "q1", queries, seed=2), "concurrent")
        print(f"concurrent stages: {concurrent}", flush=True)
        suite.stop_service("retriever")
        suite.extra_env["CIR_RETRIEVER_SEQUENTIAL_STAGES"] = "true"
        suite.start_service("retriever")
        suite.wait_serving(120)
        sequential = _query_latencies(suite, _random_images(workdir / "q2", queries, seed=3), "sequential")
        print(f"sequential stages: {sequential}", flush=True)
    finally:
        suite.stop()
    ratio = sequential["end_to_end_ms_median"] / concurrent["end_to_end_ms_median"]
    return {
        "ingestion": ingestion,
        "cvsi_query_concurrent_stages": concurrent,
        "cvsi_query_sequential_stages": sequential,
        "sequential_over_concurrent_median_ratio": round(ratio, 2),
    }


def main() -> None:
    exit_on_sigterm()  # a killed bench still stops the processes it started
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="bench/results/retriever.json")
    parser.add_argument("--queries", type=int, default=8, help="cvsi queries per mode")
    args = parser.parse_args()
    results: dict = {"machine": {"python": platform.python_version()}}
    with tempfile.TemporaryDirectory() as tmp:
        profile = build_tiny_pack(Path(tmp) / "pack", echo=None)
        results.update(bench_queries(profile, Path(tmp), args.queries))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
