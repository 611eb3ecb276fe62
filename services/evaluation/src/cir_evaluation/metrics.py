"""Retrieval metrics of CIRCO, CIRR and FashionIQ, computed the way the official evaluation code does.

Every number is a percentage (the fraction times 100), as the papers and the official scripts print them.
Rankings map a query id to its ranked gallery ids, best first; each must hold unique ids and be at least as
deep as the deepest cut-off asked for. Queries without ground truth (test splits) cannot be scored here:
their answers are withheld and only the official servers can score them (see `submissions`).

Protocols (method.md section 5):
- CIRCO (miccunifi/CIRCO src/evaluation.py, the code the test server runs): reference kept in the ranking,
  mAP@k over all ground truths, Recall@k over the single target image.
- CIRR (as in miccunifi/SEARLE src/validate.py and the CIRR test server): reference removed from the ranking,
  Recall@k over the target, Recall_subset@k over the ranking restricted to the query's image set.
- FashionIQ (as in miccunifi/SEARLE src/validate.py): Recall@k per category, reference kept; the headline is
  the plain mean of the per-category numbers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from cir_evaluation.model import FASHIONIQ_CATEGORIES, DatasetName, Query

CIRCO_KS: tuple[int, ...] = (5, 10, 25, 50)
CIRR_KS: tuple[int, ...] = (1, 5, 10, 50)
CIRR_SUBSET_KS: tuple[int, ...] = (1, 2, 3)
FASHIONIQ_KS: tuple[int, ...] = (10, 50)

# The official CIRCO server scores only the top 50 it receives.
CIRCO_DEPTH = 50


def check_unique(query_id: str, ranking: Sequence[str]) -> None:
    """Refuse a ranking that repeats an id: repeats would count one hit several times."""
    seen: set[str] = set()
    for image_id in ranking:
        if image_id in seen:
            raise ValueError(f"query {query_id!r}: ranking repeats gallery id {image_id!r}")
        seen.add(image_id)


def ranking_for(rankings: Mapping[str, Sequence[str]], query: Query) -> list[str]:
    """The query's ranking as a list of unique ids; ValueError when it is missing or repeats an id."""
    if query.id not in rankings:
        raise ValueError(f"query {query.id!r} has no ranking")
    ranking = list(rankings[query.id])
    check_unique(query.id, ranking)
    return ranking


def require_depth(query_id: str, ranking: Sequence[str], depth: int, what: str = "ranking") -> None:
    if len(ranking) < depth:
        raise ValueError(
            f"query {query_id!r}: {what} has {len(ranking)} ids but at least {depth} are needed; "
            "ask the retriever for more results"
        )


def require_ground_truth(query: Query, dataset: DatasetName) -> None:
    missing = not query.target_id or (dataset == DatasetName.CIRCO and not query.ground_truth)
    if missing:
        raise ValueError(
            f"query {query.id!r} has no ground truth: test splits cannot be scored locally, "
            "write a submission file for the official server instead"
        )


def require_queries(queries: Sequence[Query]) -> None:
    if not queries:
        raise ValueError("no queries to score")
    ids = [query.id for query in queries]
    if len(set(ids)) != len(ids):
        raise ValueError("query ids repeat; every query must appear once")


def cirr_ranking_without_reference(query: Query, ranking: Sequence[str]) -> list[str]:
    """CIRR ranking with the reference image removed (the reference is never a valid answer on CIRR)."""
    return [image_id for image_id in ranking if image_id != query.reference_id]


def cirr_subset_ranking(query: Query, ranking_without_reference: Sequence[str], depth: int) -> list[str]:
    """The ranking restricted to the query's image set (img_set.members), in ranking order.

    The reference must already be removed, so at most 5 of the 6 members remain. A truncated ranking is
    enough only if it already shows the first `depth` members (or every non-reference member): the order of
    the members it shows is then their true order.
    """
    if not query.subset:
        raise ValueError(f"query {query.id!r} has no image set (img_set.members); cannot rank the subset")
    members = set(query.subset)
    subset_ranking = [image_id for image_id in ranking_without_reference if image_id in members]
    needed = min(depth, len(members - {query.reference_id}))
    require_depth(
        query.id, subset_ranking, needed, what="subset ranking (image-set members found in the ranking)"
    )
    return subset_ranking


