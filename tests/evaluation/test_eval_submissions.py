"""Submission files for the CIRCO and CIRR test servers: content, files on disk, and the schema checks."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from cir_evaluation.model import DatasetName, Query
from cir_evaluation.submissions import (
    circo_submission,
    cirr_submissions,
    validate_circo_submission,
    validate_cirr_submission,
    write_submissions,
)

# ---------------------------------------------------------------- CIRCO


def circo_test_case() -> tuple[dict[str, list[str]], list[Query]]:
    # Test-split queries: no ground truth. COCO ids are decimal strings in the records.
    queries = [Query(id=str(i), reference_id=str(1000 + i), text="") for i in range(3)]
    rankings = {
        # The reference (1000 + i) is ranked first and must stay: CIRCO does not remove it.
        str(i): [str(1000 + i)] + [str(10_000 * (i + 1) + j) for j in range(59)]
        for i in range(3)
    }
    return rankings, queries


def test_circo_submission_keeps_top_50_as_integers_reference_included() -> None:
    rankings, queries = circo_test_case()
    submission = circo_submission(rankings, queries)
    assert list(submission) == ["0", "1", "2"]
    assert submission["1"][:3] == [1001, 20_000, 20_001]
    assert all(len(ids) == 50 for ids in submission.values())
    assert submission["2"][-1] == 30_000 + 48  # the reference then ranks 2..50
    validate_circo_submission(submission, ["0", "1", "2"])


def test_circo_submission_refuses_short_and_non_numeric_rankings() -> None:
    rankings, queries = circo_test_case()
    short = dict(rankings, **{"1": rankings["1"][:49]})
    with pytest.raises(ValueError, match=r"'1'.*49 ids but at least 50"):
        circo_submission(short, queries)
    named = dict(rankings, **{"0": ["img-a", *rankings["0"][1:]]})
    with pytest.raises(ValueError, match="'img-a' is not a decimal COCO id"):
        circo_submission(named, queries)
    duplicated = dict(rankings, **{"2": [*rankings["2"][:10], rankings["2"][3], *rankings["2"][10:]]})
    with pytest.raises(ValueError, match=r"'2'.*repeats gallery id"):
        circo_submission(duplicated, queries)


def test_write_circo_submission_file(tmp_path: Path) -> None:
    rankings, queries = circo_test_case()
    paths = write_submissions(DatasetName.CIRCO, tmp_path / "out", rankings, queries)
    assert paths == [tmp_path / "out" / "circo_test_submission.json"]
    loaded = json.loads(paths[0].read_text())
    validate_circo_submission(loaded, [0, 1, 2])
    assert loaded["0"][0] == 1000


def valid_circo() -> dict[str, list[int]]:
    return {str(i): list(range(100 * i, 100 * i + 50)) for i in range(3)}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s.pop("2"), r"missing 1 \(e.g. \['2'\]\)"),
        (lambda s: s.update({"3": list(range(50))}), r"unexpected 1 \(e.g. \['3'\]\)"),
        (lambda s: s.update({"version": "rc2"}), "decimal strings"),
        (lambda s: s["0"].pop(), "exactly 50 ids, got 49"),
        (lambda s: s["0"].append(7), "exactly 50 ids, got 51"),
        (lambda s: s.update({"1": [str(x) for x in s["1"]]}), "ids must be int"),
        (lambda s: s["1"].__setitem__(0, True), "ids must be int"),
        (lambda s: s["2"].__setitem__(1, s["2"][0]), "repeats an id"),
        (lambda s: s.update({"0": tuple(s["0"])}), "must be a list"),
    ],
)
def test_validate_circo_rejects(mutate, message: str) -> None:
    submission = valid_circo()
    validate_circo_submission(copy.deepcopy(submission), ["0", "1", "2"])
    mutate(submission)
    with pytest.raises(ValueError, match=message):
        validate_circo_submission(submission, ["0", "1", "2"])


def test_validate_circo_rejects_non_object() -> None:
    with pytest.raises(ValueError, match="must be a JSON object"):
        validate_circo_submission([["0", [1]]], ["0"])


# ---------------------------------------------------------------- CIRR


def cirr_test_case() -> tuple[dict[str, list[str]], list[Query]]:
    members = ("ref-a", "tgt-a", "m1", "m2", "m3", "m4")
    q1 = Query(id="12063", reference_id="ref-a", text="", subset=members)
    q2 = Query(id="12064", reference_id="ref-b", text="", subset=("ref-b", "n1", "n2", "n3", "n4", "n5"))
    # q1: reference first (removed); other members at ranks 4 (m2), 9 (m1), 30 (tgt-a), 40 (m3); m4 unranked.
    r1 = [f"x{j}" for j in range(60)]
    r1[0], r1[3], r1[8], r1[29], r1[39] = "ref-a", "m2", "m1", "tgt-a", "m3"
    # q2: the reference never ranked; members n3, n1, n2 first in that order.
    r2 = ["n3", "y0", "n1", "n2"] + [f"y{j}" for j in range(1, 60)]
    return {"12063": r1, "12064": r2}, [q1, q2]


def test_cirr_submissions_remove_the_reference_and_rank_the_subset() -> None:
    rankings, queries = cirr_test_case()
    recall, subset = cirr_submissions(rankings, queries)
    assert recall["version"] == "rc2" and recall["metric"] == "recall"
    assert subset["version"] == "rc2" and subset["metric"] == "recall_subset"
    # Reference gone: the list starts at the former second place and runs 50 deep.
    assert recall["12063"][:4] == ["x1", "x2", "m2", "x4"]
    assert "ref-a" not in recall["12063"]
    assert len(recall["12063"]) == 50 and recall["12063"][-1] == "x50"
    # Subset order in the ranking: m2 (rank 4), m1 (9), tgt-a (30), m3 (40) -> top 3.
    assert subset["12063"] == ["m2", "m1", "tgt-a"]
    assert recall["12064"][:3] == ["n3", "y0", "n1"]
    assert subset["12064"] == ["n3", "n1", "n2"]
    validate_cirr_submission(recall, "recall", [12063, 12064])
    validate_cirr_submission(subset, "recall_subset", ["12063", "12064"])


def test_cirr_submissions_need_50_after_removing_the_reference() -> None:
    rankings, queries = cirr_test_case()
    with pytest.raises(ValueError, match=r"'12063'.*49 ids but at least 50"):
        cirr_submissions(dict(rankings, **{"12063": rankings["12063"][:50]}), queries)


def test_write_cirr_submission_files(tmp_path: Path) -> None:
    rankings, queries = cirr_test_case()
    paths = write_submissions("cirr", tmp_path, rankings, queries)
    assert [p.name for p in paths] == [
        "cirr_recall_submission_test1.json",
        "cirr_recall_subset_submission_test1.json",
    ]
    recall = json.loads(paths[0].read_text())
    subset = json.loads(paths[1].read_text())
    validate_cirr_submission(recall, "recall", ["12063", "12064"])
    validate_cirr_submission(subset, "recall_subset", ["12063", "12064"])
    assert subset["12063"] == ["m2", "m1", "tgt-a"]


def test_fashioniq_has_no_test_server(tmp_path: Path) -> None:
    assert write_submissions("fashioniq", tmp_path / "none", {}, []) == []
    assert not (tmp_path / "none").exists()


def valid_cirr(metric: str) -> dict[str, object]:
    length = 50 if metric == "recall" else 3
    obj: dict[str, object] = {"version": "rc2", "metric": metric}
    obj.update({str(p): [f"img-{p}-{j}" for j in range(length)] for p in (1, 2)})
    return obj


@pytest.mark.parametrize(
    ("metric", "mutate", "message"),
    [
        ("recall", lambda s: s.pop("version"), "needs \"version\": 'rc2', got None"),
        ("recall", lambda s: s.update({"version": "rc1"}), "got 'rc1'"),
        ("recall", lambda s: s.pop("metric"), "needs \"metric\": 'recall', got None"),
        ("recall_subset", lambda s: s.update({"metric": "recall"}), "needs \"metric\": 'recall_subset'"),
        ("recall", lambda s: s.pop("2"), r"missing 1 \(e.g. \['2'\]\)"),
        ("recall", lambda s: s.update({"3": s["1"]}), r"unexpected 1 \(e.g. \['3'\]\)"),
        ("recall", lambda s: s.update({"pair-1": s["1"]}), "decimal strings"),
        ("recall", lambda s: s["1"].pop(), "exactly 50 ids, got 49"),
        ("recall_subset", lambda s: s["2"].append("extra"), "exactly 3 ids, got 4"),
        ("recall_subset", lambda s: s["2"].__setitem__(0, 7), "ids must be str"),
        ("recall_subset", lambda s: s["2"].__setitem__(2, s["2"][0]), "repeats an id"),
    ],
)
def test_validate_cirr_rejects(metric: str, mutate, message: str) -> None:
    submission = valid_cirr(metric)
    validate_cirr_submission(copy.deepcopy(submission), metric, [1, 2])
    mutate(submission)
    with pytest.raises(ValueError, match=message):
        validate_cirr_submission(submission, metric, [1, 2])


def test_validate_cirr_rejects_unknown_metric_and_non_object() -> None:
    with pytest.raises(ValueError, match="metric must be one of"):
        validate_cirr_submission(valid_cirr("recall"), "recall@5", [1, 2])
    with pytest.raises(ValueError, match="must be a JSON object"):
        validate_cirr_submission("{}", "recall", [1, 2])
