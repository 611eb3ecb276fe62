"""The world pack: build time per stage, CVSI latency per stage with trained models, and the quality table.

  .venv/bin/python bench/world_bench.py --out bench/results/world.json

Builds the world pack from scratch in a fresh folder (`--pack DIR` reuses or resumes one instead), writes
the world's heldout CIRR-layout val split, starts the suite on the pack and runs `cir eval` of every
strategy and variant through it (`cir_tools.world.quality`). Then it times CVSI searches one at a time
with `explain`, which returns each stage's duration, before the table runs (afterwards every query's
captions, edits and embeddings would come from the cache).

Keys (issue 17):
- `build_s{}`: seconds per stage (clip, mapping, captioner, llm) and `total`; `build_cached` says whether a
  stage came from the cache (then its seconds are those of the build that made it).
- `cvsi_stage_ms{}`: median milliseconds per stage over the timed searches; `cvsi_end_to_end_ms_p50`.
- `quality{strategy: {metric: value}}`: percent, on the CIRR-layout val split; `recall_at_1`,
  `recall_at_5`, `recall_at_10`, `recall_subset_at_1`, for every row of the table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from cir_client.retriever import connect, search_request
from cir_evaluation.datasets import load_split
from cir_evaluation.model import DatasetName, Split
from cir_evaluation.runner import collection_name, ingest_gallery
from cir_tools.local_suite import LocalSuite
from cir_tools.packs.world import build_report, build_world_pack
from cir_tools.termination import exit_on_sigterm
from cir_tools.world.datasets import write_world_dataset
from cir_tools.world.quality import QUALITY_ROWS, markdown_table, quality_table

METRICS = ("recall_at_1", "recall_at_5", "recall_at_10", "recall_subset_at_1")


def main() -> None:
    exit_on_sigterm()  # a killed bench still stops the processes it started
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--pack", default=None, help="world pack folder (default: a fresh one, built now)")
    parser.add_argument("--gallery-size", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=300, help="queries of the split (all are evaluated)")
    parser.add_argument("--timed-searches", type=int, default=30, help="CVSI searches timed one at a time")
    parser.add_argument("--rows", default=None, help="comma-separated table rows (default: all)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="world-bench-") as scratch:
        work = Path(scratch)
        pack = Path(args.pack) if args.pack else work / "pack"
        started = time.perf_counter()
        profile = build_world_pack(pack)
        build_wall_s = time.perf_counter() - started
        report = build_report(pack)

        root = write_world_dataset(
            DatasetName.CIRR,
            work / "cirr",
            Split.VAL,
            gallery_size=args.gallery_size,
            num_queries=args.queries,
        )
        rows = [r for r in QUALITY_ROWS if args.rows is None or r.label in args.rows.split(",")]
        suite = LocalSuite(profile=profile, workdir=work / "suite")
        suite.start(timeout_s=900)
        try:
            # Timed first, on a freshly ingested gallery: after the table every query's captions, edits and
            # embeddings would come from the cache.
            latency = time_cvsi(suite.retriever_address, root, args.timed_searches)
            table = quality_table(suite.retriever_address, root, work / "eval", rows, echo=print)
        finally:
            suite.stop()

    result = {
        "build_s": {name: entry["seconds"] for name, entry in report.items()}
        | {"total": round(sum(entry["seconds"] for entry in report.values()), 3)},
        "build_cached": {name: entry["cached"] for name, entry in report.items()},
        "build_wall_s": round(build_wall_s, 3),
        **latency,
        "quality": {label: {m: values[m] for m in METRICS if m in values} for label, values in table.items()},
        "split": {
            "dataset": "cirr",
            "split": "val",
            "gallery_size": args.gallery_size,
            "queries": args.queries,
        },
        "machine": {"cpus": _cpus(), "platform": platform.platform()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(markdown_table(result["quality"], METRICS))
    print(
        json.dumps({k: result[k] for k in ("build_s", "cvsi_stage_ms", "cvsi_end_to_end_ms_p50")}, indent=2)
    )
    print(f"wrote {out}")


def time_cvsi(address: str, root: Path, searches: int) -> dict[str, object]:
    """CVSI searches by reference id over the ingested split, one at a time, with per-stage timings."""
    split = load_split(DatasetName.CIRR, root, Split.VAL)
    collection = collection_name("world", split, "")
    stub = connect(address)
    with tempfile.TemporaryDirectory(prefix="world-bench-ingest-") as journal:
        ingest_gallery(stub, collection, split.galleries[""], Path(journal), print)
    stages: dict[str, list[float]] = defaultdict(list)
    totals: list[float] = []
    for query in split.queries[:searches]:
        request = search_request(
            collection,
            query.text,
            reference_id=query.reference_id,
            strategy="cvsi",
            preset="cirr",
            explain=True,
        )
        started = time.perf_counter()
        response = stub.Search(request, timeout=300)
        totals.append((time.perf_counter() - started) * 1000)
        for timing in response.timings:
            stages[timing.stage].append(timing.milliseconds)
    return {
        "cvsi_stage_ms": {stage: round(statistics.median(values), 2) for stage, values in stages.items()},
        "cvsi_end_to_end_ms_p50": round(statistics.median(totals), 2),
        "cvsi_timed_searches": len(totals),
    }


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
