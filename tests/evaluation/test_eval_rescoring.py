"""Offline re-scoring, sweeps and the feature cache, each against a direct computation of the formulas."""

from __future__ import annotations

import numpy as np
import pytest

from cir.retriever.v1 import retriever_pb2
from cir_evaluation.feature_cache import (
    IngestJournal,
    QueryCache,
    QueryRecord,
    input_signature,
    load_gallery,
    save_gallery,
)
from cir_evaluation.metrics import cirr_metrics
from cir_evaluation.model import Query
from cir_evaluation.rescoring import Gallery, ldre_weights, rank_queries, ranking_rows, top_rows
from cir_evaluation.sweep import CvsiBasis, parse_sweep, run_sweep
from cir_retriever import fusion
from cir_retriever.conversions import (
    gallery_images_from_proto,
    gallery_page_to_proto,
    query_features_from_proto,
    query_features_to_proto,
    resolve_options_from_proto,
)
from cir_retriever.fusion import ScoreFunction, normalize
from cir_retriever.gallery.types import FeaturePage, GalleryFeatures
from cir_retriever.presets import Preset
from cir_retriever.strategies import QueryInputs, StrategyName

D, N, SLOTS = 16, 40, 5
RNG = np.random.default_rng(7)


def _gallery(n: int = N) -> Gallery:
    t_v = normalize(RNG.normal(size=(n, D)).astype(np.float32))
    caption_mean = normalize(RNG.normal(size=(n, D))).astype(np.float32) * 0.8  # not unit: a mean of units
    slots = RNG.normal(size=(n, 3, D)).astype(np.float32)
    return Gallery(ids=[f"g{i:03d}" for i in range(n)], features=GalleryFeatures(t_v, caption_mean, slots))


def _record(query_id: str) -> QueryRecord:
    inputs = QueryInputs(
        image=RNG.normal(size=D).astype(np.float32),
        text=RNG.normal(size=D).astype(np.float32),
        pseudo_prompt=RNG.normal(size=D).astype(np.float32),
        edits=RNG.normal(size=(SLOTS, D)).astype(np.float32),
        caption_slots=RNG.normal(size=(3, D)).astype(np.float32),
        reference_captions=RNG.normal(size=(SLOTS, D)).astype(np.float32),
    )
    return QueryRecord(query_id, ["g000"], [1.0], inputs, captions=["a cat"], edited_captions=["a dog"])


def _options(preset: Preset = Preset.CIRCO, score: str = "dot", **weights: float):
    choices = retriever_pb2.StrategyOptions(
        score_function=retriever_pb2.SCORE_FUNCTION_COSINE
        if score == "cosine"
        else retriever_pb2.SCORE_FUNCTION_DOT
    )
    return resolve_options_from_proto(preset, retriever_pb2.Weights(**weights), choices)


def _direct_cvsi_ranking(record: QueryRecord, gallery: Gallery, options) -> list[str]:
    t_c = gallery.features.caption_mean
    if options.caption_features_renormalized:
        t_c = normalize(t_c)
    scores = fusion.cvsi(
        q_m=fusion.edited_caption_feature(record.inputs.edits),
        q_f=normalize(record.inputs.pseudo_prompt),
        q_v=normalize(record.inputs.image),
        t_c=t_c,
        t_v=gallery.features.t_v,
        alpha=options.alpha,
        beta=options.beta,
        gamma=options.gamma,
        score=options.score,
    )
    return [gallery.ids[i] for i in np.argsort(-scores, kind="stable")]


@pytest.mark.parametrize("preset", [Preset.CIRCO, Preset.FASHIONIQ])
@pytest.mark.parametrize("score", ["dot", "cosine"])
def test_cvsi_rescoring_ranks_as_eq_8_to_10(preset, score):
    gallery = _gallery()
    records = {f"q{i}": _record(f"q{i}") for i in range(6)}
    options = _options(preset, score)
    ranked = rank_queries(
        StrategyName.CVSI, options, records, {"": gallery}, dict.fromkeys(records, ""), None
    )
    for query_id, record in records.items():
        assert ranked[query_id].ids == _direct_cvsi_ranking(record, gallery, options)
        assert len(ranked[query_id].scores) == N


def test_depth_keeps_the_best_first():
    scores = RNG.normal(size=(3, 50))
    full = top_rows(scores, None)
    np.testing.assert_array_equal(top_rows(scores, 7), full[:, :7])
    assert (np.diff(np.take_along_axis(scores, full, axis=1), axis=1) <= 0).all()


def test_a_bounded_ranking_shows_the_kept_rows_in_their_full_ranking_order():
    scores = RNG.normal(size=(4, 300))
    scores[1, [5, 250, 251]] = scores[1, 7]  # ties: the full stable sort keeps gallery order
    keep = [RNG.choice(300, 6, replace=False) for _ in range(4)]
    keep[1] = np.array([5, 251, 250, 7, 299])
    full = top_rows(scores, None)
    for row, top, kept in zip(full, ranking_rows(scores, 20, keep), keep, strict=True):
        np.testing.assert_array_equal(top[:20], row[:20])
        members = set(kept.tolist())
        assert [r for r in top if r in members] == [r for r in row if r in members]
        assert len(top) == 20 + len(members - set(row[:20].tolist()))


