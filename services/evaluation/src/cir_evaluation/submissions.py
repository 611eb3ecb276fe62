"""Test-split submission files for the official CIRCO and CIRR evaluation servers, and their schema checks.

Formats (method.md section 5, and the servers' own documentation):
- CIRCO (miccunifi/CIRCO README "Submission Format", submission_examples/submission_test.json):
  {"<query id>": [50 COCO image ids as JSON integers]} for every test query; the server reads the keys as
  integers and expects exactly the query ids.
- CIRR (Cuberick-Orion/CIRR Test-split_server.md, demo_files/test1_pred_ranks_recall*.json):
  {"version": "rc2", "metric": "recall" | "recall_subset", "<pairid>": [image names as strings]},
  top 50 names for "recall", top 3 for "recall_subset", the reference removed before either.
FashionIQ has no test server.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from cir_evaluation.metrics import (
    cirr_ranking_without_reference,
    cirr_subset_ranking,
    ranking_for,
    require_depth,
)
from cir_evaluation.model import DatasetName, Query

CIRCO_LENGTH = 50
CIRR_VERSION = "rc2"
CIRR_LENGTHS = {"recall": 50, "recall_subset": 3}

CIRCO_FILE = "circo_test_submission.json"
CIRR_RECALL_FILE = "cirr_recall_submission_test1.json"
CIRR_SUBSET_FILE = "cirr_recall_subset_submission_test1.json"


def _is_decimal_key(key: object) -> bool:
    return isinstance(key, str) and key.isascii() and key.isdecimal()


def _coco_id(query_id: str, image_id: str) -> int:
    # The CIRCO server compares ids as integers, and its example file writes them as JSON numbers.
    if not (image_id.isascii() and image_id.isdecimal()):
        raise ValueError(f"query {query_id!r}: CIRCO gallery id {image_id!r} is not a decimal COCO id")
    return int(image_id)


def circo_submission(rankings: Mapping[str, Sequence[str]], queries: Sequence[Query]) -> dict[str, list[int]]:
    """{"<query id>": [top-50 COCO ids]} for every query; the reference stays in, as the server expects."""
    submission: dict[str, list[int]] = {}
    for query in queries:
        ranking = ranking_for(rankings, query)
        require_depth(query.id, ranking, CIRCO_LENGTH)
        submission[_id_key(query.id, "CIRCO")] = [
            _coco_id(query.id, image_id) for image_id in ranking[:CIRCO_LENGTH]
        ]
    return submission


def cirr_submissions(
    rankings: Mapping[str, Sequence[str]], queries: Sequence[Query]
) -> tuple[dict[str, object], dict[str, object]]:
    """The two CIRR files: top-50 for "recall" and top-3 image-set members for "recall_subset".

    Both drop the reference first, exactly as the metrics do (cirr_metrics), so local val numbers and the
    server's test numbers come from the same rankings.
    """
    recall: dict[str, object] = {"version": CIRR_VERSION, "metric": "recall"}
    subset: dict[str, object] = {"version": CIRR_VERSION, "metric": "recall_subset"}
    for query in queries:
        key = _id_key(query.id, "CIRR")
        ranking = cirr_ranking_without_reference(query, ranking_for(rankings, query))
        require_depth(query.id, ranking, CIRR_LENGTHS["recall"], what="ranking without the reference")
        recall[key] = ranking[: CIRR_LENGTHS["recall"]]
        subset_depth = CIRR_LENGTHS["recall_subset"]
        subset[key] = cirr_subset_ranking(query, ranking, subset_depth)[:subset_depth]
    return recall, subset


def _id_key(query_id: object, dataset: str) -> str:
    # Both servers key by integer ids written as decimal strings ("12063"); ints are accepted and converted.
    text = str(query_id)
    if not _is_decimal_key(text):
        raise ValueError(f"{dataset} query id {query_id!r} is not an integer")
    return str(int(text))


def _check_keys(found: Iterable[str], expected: set[str], what: str) -> None:
    found_set = set(found)
    missing = sorted(expected - found_set)
    extra = sorted(found_set - expected)
    if missing or extra:
        raise ValueError(
            f"{what}: keys must be exactly the {len(expected)} query ids; "
            f"missing {len(missing)} (e.g. {missing[:5]}), unexpected {len(extra)} (e.g. {extra[:5]})"
        )


def _check_list(key: str, value: object, length: int, item_type: type, what: str) -> None:
    if not isinstance(value, list):
        raise ValueError(f"{what}: entry {key!r} must be a list, got {type(value).__name__}")
    if len(value) != length:
        raise ValueError(f"{what}: entry {key!r} must list exactly {length} ids, got {len(value)}")
    for item in value:
        # bool is an int subclass, and a JSON true would pass an isinstance(int) check.
        if not isinstance(item, item_type) or isinstance(item, bool):
            kind = type(item).__name__
            raise ValueError(
                f"{what}: entry {key!r} holds {item!r} ({kind}); ids must be {item_type.__name__}"
            )
    if len(set(value)) != len(value):
        raise ValueError(f"{what}: entry {key!r} repeats an id")


def validate_circo_submission(obj: object, query_ids: Iterable[str | int]) -> None:
    """Check a CIRCO test submission as the server reads it; ValueError says what is wrong."""
    what = "CIRCO submission"
    if not isinstance(obj, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(obj).__name__}")
    bad = [key for key in obj if not _is_decimal_key(key)]
    if bad:
        raise ValueError(f"{what}: keys must be query ids written as decimal strings, got {bad[:5]}")
    _check_keys(obj, {_id_key(q, "CIRCO") for q in query_ids}, what)
    for key, value in obj.items():
        _check_list(key, value, CIRCO_LENGTH, int, what)


def validate_cirr_submission(obj: object, metric: str, pair_ids: Iterable[str | int]) -> None:
    """Check a CIRR test submission for `metric` ("recall" or "recall_subset"); ValueError says why."""
    if metric not in CIRR_LENGTHS:
        raise ValueError(f"CIRR metric must be one of {sorted(CIRR_LENGTHS)}, got {metric!r}")
    what = f"CIRR {metric} submission"
    if not isinstance(obj, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(obj).__name__}")
    if obj.get("version") != CIRR_VERSION:
        raise ValueError(f'{what}: needs "version": {CIRR_VERSION!r}, got {obj.get("version")!r}')
    if obj.get("metric") != metric:
        raise ValueError(f'{what}: needs "metric": {metric!r}, got {obj.get("metric")!r}')
    entries = {key: value for key, value in obj.items() if key not in ("version", "metric")}
    bad = [key for key in entries if not _is_decimal_key(key)]
    if bad:
        raise ValueError(f"{what}: keys must be pairids written as decimal strings, got {bad[:5]}")
    _check_keys(entries, {_id_key(p, "CIRR") for p in pair_ids}, what)
    for key, value in entries.items():
        _check_list(key, value, CIRR_LENGTHS[metric], str, what)


def _write_json(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def write_submissions(
    dataset: DatasetName | str,
    out_dir: Path,
    rankings: Mapping[str, Sequence[str]],
    queries: Sequence[Query],
) -> list[Path]:
    """Build, validate and write the dataset's submission files into out_dir; returns their paths.

    FashionIQ has no test server, so nothing is written for it.
    """
    name = DatasetName(dataset)
    if name == DatasetName.FASHIONIQ:
        return []
    out_dir = Path(out_dir)
    ids = [query.id for query in queries]
    if name == DatasetName.CIRCO:
        submission = circo_submission(rankings, queries)
        validate_circo_submission(submission, ids)
        out_dir.mkdir(parents=True, exist_ok=True)
        return [_write_json(out_dir / CIRCO_FILE, submission)]
    recall, subset = cirr_submissions(rankings, queries)
    validate_cirr_submission(recall, "recall", ids)
    validate_cirr_submission(subset, "recall_subset", ids)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [_write_json(out_dir / CIRR_RECALL_FILE, recall), _write_json(out_dir / CIRR_SUBSET_FILE, subset)]
