"""`cir eval` end to end: synthetic datasets in the official layouts, the whole suite (tiny pack, vLLM CPU,
Redis) on loopback, ingestion and queries through the retriever's public API, then metrics, submissions,
caches, re-scoring and a sweep from the cache.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from cir.retriever.v1 import retriever_pb2
from cir_client.retriever import connect
from cir_evaluation.datasets import load_split
from cir_evaluation.feature_cache import QueryCache, input_signature
from cir_evaluation.model import DatasetName, Split
from cir_evaluation.runner import collection_name, ingest_gallery
from cir_evaluation.submissions import validate_circo_submission, validate_cirr_submission
from cir_evaluation.synthetic import write_synthetic_dataset
from cir_retriever.conversions import resolve_options_from_proto
from cir_retriever.presets import Preset
from cir_retriever.strategies import StrategyName
from cir_tools.cli import main as cir
from cir_tools.local_suite import LocalSuite

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def suite(tiny_pack, tmp_path_factory):
    # Short LLM answers: the random tiny LLM would otherwise talk for its whole output budget.
    suite = LocalSuite(
        profile=tiny_pack,
        workdir=tmp_path_factory.mktemp("eval-suite"),
        extra_env={"CIR_REASONER_MAX_OUTPUT_TOKENS": "48"},
    )
    suite.start(timeout_s=400)
    yield suite
    suite.stop()


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    return {d: write_synthetic_dataset(d, root / d.value, Split.VAL) for d in DatasetName}


def _eval(suite, dataset, root, out, *extra: str) -> int:
    return cir(
        [
            "eval",
            "--dataset",
            dataset,
            "--root",
            str(root),
            "--out",
            str(out),
            "--address",
            suite.retriever_address,
            *extra,
        ]
    )


def _metrics(out) -> dict:
    return json.loads((out / "metrics.json").read_text())


def _rankings(out) -> dict[str, list[str]]:
    rows = map(json.loads, (out / "rankings.jsonl").read_text().splitlines())
    return {row["query_id"]: row["ranking"] for row in rows}


# The official formulas (method.md 5) written out again from the dataset files themselves, independently of
# cir_evaluation, and applied to the saved rankings: the run's metrics must equal them.


def _direct_circo_map(root: Path, rankings: dict[str, list[str]], k: int) -> float:
    aps = []
    for entry in json.loads((root / "annotations" / "val.json").read_text()):
        top50 = rankings[str(entry["id"])][:50]
        truth = {str(i) for i in entry["gt_img_ids"]}
        hits = [image in truth for image in top50]
        precisions = [sum(hits[: i + 1]) * hits[i] / (i + 1) for i in range(len(hits))]
        aps.append(sum(precisions[:k]) / min(len(truth), k))
    return 100.0 * float(np.mean(aps))


def _direct_cirr_recalls(root: Path, rankings: dict[str, list[str]]) -> dict[str, float]:
    entries = json.loads(next(root.rglob("cap.rc2.val.json")).read_text())
    found: dict[str, list[bool]] = {}
    for entry in entries:
        ranking = [image for image in rankings[str(entry["pairid"])] if image != entry["reference"]]
        members = [m for m in entry["img_set"]["members"] if m != entry["reference"]]
        subset = [image for image in ranking if image in members]
        for k in (1, 5, 10, 50):
            found.setdefault(f"Recall@{k}", []).append(entry["target_hard"] in ranking[:k])
        for k in (1, 2, 3):
            found.setdefault(f"Recall_subset@{k}", []).append(entry["target_hard"] in subset[:k])
    return {name: 100.0 * float(np.mean(values)) for name, values in found.items()}


def _direct_fashioniq_average(root: Path, rankings: dict[str, list[str]], k: int) -> float:
    per_category = []
    for category in ("dress", "shirt", "toptee"):
        entries = json.loads((root / "captions" / f"cap.{category}.val.json").read_text())
        hits = [e["target"] in rankings[f"{category}/{i}"][:k] for i, e in enumerate(entries)]
        per_category.append(100.0 * float(np.mean(hits)))
    return float(np.mean(per_category))


def _report_images(out: Path) -> list[Path]:
    """Every image the run's report.html shows, as files: each must exist and decode."""
    sources = re.findall(r'<img src="([^"]+)"', (out / "report.html").read_text())
    paths = [out / source for source in sources]
    for path in paths:
        with Image.open(path) as image:
            image.verify()
    return paths


