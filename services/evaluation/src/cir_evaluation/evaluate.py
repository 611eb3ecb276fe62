"""`cir eval`: one evaluation run from dataset files to metrics, rankings, submissions, report and sweeps.

Two halves: `collect` calls the suite (ingestion, queries) and fills the cache; `score` works from the
cache alone, so re-scoring with other weights (or a sweep) makes no model call.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cir.retriever.v1 import retriever_pb2
from cir_evaluation import report, submissions
from cir_evaluation.datasets import load_split
from cir_evaluation.feature_cache import (
    QueryCache,
    QueryRecord,
    gallery_cache_path,
    gallery_has_targets,
    input_signature,
    load_gallery,
    save_gallery,
)
from cir_evaluation.metrics import compute_metrics
from cir_evaluation.model import DatasetName, EvalSplit, Query, QueryOutcome, Split
from cir_evaluation.rescoring import Gallery, Ranked, ldre_weights, rank_queries
from cir_evaluation.runner import (
    Echo,
    SearchTemplate,
    SuiteStarter,
    collection_name,
    export_gallery,
    ingest_gallery,
    retriever_stub,
    run_queries,
)
from cir_evaluation.sweep import SweepRow, parse_sweep, run_sweep
from cir_retriever.conversions import PRESET_TO_PROTO, STRATEGY_TO_PROTO, resolve_options_from_proto
from cir_retriever.presets import PRESETS, Preset
from cir_retriever.strategies import Options, StrategyName

# Depth of the saved rankings and of the service's answers: the deepest official cut-off is 50 (CIRR
# removes the reference afterwards, hence one more).
RANKING_DEPTH = 51


def scoring_plan(
    dataset: DatasetName, queries: Sequence[Query]
) -> tuple[int, dict[str, tuple[str, ...]] | None]:
    """How much of each ranking the metrics read: the deepest cut-off (CIRR removes the reference first,
    hence RANKING_DEPTH = 51), and for CIRR also its image-set members wherever they rank, which is all
    that subset recall needs (so no query sorts its whole gallery)."""
    if dataset is DatasetName.CIRR:
        return RANKING_DEPTH, {q.id: q.subset for q in queries}
    return RANKING_DEPTH, None


HEADLINE = {
    DatasetName.CIRCO: "mAP@10",
    DatasetName.CIRR: "Recall@1",
    DatasetName.FASHIONIQ: "average.R@10",
}


@dataclass
class EvalConfig:
    dataset: DatasetName
    root: Path
    split: Split
    out: Path
    strategy: StrategyName = StrategyName.CVSI
    preset: Preset | None = None  # None: the dataset's own preset
    weights: dict[str, float] = field(default_factory=dict)
    options: retriever_pb2.StrategyOptions = field(default_factory=retriever_pb2.StrategyOptions)
    ldre_form: str | None = None  # "mean" or "weighted"; None: the preset's
    address: str | None = None
    profile: Path | None = None
    collection_prefix: str = "eval"
    concurrency: int = 4
    timeout_s: float = 600.0
    max_queries: int | None = None
    rescore_only: bool = False
    sweep: str | None = None
    report_top_k: int = 10
    report_max_queries: int | None = 200

    @property
    def resolved_preset(self) -> Preset:
        return self.preset or Preset(self.dataset.value)

    def weights_proto(self) -> retriever_pb2.Weights:
        return retriever_pb2.Weights(**self.weights)

    def resolved_options(self) -> Options:
        return resolve_options_from_proto(self.resolved_preset, self.weights_proto(), self.options)

    def resolved_ldre_form(self) -> str:
        return self.ldre_form or PRESETS[self.resolved_preset].ldre_form


def _queries(split: EvalSplit, limit: int | None) -> tuple[Query, ...]:
    return split.queries if limit is None else split.queries[:limit]


def collect(
    config: EvalConfig, split: EvalSplit, echo: Echo, start_suite: SuiteStarter | None = None
) -> None:
    """Ingest the galleries, export their features and run the queries through the suite (resumable).

    Without `config.address`, `start_suite` runs a local suite for the duration."""
    queries = _queries(split, config.max_queries)
    template = SearchTemplate(
        strategy=STRATEGY_TO_PROTO[config.strategy],
        preset=PRESET_TO_PROTO[config.resolved_preset],
        weights=config.weights_proto(),
        options=config.options,
        top_k=RANKING_DEPTH,
        timeout_s=config.timeout_s,
    )
    cache = QueryCache(config.out, input_signature(config.strategy, config.resolved_options()))
    with retriever_stub(config.address, config.profile, config.out, echo, start_suite) as stub:
        collections = {}
        for key, items in split.galleries.items():
            name = collection_name(config.collection_prefix, split, key)
            collections[key] = name
            ingest_gallery(stub, name, items, config.out, echo)
            path = gallery_cache_path(config.out, key)
            stale = (
                config.strategy is StrategyName.INSTRUCTCIR
                and path.exists()
                and not gallery_has_targets(path)
            )
            if stale or not path.exists():  # instructcir ranks against the targets: export them too
                gallery = export_gallery(stub, name)
                save_gallery(path, gallery.ids, gallery.features)
        started = time.perf_counter()
        # instructcir embeds the reference image with the text: its bytes go with each query.
        paths = (
            {item.id: item.path for items in split.galleries.values() for item in items}
            if config.strategy is StrategyName.INSTRUCTCIR
            else None
        )
        run_queries(stub, queries, collections, template, cache, config.concurrency, echo, paths)
        echo(f"queries ran in {time.perf_counter() - started:.1f} s")


def _load_cache(config: EvalConfig, split: EvalSplit) -> tuple[dict[str, QueryRecord], dict[str, Gallery]]:
    queries = _queries(split, config.max_queries)
    cache = QueryCache(config.out, input_signature(config.strategy, config.resolved_options()))
    records = cache.load()
    missing = [q.id for q in queries if q.id not in records]
    if missing:
        raise FileNotFoundError(
            f"{cache.path} lacks {len(missing)} of {len(queries)} queries (e.g. {missing[0]!r}): run "
            f"`cir eval` without --rescore-only for strategy {config.strategy.value} with these options first"
        )
    galleries = {}
    for key in split.galleries:
        path = gallery_cache_path(config.out, key)
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run `cir eval` without --rescore-only first")
        ids, features = load_gallery(path)
        galleries[key] = Gallery(ids=ids, features=features)
    return {q.id: records[q.id] for q in queries}, galleries


def _sizes(galleries: Mapping[str, Gallery]) -> dict[str, int]:
    return {key: len(g.ids) for key, g in galleries.items()}


def _flat(metrics: Mapping[str, object], prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for name, value in metrics.items():
        if isinstance(value, Mapping):
            flat.update(_flat(value, f"{prefix}{name}."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[f"{prefix}{name}"] = float(value)
    return flat


def score(config: EvalConfig, split: EvalSplit, echo: Echo) -> dict[str, object]:
    """Rankings, metrics, submissions, report (and sweep) from the cache alone."""
    started = time.perf_counter()
    queries = _queries(split, config.max_queries)
    records, galleries = _load_cache(config, split)
    options = config.resolved_options()
    gallery_of = {q.id: q.category for q in queries}
    weights = None
    summary: dict[str, object] = {
        "dataset": config.dataset.value,
        "split": config.split.value,
        "strategy": config.strategy.value,
        "preset": config.resolved_preset.value,
        "options": {
            k: (v if isinstance(v, int | float | bool) else str(v)) for k, v in asdict(options).items()
        },
        "queries": len(queries),
        "gallery_sizes": {key or "all": len(g.ids) for key, g in galleries.items()},
    }
    if config.strategy is StrategyName.LDRE and config.resolved_ldre_form() == "weighted":
        slot = ldre_weights(records, galleries, gallery_of)
        weights = slot.weights
        summary["ldre_adaptive_weights"] = {
            "weights": [round(float(w), 6) for w in weights],
            "queries_used": slot.queries_used,
            "queries_with_mean_form": slot.queries_skipped,
        }
    depth, keep = scoring_plan(config.dataset, queries)
    ranked = rank_queries(config.strategy, options, records, galleries, gallery_of, depth, weights, keep)
    summary["service_agreement"] = (
        _agreement(ranked, records) if weights is None else "n/a (adaptive weights)"
    )
    summary["degraded_queries"] = sum(1 for r in records.values() if r.degradations)
    rankings = {q: r.ids for q, r in ranked.items()}
    if config.split is Split.VAL:
        summary["metrics"] = compute_metrics(config.dataset, rankings, queries, _sizes(galleries))
    else:
        paths = submissions.write_submissions(config.dataset, config.out / "submissions", rankings, queries)
        summary["submissions"] = [str(p.relative_to(config.out)) for p in paths]
    _write_rankings(config.out / "rankings.jsonl", queries, ranked)
    outcomes = [_outcome(q, ranked[q.id], records[q.id]) for q in queries]  # the report shows a top-k only
    title = f"{config.dataset.value} {config.split.value} - {config.strategy.value}"
    settings = {k: str(v) for k, v in summary.items() if k in ("strategy", "preset", "queries", "options")}
    report.write_report(
        config.out,
        split,
        outcomes,
        summary.get("metrics", {}),  # type: ignore[arg-type]
        title=title,
        settings=settings,
        top_k=config.report_top_k,
        max_queries=config.report_max_queries,
    )
    summary["scoring_seconds"] = round(time.perf_counter() - started, 3)
    if config.sweep:
        if config.split is not Split.VAL:
            raise ValueError("--sweep needs ground truth: use --split val")
        summary["sweep"] = _sweep(config, queries, records, galleries, gallery_of, options, echo)
    (config.out / "metrics.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def _agreement(ranked: Mapping[str, Ranked], records: Mapping[str, QueryRecord]) -> dict[str, object]:
    """How often the offline ranking's top ids equal the service's answer (a check of the re-scoring)."""
    same = 0
    for query_id, record in records.items():
        depth = len(record.service_ranking)
        same += ranked[query_id].ids[:depth] == record.service_ranking
    return {"same_top_ids": same, "of": len(records)}


def _outcome(query: Query, ranked: Ranked, record: QueryRecord) -> QueryOutcome:
    return QueryOutcome(
        query_id=query.id,
        ranking=ranked.ids,
        scores=ranked.scores,
        captions=record.captions,
        edited_captions=record.edited_captions,
        added_objects=record.added_objects,
        degradations=record.degradations,
    )


def _write_rankings(path: Path, queries: Sequence[Query], ranked: Mapping[str, Ranked]) -> None:
    with path.open("w", encoding="utf-8") as out:
        for query in queries:
            result = ranked[query.id]
            truth = set(query.ground_truth)
            first_hit = next((i + 1 for i, image in enumerate(result.ids) if image in truth), None)
            kept = result.ids[:RANKING_DEPTH]
            row = {
                "query_id": query.id,
                "reference_id": query.reference_id,
                "text": query.text,
                "ground_truth": list(query.ground_truth),
                "first_ground_truth_rank": first_hit,
                "ranking": kept,
                "scores": [round(s, 6) for s in result.scores[: len(kept)]],
            }
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


def _sweep(
    config: EvalConfig,
    queries: Sequence[Query],
    records: Mapping[str, QueryRecord],
    galleries: Mapping[str, Gallery],
    gallery_of: Mapping[str, str],
    options: Options,
    echo: Echo,
) -> dict[str, object]:
    grid = parse_sweep(config.sweep or "")
    depth, keep = scoring_plan(config.dataset, queries)
    started = time.perf_counter()
    rows = run_sweep(
        config.strategy,
        options,
        grid,
        records,
        galleries,
        gallery_of,
        depth,
        lambda ranked: compute_metrics(
            config.dataset, {q: r.ids for q, r in ranked.items()}, queries, _sizes(galleries)
        ),
        keep,
    )
    seconds = time.perf_counter() - started
    folder = config.out / "sweep"
    folder.mkdir(parents=True, exist_ok=True)
    headline = HEADLINE[config.dataset]
    table = _write_sweep_table(folder / "sweep.csv", list(grid), rows)
    best = max((r for r in rows if r.metrics), key=lambda r: _flat(r.metrics)[headline], default=None)
    figures = []
    names = list(grid)
    if len(names) >= 2 and best is not None:
        figures.append(_heatmap(folder, names[0], names[1], grid, rows, best, headline))
    echo(f"sweep: {len(rows)} points re-scored from the cache in {seconds:.2f} s")
    return {
        "points": len(rows),
        "seconds": round(seconds, 3),
        "headline_metric": headline,
        "best": {"point": best.point, headline: _flat(best.metrics)[headline]} if best else None,
        "table": str(table.relative_to(config.out)),
        "figures": [str(f.relative_to(config.out)) for f in figures],
    }


def _write_sweep_table(path: Path, names: list[str], rows: Sequence[SweepRow]) -> Path:
    metric_names = sorted({m for r in rows for m in _flat(r.metrics)})
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow([*names, *metric_names])
        for row in rows:
            flat = _flat(row.metrics)
            values = [f"{flat[m]:.4f}" if m in flat else "" for m in metric_names]
            writer.writerow([*(row.point[n] for n in names), *values])
    return path


def _heatmap(
    folder: Path,
    x_name: str,
    y_name: str,
    grid: Mapping[str, Sequence[float]],
    rows: Sequence[SweepRow],
    best: SweepRow,
    headline: str,
) -> Path:
    """The headline metric over the first two swept weights, the others held at their best values."""
    others = {n: v for n, v in best.point.items() if n not in (x_name, y_name)}
    xs, ys = list(grid[x_name]), list(grid[y_name])
    values = np.full((len(ys), len(xs)), np.nan)
    for row in rows:
        if any(not math.isclose(row.point[n], v) for n, v in others.items()) or not row.metrics:
            continue
        values[ys.index(row.point[y_name]), xs.index(row.point[x_name])] = _flat(row.metrics)[headline]
    cell = (ys.index(best.point[y_name]), xs.index(best.point[x_name]))
    suffix = "".join(f"_{n}{v:g}" for n, v in others.items())
    return report.write_heatmap_svg(
        folder / f"heatmap_{headline.replace('@', 'at')}{suffix}.svg",
        x_name=x_name,
        x_values=xs,
        y_name=y_name,
        y_values=ys,
        values=values,
        metric=headline,
        best=cell,
    )


def evaluate(config: EvalConfig, echo: Echo, start_suite: SuiteStarter | None = None) -> dict[str, object]:
    split = load_split(config.dataset, config.root, config.split)
    config.out.mkdir(parents=True, exist_ok=True)
    if not config.rescore_only:
        collect(config, split, echo, start_suite)
    return score(config, split, echo)
