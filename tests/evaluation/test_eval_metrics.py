"""CIRCO, CIRR and FashionIQ metrics on hand-worked rankings; expected numbers are derived in the comments."""

from __future__ import annotations

import pytest

from cir_evaluation.metrics import (
    circo_metrics,
    cirr_metrics,
    compute_metrics,
    fashioniq_metrics,
)
from cir_evaluation.model import DatasetName, Query


def fill(prefix: str, head: list[str], length: int) -> list[str]:
    """`head` followed by distinct filler ids (never a ground truth) up to `length` ids."""
    return head + [f"{prefix}-fill{i}" for i in range(length - len(head))]


def place(prefix: str, length: int, at: dict[int, str]) -> list[str]:
    """A ranking of `length` filler ids with the given ids at the given 1-based ranks."""
    ranking = fill(prefix, [], length)
    for rank, image_id in at.items():
        ranking[rank - 1] = image_id
    return ranking


# ---------------------------------------------------------------- CIRCO


def circo_case() -> tuple[dict[str, list[str]], list[Query]]:
    # A: |gt| = 3; hits at ranks 1 (g2) and 3 (target); g3 ranked 55th, outside the top 50.
    #    prec: r1 = 1/1, r3 = 2/3  ->  AP@k = (1 + 2/3) / min(3, k) = 5/9 for every k in (5, 10, 25, 50).
    #    Recall@k: target at rank 3 -> 1 for all k.
    a = Query(
        id="0",
        reference_id="ra",
        text="",
        target_id="ta",
        ground_truth=("ta", "a2", "a3"),
        semantic_aspects=("cardinality", "addition"),
    )
    ranking_a = place("a", 60, {1: "a2", 3: "ta", 55: "a3"})
    # B: |gt| = 7 (more than k = 5); hits at ranks 1, 2, 4, 6, 8 (target), 30; one gt never retrieved.
    #    prec: 1/1, 2/2, 3/4, 4/6, 5/8, 6/30.
    #    AP@5  = (1 + 1 + 3/4) / min(7, 5)                 = 2.75 / 5  = 11/20
    #    AP@10 = (1 + 1 + 3/4 + 2/3 + 5/8) / 7             = (97/24) / 7 = 97/168
    #    AP@25 = 97/168 (no hit between ranks 9 and 25)
    #    AP@50 = (97/24 + 1/5) / 7                         = 509/840
    #    Recall: target at rank 8 -> Recall@5 = 0, Recall@10/25/50 = 1.
    b = Query(
        id="1",
        reference_id="rb",
        text="",
        target_id="tb",
        ground_truth=("tb", "b1", "b2", "b3", "b4", "b5", "b6"),
        semantic_aspects=("addition",),
    )
    ranking_b = place("b", 50, {1: "b1", 2: "b2", 4: "b3", 6: "b4", 8: "tb", 30: "b5"})
    # C: the reference is ranked first and stays in (CIRCO does not remove it): target at rank 2.
    #    prec at r2 = 1/2; AP@k = (1/2) / min(1, k) = 1/2. Had the reference been removed, AP would be 1.
    c = Query(id="2", reference_id="rc", text="", target_id="tc", ground_truth=("tc",))
    ranking_c = place("c", 50, {1: "rc", 2: "tc"})
    return {"0": ranking_a, "1": ranking_b, "2": ranking_c}, [a, b, c]


def test_circo_map_and_recall_match_hand_computation() -> None:
    rankings, queries = circo_case()
    got = circo_metrics(rankings, queries)
    # mAP@5  = (5/9 + 11/20 + 1/2) / 3   = 289/540
    # mAP@10 = (5/9 + 97/168 + 1/2) / 3  = (280 + 291 + 252) / 504 / 3 = 823/1512 ; mAP@25 the same
    # mAP@50 = (5/9 + 509/840 + 1/2) / 3 = (1400 + 1527 + 1260) / 2520 / 3 = 4187/7560
    assert got["mAP@5"] == pytest.approx(100 * 289 / 540)  # 53.5185
    assert got["mAP@10"] == pytest.approx(100 * 823 / 1512)  # 54.4312
    assert got["mAP@25"] == pytest.approx(100 * 823 / 1512)
    assert got["mAP@50"] == pytest.approx(100 * 4187 / 7560)  # 55.3836
    # Recall uses the target only: A, C hit at 5; B's target is 8th.
    assert got["Recall@5"] == pytest.approx(100 * 2 / 3)
    assert got["Recall@10"] == pytest.approx(100.0)
    assert got["Recall@25"] == pytest.approx(100.0)
    assert got["Recall@50"] == pytest.approx(100.0)
    assert got["queries"] == 3


