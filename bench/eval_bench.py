"""Evaluation re-scoring benchmarks: how long a re-score and a weight sweep take from the cache, at the
real datasets' sizes (CIRCO val: 220 queries x 123,403 images; CIRR val: 4,181 x 2,297), with random
features of dimension 768 (ViT-L/14) and N = 15 edited captions per query.

  .venv/bin/python bench/eval_bench.py --out bench/results/eval.json

No model runs here: the features are random, the timings are those of the arithmetic and the metrics.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from cir.retriever.v1 import retriever_pb2
from cir_evaluation.evaluate import scoring_plan
from cir_evaluation.feature_cache import QueryRecord
from cir_evaluation.metrics import compute_metrics
from cir_evaluation.model import DatasetName, Query
from cir_evaluation.rescoring import Gallery, rank_queries
from cir_evaluation.sweep import parse_sweep, run_sweep
from cir_retriever.conversions import resolve_options_from_proto
from cir_retriever.fusion import normalize
from cir_retriever.gallery.types import GalleryFeatures
from cir_retriever.presets import Preset
from cir_retriever.strategies import QueryInputs, StrategyName

DIM = 768


def _data(dataset: DatasetName, queries: int, gallery: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = [str(i) for i in range(gallery)]
    features = GalleryFeatures(
        t_v=normalize(rng.standard_normal((gallery, DIM), dtype=np.float32)),
        caption_mean=normalize(rng.standard_normal((gallery, DIM), dtype=np.float32)) * 0.7,
        caption_slots=np.zeros((gallery, 1, DIM), np.float32),
    )
    records, query_list = {}, []
    for q in range(queries):
        members = rng.choice(gallery, 6, replace=False)
        reference, target = ids[members[0]], ids[members[1]]
        gt = tuple(ids[m] for m in members[1:4])
        query_list.append(
            Query(
                id=str(q),
                reference_id=reference,
                text="t",
                target_id=target,
                ground_truth=gt if dataset is DatasetName.CIRCO else (target,),
                subset=tuple(ids[m] for m in members) if dataset is DatasetName.CIRR else (),
            )
        )
        records[str(q)] = QueryRecord(
            str(q),
            [],
            [],
            QueryInputs(
                image=rng.standard_normal(DIM, dtype=np.float32),
                pseudo_prompt=rng.standard_normal(DIM, dtype=np.float32),
                edits=rng.standard_normal((15, DIM), dtype=np.float32),
            ),
        )
    return records, query_list, {"": Gallery(ids, features)}


def bench(dataset: DatasetName, queries: int, gallery_size: int, sweep: str) -> dict:
    records, query_list, galleries = _data(dataset, queries, gallery_size)
    gallery_of = dict.fromkeys(records, "")
    options = resolve_options_from_proto(
        Preset(dataset.value), retriever_pb2.Weights(), retriever_pb2.StrategyOptions()
    )
    depth, keep = scoring_plan(dataset, query_list)
    started = time.perf_counter()
    ranked = rank_queries(StrategyName.CVSI, options, records, galleries, gallery_of, depth, keep=keep)
    metrics = compute_metrics(dataset, {q: r.ids for q, r in ranked.items()}, query_list)
    rescore_s = time.perf_counter() - started
    grid = parse_sweep(sweep)
    started = time.perf_counter()
    rows = run_sweep(
        StrategyName.CVSI,
        options,
        grid,
        records,
        galleries,
        gallery_of,
        depth,
        lambda r: compute_metrics(dataset, {q: x.ids for q, x in r.items()}, query_list),
        keep,
    )
    sweep_s = time.perf_counter() - started
    return {
        "dataset": dataset.value,
        "queries": queries,
        "gallery": gallery_size,
        "rescore_with_metrics_s": round(rescore_s, 3),
        "sweep": sweep,
        "sweep_points": len(rows),
        "sweep_points_scored": sum(1 for r in rows if r.metrics),
        "sweep_s": round(sweep_s, 2),
        "sweep_s_per_scored_point": round(sweep_s / max(1, sum(1 for r in rows if r.metrics)), 3),
        "headline_at_preset": metrics.get("mAP@10", metrics.get("Recall@1")),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench/results/eval.json")
    args = parser.parse_args()
    sweep = "alpha=0:1:0.1,beta=0:1:0.1"
    results = {
        "machine": {
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
        },
        "runs": [
            bench(DatasetName.CIRR, 4181, 2297, sweep),
            bench(DatasetName.CIRCO, 220, 123403, sweep),
        ],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