def test_circo_cvsi_run_resumes_and_rescores_from_the_cache(suite, datasets, tmp_path, capsys):
    root, out = datasets[DatasetName.CIRCO], tmp_path / "circo"
    split = load_split(DatasetName.CIRCO, root, Split.VAL)

    # An ingestion interrupted after half the gallery, and a query run stopped after 2 queries.
    stub = connect(suite.retriever_address)
    half = split.galleries[""][: len(split.galleries[""]) // 2]
    ingest_gallery(stub, collection_name("eval", split, ""), half, out, lambda _: None)
    assert _eval(suite, "circo", root, out, "--max-queries", "2") == 0
    err = capsys.readouterr().err
    assert f"{len(half)} of {len(split.galleries[''])} images already ingested" in err
    assert "queries: 0 cached, 2 to run" in err

    assert _eval(suite, "circo", root, out) == 0
    err = capsys.readouterr().err
    assert "0 to go" in err and "queries: 2 cached, 2 to run" in err
    options = resolve_options_from_proto(
        Preset.CIRCO, retriever_pb2.Weights(), retriever_pb2.StrategyOptions()
    )
    cache = QueryCache(out, input_signature(StrategyName.CVSI, options))
    lines = cache.path.read_text().splitlines()
    assert len(lines) == 4  # nothing asked twice
    records = cache.load()
    assert all(r.edited_captions and r.inputs.edits is not None for r in records.values())
    assert all(
        r.inputs.pseudo_prompt is not None and r.prompt.startswith("a photo of $ that")
        for r in records.values()
    )

    summary = _metrics(out)
    assert summary["service_agreement"] == {"same_top_ids": 4, "of": 4}
    metrics = summary["metrics"]
    assert set(metrics) >= {"mAP@5", "mAP@10", "mAP@25", "mAP@50", "Recall@5", "Recall@50", "per_aspect"}
    assert metrics["queries"] == 4 and all(0.0 <= metrics[f"mAP@{k}"] <= 100.0 for k in (5, 10, 25, 50))
    rankings = [json.loads(line) for line in (out / "rankings.jsonl").read_text().splitlines()]
    assert [r["query_id"] for r in rankings] == [q.id for q in split.queries]
    assert all(
        len(r["ranking"]) == len(split.galleries[""]) for r in rankings
    )  # a 12-image gallery, all ranked
    for k in (5, 10, 25, 50):
        assert metrics[f"mAP@{k}"] == pytest.approx(_direct_circo_map(root, _rankings(out), k), abs=1e-6)
    # per query at least the reference and the top 10 (the report's default top-k; the gallery has 12),
    # plus any ground truth ranked below them
    assert len(_report_images(out)) >= 4 * (1 + 10)

    # Re-scoring from the cache with the run's own weights gives the same numbers; a sweep needs no suite.
    assert (
        cir(
            [
                "eval",
                "--dataset",
                "circo",
                "--root",
                str(root),
                "--out",
                str(out),
                "--rescore-only",
                "--sweep",
                "alpha=0:1:0.2,beta=0:1:0.2,gamma=0.2:0.2:0.1",
                "--address",
                "127.0.0.1:9",
            ]
        )
        == 0
    )
    again = _metrics(out)
    assert again["metrics"] == metrics
    sweep = again["sweep"]
    assert sweep["points"] == 36 and sweep["headline_metric"] == "mAP@10"
    with (out / sweep["table"]).open() as table:
        rows = list(csv.DictReader(table))
    preset_row = next(r for r in rows if (r["alpha"], r["beta"]) == ("0.6", "0.4"))
    assert float(preset_row["mAP@10"]) == pytest.approx(metrics["mAP@10"], abs=1e-3)
    assert next(r for r in rows if (r["alpha"], r["beta"]) == ("0.6", "0.6"))["mAP@10"] == ""  # alpha+beta>1
    assert (out / sweep["figures"][0]).read_text().startswith("<svg")


def test_circo_ldre_uses_adaptive_slot_weights(suite, datasets, tmp_path):
    out = tmp_path / "ldre"
    assert _eval(suite, "circo", datasets[DatasetName.CIRCO], out, "--strategy", "ldre") == 0
    summary = _metrics(out)
    weights = summary["ldre_adaptive_weights"]["weights"]
    assert len(weights) == 15 and sum(weights) == pytest.approx(
        1.0, abs=1e-4
    )  # N = 15 captions, one per slot
    assert summary["ldre_adaptive_weights"]["queries_used"] == 4


def test_cirr_and_fashioniq_val(suite, datasets, tmp_path):
    out = tmp_path / "cirr"
    assert _eval(suite, "cirr", datasets[DatasetName.CIRR], out, "--strategy", "lincir") == 0
    metrics = _metrics(out)["metrics"]
    assert set(metrics) >= {"Recall@1", "Recall@5", "Recall@10", "Recall@50", "Recall_subset@1", "Avg"}
    assert metrics["Recall@50"] == 100.0  # 11 candidates once the reference is removed: all ranked
    for name, value in _direct_cirr_recalls(datasets[DatasetName.CIRR], _rankings(out)).items():
        assert metrics[name] == pytest.approx(value, abs=1e-6), name
    assert _metrics(out)["service_agreement"] == {"same_top_ids": 4, "of": 4}
    for row in map(json.loads, (out / "rankings.jsonl").read_text().splitlines()):
        assert (
            row["reference_id"] in row["ranking"]
        )  # the saved ranking is the service's; removal is scoring's

    out = tmp_path / "fiq"
    assert _eval(suite, "fashioniq", datasets[DatasetName.FASHIONIQ], out, "--strategy", "weimocir") == 0
    summary = _metrics(out)
    assert set(summary["metrics"]["per_category"]) == {"dress", "shirt", "toptee"}
    assert set(summary["gallery_sizes"]) == {"dress", "shirt", "toptee"}
    assert summary["service_agreement"]["same_top_ids"] == summary["queries"] == 12
    for k in (10, 50):
        expected = _direct_fashioniq_average(datasets[DatasetName.FASHIONIQ], _rankings(out), k)
        assert summary["metrics"]["average"][f"R@{k}"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("dataset", [DatasetName.CIRCO, DatasetName.CIRR])
def test_test_split_writes_valid_submission_files(suite, tmp_path, dataset):
    root = write_synthetic_dataset(dataset, tmp_path / "data", Split.TEST, gallery_size=56)
    out = tmp_path / "out"
    assert _eval(suite, dataset.value, root, out, "--split", "test", "--strategy", "lincir") == 0
    summary = _metrics(out)
    assert "metrics" not in summary
    query_ids = [q.id for q in load_split(dataset, root, Split.TEST).queries]
    files = [out / path for path in summary["submissions"]]
    if dataset is DatasetName.CIRCO:
        validate_circo_submission(json.loads(files[0].read_text()), query_ids)
    else:
        validate_cirr_submission(json.loads(files[0].read_text()), "recall", query_ids)
        validate_cirr_submission(json.loads(files[1].read_text()), "recall_subset", query_ids)


def test_gallery_export_refuses_bad_requests(suite):
    stub = connect(suite.retriever_address)
    with pytest.raises(grpc.RpcError) as error:
        list(stub.ExportGalleryFeatures(retriever_pb2.ExportGalleryFeaturesRequest(collection="no-such")))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as error:
        list(
            stub.ExportGalleryFeatures(
                retriever_pb2.ExportGalleryFeaturesRequest(collection="eval-circo-val", page_size=100000)
            )
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "page_size" in error.value.details()


def test_missing_dataset_file_is_named(tmp_path, capsys):
    root = tmp_path / "cirr"
    assert cir(["synthetic-dataset", "--dataset", "cirr", "--out", str(root)]) == 0
    assert len(load_split(DatasetName.CIRR, root, Split.VAL).queries) == 4
    caption_file = next(root.rglob("cap.rc2.val.json"))
    caption_file.unlink()
    assert (
        cir(
            ["eval", "--dataset", "cirr", "--root", str(root), "--out", str(tmp_path / "o"), "--rescore-only"]
        )
        == 2
    )
    assert str(caption_file) in capsys.readouterr().err