def test_circo_per_aspect_averages_only_the_queries_with_that_aspect() -> None:
    rankings, queries = circo_case()
    per_aspect = circo_metrics(rankings, queries)["per_aspect"]
    assert sorted(per_aspect) == ["addition", "cardinality"]
    # addition: A and B -> mAP@5 = (5/9 + 11/20) / 2 = 199/360 ; mAP@10 = (280 + 291) / 504 / 2 = 571/1008
    assert per_aspect["addition"]["mAP@5"] == pytest.approx(100 * 199 / 360)  # 55.2778
    assert per_aspect["addition"]["mAP@10"] == pytest.approx(100 * 571 / 1008)  # 56.6468
    assert per_aspect["addition"]["queries"] == 2
    # cardinality: A alone -> 5/9 at every k.
    assert per_aspect["cardinality"]["mAP@50"] == pytest.approx(100 * 5 / 9)
    assert per_aspect["cardinality"]["queries"] == 1


def test_circo_ap_denominator_is_min_of_gt_count_and_k() -> None:
    # Four ground truths, all four at the top: AP@2 = (1 + 1) / min(4, 2) = 1, AP@5 = 4 / min(4, 5) = 1.
    # With |gt| as the denominator AP@2 would be 0.5; with k, AP@5 would be 0.8.
    q = Query(id="0", reference_id="r", text="", target_id="g1", ground_truth=("g1", "g2", "g3", "g4"))
    rankings = {"0": fill("x", ["g2", "g1", "g4", "g3"], 10)}
    got = circo_metrics(rankings, [q], ks=(2, 5))
    assert got["mAP@2"] == pytest.approx(100.0)
    assert got["mAP@5"] == pytest.approx(100.0)
    # Target is second: Recall@2 counts it.
    assert got["Recall@2"] == pytest.approx(100.0)


def test_circo_refuses_queries_without_ground_truth() -> None:
    q = Query(id="7", reference_id="r", text="")  # a test-split query: answers withheld
    with pytest.raises(ValueError, match="test splits cannot be scored locally"):
        circo_metrics({"7": fill("x", [], 50)}, [q])


# ---------------------------------------------------------------- CIRR

MEMBERS_1 = ("r1", "t1", "m1", "m2", "m3", "m4")
MEMBERS_2 = ("r2", "t2", "a", "b", "c", "d")
MEMBERS_3 = ("r3", "t3", "e", "f", "g", "h")


def cirr_case() -> tuple[dict[str, list[str]], list[Query]]:
    q1 = Query(id="101", reference_id="r1", text="", target_id="t1", ground_truth=("t1",), subset=MEMBERS_1)
    q2 = Query(id="102", reference_id="r2", text="", target_id="t2", ground_truth=("t2",), subset=MEMBERS_2)
    q3 = Query(id="103", reference_id="r3", text="", target_id="t3", ground_truth=("t3",), subset=MEMBERS_3)
    # Q1: the reference is first; once removed, the target is first -> R@1 = 1 (it would be 0 if kept).
    #     Subset order: t1, m1, m2, ... -> Rs@1 = 1.
    r1 = place("q1", 60, {1: "r1", 2: "t1", 3: "m1", 5: "m2", 20: "m3", 40: "m4"})
    # Q2: a, x, b, r2, x, t2, c, d -> without the reference the target is 5th -> R@1 = 0, R@5 = 1.
    #     Subset order: a, b, t2, c, d -> Rs@1 = Rs@2 = 0, Rs@3 = 1.
    r2 = place("q2", 60, {1: "a", 3: "b", 4: "r2", 6: "t2", 7: "c", 8: "d"})
    # Q3: target ranked 53rd (52nd without the reference) -> R@50 = 0.
    #     Subset order: e, f, t3, g, h -> Rs@2 = 0, Rs@3 = 1.
    r3 = place("q3", 60, {1: "e", 2: "f", 10: "r3", 53: "t3", 55: "g", 58: "h"})
    return {"101": r1, "102": r2, "103": r3}, [q1, q2, q3]


def test_cirr_recall_and_subset_recall_match_hand_computation() -> None:
    rankings, queries = cirr_case()
    got = cirr_metrics(rankings, queries)
    # R@1: Q1 only -> 1/3 ; R@5, R@10, R@50: Q1 and Q2 -> 2/3.
    assert got["Recall@1"] == pytest.approx(100 / 3)
    assert got["Recall@5"] == pytest.approx(200 / 3)
    assert got["Recall@10"] == pytest.approx(200 / 3)
    assert got["Recall@50"] == pytest.approx(200 / 3)
    # Rs@1: Q1 -> 1/3 ; Rs@2: Q1 -> 1/3 ; Rs@3: all three -> 1.
    assert got["Recall_subset@1"] == pytest.approx(100 / 3)
    assert got["Recall_subset@2"] == pytest.approx(100 / 3)
    assert got["Recall_subset@3"] == pytest.approx(100.0)
    # Avg = (R@5 + Rs@1) / 2 = (66.67 + 33.33) / 2 = 50.
    assert got["Avg"] == pytest.approx(50.0)
    assert got["queries"] == 3