def needed_depth(depth: int, query: Query, gallery_sizes: Mapping[str, int] | None, removed: int = 0) -> int:
    """The ranking length a query needs: `depth`, or the whole gallery (less `removed`) when it is smaller."""
    if gallery_sizes is None or query.category not in gallery_sizes:
        return depth
    return min(depth, gallery_sizes[query.category] - removed)


def _mean_percent(values: Sequence[float]) -> float:
    return float(np.mean(values)) * 100.0


def circo_metrics(
    rankings: Mapping[str, Sequence[str]],
    queries: Sequence[Query],
    ks: Sequence[int] = CIRCO_KS,
    gallery_sizes: Mapping[str, int] | None = None,
) -> dict:
    """CIRCO mAP@k and Recall@k in percent, plus mAP@k per semantic aspect (val).

    As miccunifi/CIRCO src/evaluation.py: the reference stays in the ranking; over the top 50,
    hits = isin(top50, gt_img_ids), prec_i = cumsum(hits)_i * hits_i / i, AP@k = sum(prec[:k]) / min(|gt|, k),
    mAP@k = mean over queries. Recall@k counts only target_img_id. The official script reports the per-aspect
    breakdown at k = 10 only; here every k is given, over the queries that carry the aspect.

    Returns {"mAP@k": .., "Recall@k": .., "per_aspect": {aspect: {"mAP@k": .., "queries": n}}, "queries": n}.
    """
    require_queries(queries)
    depth = max(ks)
    aps: dict[int, list[float]] = defaultdict(list)
    recalls: dict[int, list[float]] = defaultdict(list)
    aspect_aps: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for query in queries:
        require_ground_truth(query, DatasetName.CIRCO)
        ranking = ranking_for(rankings, query)
        require_depth(query.id, ranking, needed_depth(depth, query, gallery_sizes))
        # Scored as the server scores a submission: its 50 ids, nothing deeper.
        top = np.array(ranking[: max(depth, CIRCO_DEPTH)], dtype=object)
        hits = np.isin(top, np.array(query.ground_truth, dtype=object))
        # Precision counts only at the positions of ground truths, so AP rewards each hit by its rank.
        precisions = np.cumsum(hits) * hits / np.arange(1, len(hits) + 1)
        is_target = top == query.target_id
        for k in ks:
            # min(|gt|, k) rather than |gt|: a perfect top-k scores 1 even when more ground truths exist.
            ap = float(np.sum(precisions[:k]) / min(len(query.ground_truth), k))
            aps[k].append(ap)
            recalls[k].append(float(np.sum(is_target[:k])))
            for aspect in query.semantic_aspects:
                aspect_aps[aspect][k].append(ap)

    result: dict = {f"mAP@{k}": _mean_percent(aps[k]) for k in ks}
    result.update({f"Recall@{k}": _mean_percent(recalls[k]) for k in ks})
    per_aspect: dict[str, dict] = {}
    for aspect in sorted(aspect_aps):
        entry: dict = {f"mAP@{k}": _mean_percent(aspect_aps[aspect][k]) for k in ks}
        entry["queries"] = len(aspect_aps[aspect][ks[0]])
        per_aspect[aspect] = entry
    result["per_aspect"] = per_aspect
    result["queries"] = len(queries)
    return result


