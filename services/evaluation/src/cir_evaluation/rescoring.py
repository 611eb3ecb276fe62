"""Rankings recomputed from cached features: the service's scoring, offline, for any weights.

The query vector and the gallery matrix come from the same `compose_query` / `gallery_matrix` the
service uses, so a re-score with the run's own settings reproduces the service's ranking; the only
evaluation-time addition is LDRE's adaptive slot weights (method.md 4), which need the whole query set.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from cir_evaluation.feature_cache import QueryRecord
from cir_retriever import fusion
from cir_retriever.fusion import normalize
from cir_retriever.strategies import (
    GalleryFeatures,
    GalleryKind,
    GallerySpec,
    Options,
    StrategyName,
    compose_query,
    gallery_matrix,
    ranked_as,
    without_missing_caption_slots,
)

# Queries scored per matrix product: bounds memory at queries x gallery floats.
_QUERY_CHUNK = 256


@dataclass(frozen=True)
class Gallery:
    ids: list[str]
    features: GalleryFeatures

    def rows_of(self, ids: Sequence[str]) -> np.ndarray:
        """Gallery rows of `ids` (those present), for ranking them wherever they fall."""
        return np.array(sorted({self._row_index[i] for i in ids if i in self._row_index}), dtype=np.int64)

    @cached_property
    def _row_index(self) -> dict[str, int]:
        return {image_id: row for row, image_id in enumerate(self.ids)}

    @cached_property
    def id_array(self) -> np.ndarray:
        """The ids as an object array: a ranking's ids are one fancy-indexing away."""
        return np.array(self.ids, dtype=object)


@dataclass(frozen=True)
class Ranked:
    ids: list[str]
    scores: list[float]


def ranking_rows(
    scores: np.ndarray, depth: int | None, keep: Sequence[np.ndarray] | None = None
) -> list[np.ndarray]:
    """Per score row: its best `depth` rows (None: all), best first, then those rows of `keep[i]` that rank
    below them, in score order (ties in gallery order, as a stable sort of the whole row would give).

    `keep` lets a bounded ranking still show where given images fall (CIRR's image-set members) without
    sorting the whole gallery for every query.
    """
    rows = list(top_rows(scores, depth))
    if keep is None or depth is None:
        return rows
    for i, top in enumerate(rows):
        below = np.setdiff1d(keep[i], top)
        if below.size:
            order = np.lexsort((below, -scores[i, below]))
            rows[i] = np.concatenate([top, below[order]])
    return rows


def ranked_from_rows(
    query_ids: Sequence[str], gallery: Gallery, scores: np.ndarray, rows: Sequence[np.ndarray]
) -> dict[str, Ranked]:
    ids = gallery.id_array
    return {
        query_id: Ranked(ids=ids[row].tolist(), scores=scores[i, row].tolist())
        for i, (query_id, row) in enumerate(zip(query_ids, rows, strict=True))
    }


def keep_rows(
    query_ids: Sequence[str], gallery: Gallery, keep: Mapping[str, Sequence[str]] | None
) -> list[np.ndarray] | None:
    return None if keep is None else [gallery.rows_of(keep.get(q, ())) for q in query_ids]


def top_rows(scores: np.ndarray, depth: int | None) -> np.ndarray:
    """Row indices of each score row's best `depth` (None: all), best first; ties keep gallery order."""
    n = scores.shape[1]
    if depth is None or depth >= n:
        return np.argsort(-scores, axis=1, kind="stable")
    part = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def query_vector(
    strategy: StrategyName,
    options: Options,
    record: QueryRecord,
    ldre_weights: np.ndarray | None,
    gallery_slots: int,
) -> tuple[np.ndarray, GallerySpec]:
    inputs = record.inputs
    edits = inputs.edits
    weighted = strategy is StrategyName.LDRE and ldre_weights is not None and edits is not None
    if weighted and len(edits) == len(ldre_weights):  # type: ignore[arg-type]
        return fusion.ldre_weighted_query(edits, ldre_weights), GallerySpec(GalleryKind.IMAGE)
    # An InstructCIR query whose stage degraded was ranked by its reference image: so it is here.
    strategy = ranked_as(strategy, inputs)
    return compose_query(strategy, *without_missing_caption_slots(strategy, inputs, options, gallery_slots))


