"""Weight sweeps over cached features (the CVSI paper's Fig. 4): a grid of weights re-scored offline.

CVSI's score is linear in the weights once the six products Q_x . T_y (x in m, f, v; y in c, v) are known:
  q . t = sum_x w_x (gamma Q_x.T_c + (1 - gamma) Q_x.T_v),  w_m = alpha, w_f = beta, w_v = 1 - alpha - beta
and the cosine form only divides each gallery row by |t(gamma)|, whose square is
  gamma^2 |T_c|^2 + (1 - gamma)^2 |T_v|^2 + 2 gamma (1 - gamma) T_c.T_v.
So a grid point costs a weighted sum and a top-k, not a pass over the features.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from cir_evaluation.feature_cache import QueryRecord
from cir_evaluation.rescoring import (
    Gallery,
    Ranked,
    keep_rows,
    rank_queries,
    ranked_from_rows,
    ranking_rows,
)
from cir_retriever import fusion
from cir_retriever.fusion import ScoreFunction, normalize
from cir_retriever.strategies import Options, StrategyName

SWEEPABLE = ("alpha", "beta", "gamma", "weimocir_a", "weimocir_b")


def parse_sweep(spec: str) -> dict[str, list[float]]:
    """'alpha=0:1:0.1,beta=0:1:0.1' -> {'alpha': [0.0, 0.1, ..., 1.0], ...}: START:STOP:STEP, STOP kept."""
    grid: dict[str, list[float]] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, bounds = part.partition("=")
        name = name.strip()
        if name not in SWEEPABLE:
            raise ValueError(f"--sweep: {name!r} is not a weight; sweepable: {', '.join(SWEEPABLE)}")
        try:
            start, stop, step = (float(x) for x in bounds.split(":"))
        except ValueError:
            raise ValueError(
                f"--sweep: {part!r} must read NAME=START:STOP:STEP, e.g. alpha=0:1:0.1"
            ) from None
        if step <= 0 or stop < start:
            raise ValueError(f"--sweep: {part!r} needs STEP > 0 and STOP >= START")
        count = int(np.floor((stop - start) / step + 1e-9)) + 1
        grid[name] = [round(start + i * step, 10) for i in range(count)]
    if not grid:
        raise ValueError("--sweep names no weight, e.g. --sweep alpha=0:1:0.1,beta=0:1:0.1")
    return grid


def grid_points(grid: Mapping[str, Sequence[float]]) -> list[dict[str, float]]:
    names = list(grid)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*grid.values())]


def valid_cvsi_point(point: Mapping[str, float], options: Options) -> bool:
    """Eq. 8 weighs q_v by 1 - alpha - beta: the paper's grid keeps that weight >= 0."""
    alpha = point.get("alpha", options.alpha)
    beta = point.get("beta", options.beta)
    return alpha + beta <= 1.0 + 1e-9