def test_cirr_reference_removal_changes_recall_at_1() -> None:
    rankings, queries = cirr_case()
    q1 = queries[0]
    assert rankings["101"][:2] == ["r1", "t1"]
    assert cirr_metrics({"101": rankings["101"]}, [q1], ks=(1,), subset_ks=(1,))["Recall@1"] == 100.0
    # The same ordering scored with the reference kept (as FashionIQ would) misses at 1.
    fiq_like = Query(id="101", reference_id="r1", text="", target_id="t1", ground_truth=("t1",), category="x")
    assert fashioniq_metrics({"101": rankings["101"]}, [fiq_like], ks=(1,))["average"]["R@1"] == 0.0


def test_cirr_avg_absent_without_its_cut_offs() -> None:
    rankings, queries = cirr_case()
    got = cirr_metrics(rankings, queries, ks=(1, 10), subset_ks=(2,))
    assert "Avg" not in got
    assert set(got) == {"Recall@1", "Recall@10", "Recall_subset@2", "queries"}


def test_cirr_needs_enough_results_after_removing_the_reference() -> None:
    rankings, queries = cirr_case()
    # 50 ids including the reference leave 49: one short of Recall@50.
    short = rankings["101"][:50]
    with pytest.raises(ValueError, match=r"101.*49 ids but at least 50"):
        cirr_metrics({"101": short}, [queries[0]])


def test_cirr_refuses_a_ranking_that_shows_too_few_subset_members() -> None:
    q = Query(
        id="9", reference_id="r", text="", target_id="t", ground_truth=("t",), subset=("r", "t", "u", "v")
    )
    # Only t and u are in this truncated ranking: the top 3 of the subset cannot be known.
    ranking = fill("z", ["r", "t", "u"], 20)
    with pytest.raises(ValueError, match="subset ranking"):
        cirr_metrics({"9": ranking}, [q], ks=(1, 5), subset_ks=(1, 2, 3))
    # Asking only for Rs@2 is fine: t and u are the first two members.
    assert cirr_metrics({"9": ranking}, [q], ks=(1, 5), subset_ks=(1, 2))["Recall_subset@1"] == 100.0


def test_cirr_refuses_test_queries() -> None:
    q = Query(id="5", reference_id="r", text="", subset=MEMBERS_1)
    with pytest.raises(ValueError, match="test splits cannot be scored locally"):
        cirr_metrics({"5": fill("x", [], 60)}, [q])


# ---------------------------------------------------------------- FashionIQ


def fiq_query(qid: str, category: str, target: str, reference: str = "ref") -> Query:
    return Query(
        id=qid, reference_id=reference, text="", target_id=target, ground_truth=(target,), category=category
    )


def fashioniq_case() -> tuple[dict[str, list[str]], list[Query]]:
    queries = [
        fiq_query("dress/0", "dress", "d0"),  # target 3rd -> hit@10, hit@50
        fiq_query("shirt/0", "shirt", "s0"),  # target 20th -> miss@10, hit@50
        fiq_query("shirt/1", "shirt", "s1"),  # target 60th -> miss@10, miss@50
        fiq_query("shirt/2", "shirt", "s2"),  # target 1st -> hit@10, hit@50
        # reference first (kept), target 11th -> miss@10; had the reference been removed it would be 10th.
        fiq_query("toptee/0", "toptee", "p0", reference="pref"),
        fiq_query("toptee/1", "toptee", "p1"),  # target 50th -> miss@10, hit@50
    ]
    rankings = {
        "dress/0": place("d", 50, {3: "d0"}),
        "shirt/0": place("s0", 50, {20: "s0"}),
        "shirt/1": place("s1", 60, {60: "s1"}),
        "shirt/2": place("s2", 50, {1: "s2"}),
        "toptee/0": place("p0", 50, {1: "pref", 11: "p0"}),
        "toptee/1": place("p1", 50, {50: "p1"}),
    }
    return rankings, queries