def rank_queries(
    strategy: StrategyName,
    options: Options,
    records: Mapping[str, QueryRecord],
    galleries: Mapping[str, Gallery],
    gallery_of: Mapping[str, str],
    depth: int | None,
    ldre_weights: np.ndarray | None = None,
    keep: Mapping[str, Sequence[str]] | None = None,
    matrices: dict[str, tuple[GallerySpec, np.ndarray]] | None = None,
) -> dict[str, Ranked]:
    """Every query's ranking against its gallery (`gallery_of[query id]` names it), best first: the top
    `depth` (None: the whole gallery), then any of `keep[query id]` ranked below them (`ranking_rows`).

    `matrices` keeps each gallery's latest matrix between calls (a sweep's consecutive points mostly share
    it); one per gallery, since a 123k-image gallery's matrix is hundreds of MB."""
    groups: dict[tuple[str, GallerySpec], list[tuple[str, np.ndarray]]] = {}
    for query_id, record in records.items():
        slots = galleries[gallery_of[query_id]].features.caption_slots.shape[1]
        q, spec = query_vector(strategy, options, record, ldre_weights, slots)
        groups.setdefault((gallery_of[query_id], spec), []).append((query_id, q))
    ranked: dict[str, Ranked] = {}
    for (key, spec), members in groups.items():
        gallery = galleries[key]
        kept = (matrices or {}).get(key)
        if kept is not None and kept[0] == spec:
            matrix = kept[1]
        else:
            matrix = gallery_matrix(spec, gallery.features)
            if matrices is not None:
                matrices[key] = (spec, matrix)
        for start in range(0, len(members), _QUERY_CHUNK):
            chunk = members[start : start + _QUERY_CHUNK]
            query_ids = [query_id for query_id, _ in chunk]
            scores = np.stack([q for _, q in chunk]) @ matrix.T
            rows = ranking_rows(scores, depth, keep_rows(query_ids, gallery, keep))
            ranked.update(ranked_from_rows(query_ids, gallery, scores, rows))
    return ranked


@dataclass(frozen=True)
class LdreWeights:
    weights: np.ndarray
    queries_used: int
    queries_skipped: int


def ldre_weights(
    records: Mapping[str, QueryRecord],
    galleries: Mapping[str, Gallery],
    gallery_of: Mapping[str, str],
    top: int = 5,
    temperature: float = 0.04,
) -> LdreWeights:
    """LDRE's global slot weights over the query set (method.md 4).

    Uses the queries whose edits and original captions have the common slot count (a degraded query
    with fewer edits has no slot i to compare); the rest keep the mean form.
    """
    usable = [
        (query_id, r)
        for query_id, r in records.items()
        if r.inputs.edits is not None
        and r.inputs.reference_captions is not None
        and len(r.inputs.edits) == len(r.inputs.reference_captions)
    ]
    if not usable:
        raise ValueError(
            "LDRE's adaptive weights need per-caption edits and the reference captions' features in the "
            "cache: run the evaluation with --strategy ldre first"
        )
    slots = Counter(len(r.inputs.edits) for _, r in usable).most_common(1)[0][0]  # type: ignore[arg-type]
    usable = [(query_id, r) for query_id, r in usable if len(r.inputs.edits) == slots]  # type: ignore[arg-type]
    total = np.zeros(slots)
    by_gallery: dict[str, list[QueryRecord]] = {}
    for query_id, record in usable:
        by_gallery.setdefault(gallery_of[query_id], []).append(record)
    for key, members in by_gallery.items():
        images = galleries[key].features.t_v
        for start in range(0, len(members), 16):
            chunk: Sequence[QueryRecord] = members[start : start + 16]
            edited = normalize(np.stack([r.inputs.edits for r in chunk]))  # type: ignore[misc]
            original = normalize(np.stack([r.inputs.reference_captions for r in chunk]))  # type: ignore[misc]
            total += fusion.ldre_slot_scores(edited, original, images, top)
    return LdreWeights(
        weights=fusion.ldre_weights_from_scores(total, temperature),
        queries_used=len(usable),
        queries_skipped=len(records) - len(usable),
    )