def test_cirr_metrics_from_bounded_rankings_equal_those_from_full_rankings():
    """The evaluation ranks CIRR to depth 51 plus the image-set members: the metrics must not change."""
    gallery = _gallery(400)
    records = {str(q): _record(str(q)) for q in range(60)}
    queries = []
    for q in range(60):
        members = [gallery.ids[i] for i in RNG.choice(400, 6, replace=False)]
        queries.append(
            Query(
                str(q),
                members[0],
                "",
                target_id=members[1],
                ground_truth=(members[1],),
                subset=tuple(members),
            )
        )
    gallery_of = dict.fromkeys(records, "")
    options = _options(Preset.CIRR)
    keep = {query.id: query.subset for query in queries}
    full = rank_queries(StrategyName.CVSI, options, records, {"": gallery}, gallery_of, None)
    bounded = rank_queries(StrategyName.CVSI, options, records, {"": gallery}, gallery_of, 51, keep=keep)
    assert all(len(bounded[q].ids) < 60 for q in records)
    expected = cirr_metrics({q: r.ids for q, r in full.items()}, queries)
    assert cirr_metrics({q: r.ids for q, r in bounded.items()}, queries) == expected
    assert 0 < expected["Recall_subset@1"] < 100  # the subset metric is exercised, not trivially 0 or 100


@pytest.mark.parametrize("score", ["dot", "cosine"])
def test_sweep_basis_equals_the_direct_formula_at_every_grid_point(score):
    gallery = _gallery()
    records = [(f"q{i}", _record(f"q{i}")) for i in range(5)]
    for renormalize in (False, True):
        basis = CvsiBasis.build(records, gallery, renormalize)
        for alpha, beta, gamma in [(0.6, 0.4, 0.2), (0.0, 0.0, 0.0), (0.2, 0.6, 0.9), (0.1, 0.1, 1.0)]:
            scores = basis.scores(alpha, beta, gamma, ScoreFunction(score))
            for row, (_, record) in enumerate(records):
                t_c = (
                    normalize(gallery.features.caption_mean) if renormalize else gallery.features.caption_mean
                )
                direct = fusion.cvsi(
                    fusion.edited_caption_feature(record.inputs.edits),
                    normalize(record.inputs.pseudo_prompt),
                    normalize(record.inputs.image),
                    t_c,
                    gallery.features.t_v,
                    alpha,
                    beta,
                    gamma,
                    ScoreFunction(score),
                )
                if score == "dot":
                    np.testing.assert_allclose(scores[row], direct, rtol=1e-5, atol=1e-6)
                else:  # the basis leaves out 1/|q|, a per-query constant: same order, proportional values
                    q_norm = np.linalg.norm(
                        fusion.cvsi_query(
                            fusion.edited_caption_feature(record.inputs.edits),
                            normalize(record.inputs.pseudo_prompt),
                            normalize(record.inputs.image),
                            alpha,
                            beta,
                        )
                    )
                    np.testing.assert_allclose(scores[row] / q_norm, direct, rtol=1e-5, atol=1e-6)


def test_sweep_rows_match_a_full_rescore_and_skip_invalid_points():
    gallery = _gallery()
    records = {f"q{i}": _record(f"q{i}") for i in range(4)}
    gallery_of = dict.fromkeys(records, "")
    options = _options()
    seen = []

    def score_rankings(ranked):
        seen.append({q: r.ids for q, r in ranked.items()})
        return {"n": len(ranked)}

    grid = parse_sweep("alpha=0:1:0.5,beta=0:1:0.5")
    rows = run_sweep(
        StrategyName.CVSI, options, grid, records, {"": gallery}, gallery_of, None, score_rankings
    )
    assert [r.point for r in rows] == [
        {"alpha": a, "beta": b} for a in (0.0, 0.5, 1.0) for b in (0.0, 0.5, 1.0)
    ]
    assert [bool(r.metrics) for r in rows] == [True, True, True, True, True, False, True, False, False]
    point = _options(alpha=0.5, beta=0.5)
    expected = rank_queries(StrategyName.CVSI, point, records, {"": gallery}, gallery_of, None)
    assert seen[4] == {q: r.ids for q, r in expected.items()}


def test_parse_sweep_reads_ranges_and_refuses_nonsense():
    assert parse_sweep("alpha=0:1:0.25, gamma=0.1:0.3:0.1") == {
        "alpha": [0.0, 0.25, 0.5, 0.75, 1.0],
        "gamma": [0.1, 0.2, 0.3],
    }
    for bad, says in [
        ("delta=0:1:0.1", "not a weight"),
        ("alpha=0:1", "NAME=START:STOP:STEP"),
        ("alpha=1:0:0.1", "STOP >= START"),
        ("alpha=0:1:0", "STEP > 0"),
        ("", "names no weight"),
    ]:
        with pytest.raises(ValueError, match=says):
            parse_sweep(bad)