def test_fashioniq_headline_is_the_mean_over_categories_not_pooled() -> None:
    rankings, queries = fashioniq_case()
    got = fashioniq_metrics(rankings, queries)
    per = got["per_category"]
    assert list(per) == ["dress", "shirt", "toptee"]
    # dress (1 query): R@10 = 1, R@50 = 1
    assert per["dress"] == {"R@10": 100.0, "R@50": 100.0, "queries": 1}
    # shirt (3 queries): R@10 = 1/3, R@50 = 2/3
    assert per["shirt"]["R@10"] == pytest.approx(100 / 3)
    assert per["shirt"]["R@50"] == pytest.approx(200 / 3)
    assert per["shirt"]["queries"] == 3
    # toptee (2 queries): R@10 = 0, R@50 = 1
    assert per["toptee"] == {"R@10": 0.0, "R@50": 100.0, "queries": 2}
    # Mean over categories: R@10 = (100 + 33.33 + 0) / 3 = 44.44 ; R@50 = (100 + 66.67 + 100) / 3 = 88.89
    assert got["average"]["R@10"] == pytest.approx(400 / 9)
    assert got["average"]["R@50"] == pytest.approx(800 / 9)
    # Pooled over the 6 queries it would be 2/6 = 33.33 and 5/6 = 83.33: a different number.
    assert got["average"]["R@10"] != pytest.approx(100 * 2 / 6)
    assert got["average"]["R@50"] != pytest.approx(100 * 5 / 6)
    assert got["queries"] == 6


def test_fashioniq_average_covers_only_the_categories_present() -> None:
    rankings, queries = fashioniq_case()
    got = fashioniq_metrics(rankings, [q for q in queries if q.category != "dress"])
    assert list(got["per_category"]) == ["shirt", "toptee"]
    assert got["average"]["R@10"] == pytest.approx((100 / 3 + 0) / 2)


def test_fashioniq_refuses_test_queries_and_missing_category() -> None:
    with pytest.raises(ValueError, match="test splits cannot be scored locally"):
        fashioniq_metrics(
            {"q": fill("x", [], 50)}, [Query(id="q", reference_id="r", text="", category="dress")]
        )
    with pytest.raises(ValueError, match="no category"):
        fashioniq_metrics({"q": fill("x", [], 50)}, [fiq_query("q", "", "t")])


# ---------------------------------------------------------------- validation and dispatch


def _any_dataset_query(query_id: str) -> Query:
    """A query every dataset's metrics accept: target t, CIRR image set r t u v w y, FashionIQ dress."""
    return Query(
        id=query_id,
        reference_id="r",
        text="",
        target_id="t",
        ground_truth=("t",),
        subset=("r", "t", "u", "v", "w", "y"),
        category="dress",
    )


@pytest.mark.parametrize("dataset", list(DatasetName))
def test_duplicate_ids_are_refused_naming_query_and_id(dataset: DatasetName) -> None:
    q = _any_dataset_query("42")
    ranking = fill("x", ["t", "u", "v", "w", "y", "u"], 80)
    with pytest.raises(ValueError, match=r"'42'.*repeats gallery id 'u'"):
        compute_metrics(dataset, {"42": ranking}, [q])


@pytest.mark.parametrize(("dataset", "needed"), [("circo", 50), ("cirr", 50), ("fashioniq", 50)])
def test_short_rankings_are_refused(dataset: str, needed: int) -> None:
    q = _any_dataset_query("1")
    ranking = fill("x", ["t", "u", "v", "w", "y"], 30)
    with pytest.raises(ValueError, match=f"30 ids but at least {needed}"):
        compute_metrics(dataset, {"1": ranking}, [q])


def test_missing_ranking_is_refused() -> None:
    rankings, queries = circo_case()
    del rankings["1"]
    with pytest.raises(ValueError, match="query '1' has no ranking"):
        circo_metrics(rankings, queries)


def test_empty_query_list_is_refused() -> None:
    with pytest.raises(ValueError, match="no queries"):
        cirr_metrics({}, [])


def test_compute_metrics_dispatches_with_the_published_cut_offs() -> None:
    rankings, queries = circo_case()
    assert compute_metrics("circo", rankings, queries) == circo_metrics(rankings, queries)
    rankings, queries = cirr_case()
    got = compute_metrics(DatasetName.CIRR, rankings, queries)
    assert [k for k in got if k.startswith("Recall")] == [
        "Recall@1",
        "Recall@5",
        "Recall@10",
        "Recall@50",
        "Recall_subset@1",
        "Recall_subset@2",
        "Recall_subset@3",
    ]
    rankings, queries = fashioniq_case()
    assert compute_metrics("fashioniq", rankings, queries)["average"]["R@50"] == pytest.approx(800 / 9)
    with pytest.raises(ValueError):
        compute_metrics("coco", rankings, queries)