@dataclass
class CvsiBasis:
    """The six score matrices of one gallery's queries, and the gallery norms the cosine form needs."""

    query_ids: list[str]
    gallery: Gallery
    products: dict[str, np.ndarray]  # "m_c", "m_v", "f_c", "f_v", "v_c", "v_v": (queries, gallery)
    t_c_sq: np.ndarray
    t_v_sq: np.ndarray
    t_cv: np.ndarray

    @classmethod
    def build(
        cls, records: Sequence[tuple[str, QueryRecord]], gallery: Gallery, renormalize_captions: bool
    ) -> CvsiBasis:
        queries = {
            "m": np.stack(
                [fusion.edited_caption_feature(_need(r.inputs.edits, "edits")) for _, r in records]
            ),
            "f": normalize(np.stack([_need(r.inputs.pseudo_prompt, "pseudo_prompt") for _, r in records])),
            "v": normalize(np.stack([r.inputs.image for _, r in records])),
        }
        t_c = gallery.features.caption_mean
        if renormalize_captions:
            t_c = normalize(t_c)
        t_v = gallery.features.t_v
        products = {f"{x}_c": q @ t_c.T for x, q in queries.items()}
        products.update({f"{x}_v": q @ t_v.T for x, q in queries.items()})
        return cls(
            query_ids=[query_id for query_id, _ in records],
            gallery=gallery,
            products=products,
            t_c_sq=(t_c * t_c).sum(axis=1),
            t_v_sq=(t_v * t_v).sum(axis=1),
            t_cv=(t_c * t_v).sum(axis=1),
        )

    def scores(self, alpha: float, beta: float, gamma: float, score: ScoreFunction) -> np.ndarray:
        """Eq. 8-10 for every query and gallery row, from the precomputed products."""
        weights = {"m": alpha, "f": beta, "v": 1.0 - alpha - beta}
        total = sum(
            w * (gamma * self.products[f"{x}_c"] + (1.0 - gamma) * self.products[f"{x}_v"])
            for x, w in weights.items()
        )
        if score is ScoreFunction.COSINE:
            norm_sq = (
                gamma**2 * self.t_c_sq + (1 - gamma) ** 2 * self.t_v_sq + 2 * gamma * (1 - gamma) * self.t_cv
            )
            total = total / np.sqrt(
                np.maximum(norm_sq, 1e-24)
            )  # |q| is per query: it cannot change the order
        return total  # type: ignore[return-value]

    def rank(
        self,
        alpha: float,
        beta: float,
        gamma: float,
        score: ScoreFunction,
        depth: int | None,
        keep: Sequence[np.ndarray] | None = None,
    ) -> dict[str, Ranked]:
        scores = self.scores(alpha, beta, gamma, score)
        return ranked_from_rows(self.query_ids, self.gallery, scores, ranking_rows(scores, depth, keep))


def _need(value: np.ndarray | None, name: str) -> np.ndarray:
    if value is None:
        raise ValueError(
            f"the cached query features lack {name!r}: run the evaluation with --strategy cvsi first"
        )
    return value


@dataclass
class SweepRow:
    point: dict[str, float]
    metrics: dict[str, object]


def run_sweep(
    strategy: StrategyName,
    options: Options,
    grid: Mapping[str, Sequence[float]],
    records: Mapping[str, QueryRecord],
    galleries: Mapping[str, Gallery],
    gallery_of: Mapping[str, str],
    depth: int | None,
    score_rankings: Callable[[dict[str, Ranked]], dict[str, object]],
    keep: Mapping[str, Sequence[str]] | None = None,
) -> list[SweepRow]:
    """Metrics at every grid point. CVSI uses the score basis; other strategies re-rank per point.

    Rankings are the top `depth` plus any of `keep[query id]` below them, as in `rank_queries`."""
    points = grid_points(grid)
    rows: list[SweepRow] = []
    if strategy is StrategyName.CVSI and set(grid) <= {"alpha", "beta", "gamma"}:
        bases = []
        for key in {gallery_of[q] for q in records}:
            members = [(q, r) for q, r in records.items() if gallery_of[q] == key]
            basis = CvsiBasis.build(members, galleries[key], options.caption_features_renormalized)
            bases.append((basis, keep_rows(basis.query_ids, galleries[key], keep)))
        for point in points:
            if not valid_cvsi_point(point, options):
                rows.append(SweepRow(point, {}))
                continue
            weights = {name: point.get(name, getattr(options, name)) for name in ("alpha", "beta", "gamma")}
            ranked: dict[str, Ranked] = {}
            for basis, kept in bases:
                ranked.update(basis.rank(**weights, score=options.score, depth=depth, keep=kept))
            rows.append(SweepRow(point, score_rankings(ranked)))
        return rows
    matrices: dict = {}  # each gallery's latest matrix: consecutive points mostly share it
    for point in points:
        if strategy is StrategyName.CVSI and not valid_cvsi_point(point, options):
            rows.append(SweepRow(point, {}))
            continue
        ranked = rank_queries(
            strategy,
            replace(options, **point),
            records,
            galleries,
            gallery_of,
            depth,
            keep=keep,
            matrices=matrices,
        )
        rows.append(SweepRow(point, score_rankings(ranked)))
    return rows