def cirr_metrics(
    rankings: Mapping[str, Sequence[str]],
    queries: Sequence[Query],
    ks: Sequence[int] = CIRR_KS,
    subset_ks: Sequence[int] = CIRR_SUBSET_KS,
    gallery_sizes: Mapping[str, int] | None = None,
) -> dict:
    """CIRR Recall@k and Recall_subset@k in percent, with "Avg" = (Recall@5 + Recall_subset@1) / 2.

    As the official protocol (and miccunifi/SEARLE src/validate.py): the reference image is removed from the
    ranking first, then Recall@k checks target_hard in the top k; Recall_subset@k ranks only img_set.members
    (the reference already removed, so 5 remain) and checks the target in their top k.
    "Avg" is present only when 5 is in ks and 1 in subset_ks.

    Returns {"Recall@k": .., "Recall_subset@k": .., "Avg": .., "queries": n}.
    """
    require_queries(queries)
    depth = max(ks)
    subset_depth = max(subset_ks)
    recalls: dict[int, list[float]] = defaultdict(list)
    subset_recalls: dict[int, list[float]] = defaultdict(list)
    for query in queries:
        require_ground_truth(query, DatasetName.CIRR)
        ranking = cirr_ranking_without_reference(query, ranking_for(rankings, query))
        needed = needed_depth(depth, query, gallery_sizes, removed=1)
        require_depth(query.id, ranking, needed, what="ranking without the reference")
        if query.target_id not in query.subset:
            raise ValueError(f"query {query.id!r}: target {query.target_id!r} is not in its image set")
        subset_ranking = cirr_subset_ranking(query, ranking, subset_depth)
        for k in ks:
            recalls[k].append(float(query.target_id in ranking[:k]))
        for k in subset_ks:
            subset_recalls[k].append(float(query.target_id in subset_ranking[:k]))

    result: dict = {f"Recall@{k}": _mean_percent(recalls[k]) for k in ks}
    result.update({f"Recall_subset@{k}": _mean_percent(subset_recalls[k]) for k in subset_ks})
    if 5 in ks and 1 in subset_ks:
        result["Avg"] = (result["Recall@5"] + result["Recall_subset@1"]) / 2.0
    result["queries"] = len(queries)
    return result


def fashioniq_metrics(
    rankings: Mapping[str, Sequence[str]],
    queries: Sequence[Query],
    ks: Sequence[int] = FASHIONIQ_KS,
    gallery_sizes: Mapping[str, int] | None = None,
) -> dict:
    """FashionIQ Recall@k in percent per category, and their plain mean over the categories present.

    Each query is ranked against its own category's gallery, reference kept (as miccunifi/SEARLE
    src/validate.py). The headline "average" is the mean of the per-category recalls, as the papers report
    it, not the recall over all queries pooled: a category with fewer queries weighs as much as the others.

    Returns {"per_category": {category: {"R@k": .., "queries": n}}, "average": {"R@k": ..}, "queries": n}.
    """
    require_queries(queries)
    depth = max(ks)
    hits: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for query in queries:
        require_ground_truth(query, DatasetName.FASHIONIQ)
        if not query.category:
            raise ValueError(f"query {query.id!r} has no category; FashionIQ is scored per category")
        ranking = ranking_for(rankings, query)
        require_depth(query.id, ranking, needed_depth(depth, query, gallery_sizes))
        for k in ks:
            hits[query.category][k].append(float(query.target_id in ranking[:k]))

    known = [c for c in FASHIONIQ_CATEGORIES if c in hits]
    categories = known + sorted(set(hits) - set(known))
    per_category: dict[str, dict] = {}
    for category in categories:
        entry: dict = {f"R@{k}": _mean_percent(hits[category][k]) for k in ks}
        entry["queries"] = len(hits[category][ks[0]])
        per_category[category] = entry
    average = {f"R@{k}": float(np.mean([per_category[c][f"R@{k}"] for c in categories])) for k in ks}
    return {"per_category": per_category, "average": average, "queries": len(queries)}


def compute_metrics(
    dataset: DatasetName | str,
    rankings: Mapping[str, Sequence[str]],
    queries: Sequence[Query],
    gallery_sizes: Mapping[str, int] | None = None,
) -> dict:
    """The dataset's official metrics at the published cut-offs (see the per-dataset functions).

    `gallery_sizes` (gallery key -> images; the key is Query.category) lets a ranking of a gallery smaller
    than the deepest cut-off be complete with fewer ids; without it every ranking must reach that cut-off.
    """
    name = DatasetName(dataset)
    if name == DatasetName.CIRCO:
        return circo_metrics(rankings, queries, gallery_sizes=gallery_sizes)
    if name == DatasetName.CIRR:
        return cirr_metrics(rankings, queries, gallery_sizes=gallery_sizes)
    return fashioniq_metrics(rankings, queries, gallery_sizes=gallery_sizes)