def test_ldre_adaptive_weights_match_the_one_shot_formula_and_weight_the_query():
    gallery = _gallery()
    records = {f"q{i}": _record(f"q{i}") for i in range(20)}  # more than one chunk of 16
    gallery_of = dict.fromkeys(records, "")
    slot = ldre_weights(records, {"": gallery}, gallery_of)
    edited = normalize(np.stack([r.inputs.edits for r in records.values()]))
    original = normalize(np.stack([r.inputs.reference_captions for r in records.values()]))
    expected = fusion.ldre_adaptive_weights(edited, original, gallery.features.t_v)
    np.testing.assert_allclose(slot.weights, expected, rtol=1e-5)  # float32 sums in another order
    assert (slot.queries_used, slot.queries_skipped) == (20, 0)

    ranked = rank_queries(
        StrategyName.LDRE, _options(), records, {"": gallery}, gallery_of, None, slot.weights
    )
    for query_id, record in records.items():
        q = (expected[:, None] * normalize(record.inputs.edits)).sum(axis=0)
        direct = [gallery.ids[i] for i in np.argsort(-(gallery.features.t_v @ q), kind="stable")]
        assert ranked[query_id].ids == direct


def test_ldre_weights_skip_degraded_queries_and_need_features():
    gallery = _gallery()
    records = {f"q{i}": _record(f"q{i}") for i in range(3)}
    records["q2"].inputs.edits = records["q2"].inputs.edits[:1]  # the reasoner fell back: one edit
    slot = ldre_weights(records, {"": gallery}, dict.fromkeys(records, ""))
    assert (slot.queries_used, slot.queries_skipped) == (2, 1)
    for record in records.values():
        record.inputs.reference_captions = None
    with pytest.raises(ValueError, match="--strategy ldre"):
        ldre_weights(records, {"": gallery}, dict.fromkeys(records, ""))


def test_query_cache_round_trips_and_survives_a_cut_off_last_line(tmp_path):
    cache = QueryCache(tmp_path, "cvsi-abc")
    first, second = _record("a"), _record("b")
    second.inputs.text = None
    cache.append(first)
    cache.append(second)
    with cache.path.open("a") as out:
        out.write(_record("c").to_json()[:80])  # the run was killed mid-write
    loaded = cache.load()
    assert sorted(loaded) == ["a", "b"]
    np.testing.assert_array_equal(loaded["a"].inputs.edits, first.inputs.edits)
    assert loaded["b"].inputs.text is None and loaded["a"].captions == ["a cat"]
    with cache.path.open("a") as out:
        out.write("\nnot json\n")
    with pytest.raises(ValueError, match="is not a query record"):
        cache.load()


def test_gallery_cache_and_ingest_journal(tmp_path):
    gallery = _gallery(5)
    path = tmp_path / "features" / "gallery-all.npz"
    save_gallery(path, gallery.ids, gallery.features)
    ids, features = load_gallery(path)
    assert ids == gallery.ids
    np.testing.assert_array_equal(features.caption_slots, gallery.features.caption_slots)
    journal = IngestJournal(tmp_path, "eval-circo-val")
    assert journal.done() == set()
    journal.add(["1", "2"])
    journal.add(["3"])
    assert journal.done() == {"1", "2", "3"}


def test_input_signature_ignores_weights_but_not_what_the_features_depend_on():
    base = input_signature(StrategyName.CVSI, _options())
    assert base == input_signature(StrategyName.CVSI, _options(alpha=0.1, beta=0.2, gamma=0.9))
    assert base != input_signature(StrategyName.CVSI, _options(Preset.CIRR))  # another edit template
    assert base != input_signature(StrategyName.LDRE, _options())
    assert input_signature(StrategyName.LINCIR, _options()) == input_signature(
        StrategyName.LINCIR, _options(Preset.CIRR)
    )


def test_feature_protos_round_trip():
    record = _record("q")
    record.inputs.captioning_text = None
    back = query_features_from_proto(query_features_to_proto(record.inputs))
    for name in ("image", "text", "pseudo_prompt", "edits", "caption_slots", "reference_captions"):
        np.testing.assert_allclose(getattr(back, name), getattr(record.inputs, name))
    assert back.captioning_text is None
    with pytest.raises(ValueError, match="return_features"):
        query_features_from_proto(retriever_pb2.QueryFeatures())

    gallery = _gallery(7)
    f = gallery.features
    pages = [
        gallery_page_to_proto(
            FeaturePage(
                gallery.ids[s : s + 3],
                ["u"] * len(gallery.ids[s : s + 3]),
                GalleryFeatures(f.t_v[s : s + 3], f.caption_mean[s : s + 3], f.caption_slots[s : s + 3]),
                7,
            )
        )
        for s in range(0, 7, 3)
    ]
    ids, features = gallery_images_from_proto([image for page in pages for image in page.images])
    assert ids == gallery.ids and all(p.total == 7 for p in pages)
    np.testing.assert_allclose(features.t_v, gallery.features.t_v)
    np.testing.assert_allclose(features.caption_mean, gallery.features.caption_mean)
    np.testing.assert_allclose(features.caption_slots, gallery.features.caption_slots)
