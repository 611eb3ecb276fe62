"""The milvus gallery store against a real Milvus engine (milvus-lite's server on loopback).

Rankings are checked against the reference: `strategies.gallery_matrix(spec, features) @ q` with numpy, for
every gallery spec; filters against `filters.matches` over the same rows; two clients (and two processes)
share one server with no state of their own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cir_common.errors import ConfigError, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from cir_retriever.fusion import ScoreFunction, normalize
from cir_retriever.gallery import filters
from cir_retriever.gallery.milvus import MilvusCollection, MilvusGalleryStore, filter_expression
from cir_retriever.gallery.milvus_vectors import (
    CosineSpec,
    Layout,
    expand_query,
    gallery_rows,
    preset_cosine_specs,
)
from cir_retriever.gallery.types import (
    AnyOf,
    CollectionSettings,
    Condition,
    Equals,
    FieldType,
    Filter,
    FilterableField,
    GalleryFeatures,
    GalleryKind,
    GallerySpec,
    ImageRecord,
    Range,
)
from cir_retriever.presets import PRESETS
from cir_retriever.strategies import gallery_matrix
from cir_tools.local_milvus import MilvusProcess, free_port, ping

DIM = 32
SLOTS = 3
IMAGE = GallerySpec(GalleryKind.IMAGE)
ENCODER = {"name": "clip", "revision": "abc", "family": "open_clip"}
CAPTIONER = {"name": "blip2", "revision": "def", "family": "blip2"}
STORED_COSINE = preset_cosine_specs((p.gamma, p.caption_features_renormalized) for p in PRESETS.values())

# Every spec the strategies produce, with the weights the presets and typical overrides give.
DOT_SPECS = [
    GallerySpec(GalleryKind.CVSI, gamma, renorm, ScoreFunction.DOT)
    for gamma in (0.0, 0.2, 0.7)
    for renorm in (False, True)
]
COSINE_SPECS = [
    GallerySpec(GalleryKind.CVSI, c.gamma, c.renormalized, ScoreFunction.COSINE) for c in STORED_COSINE
]
COSINE_SPECS += [
    GallerySpec(GalleryKind.CVSI, 0.0, False, ScoreFunction.COSINE),
    GallerySpec(GalleryKind.CVSI, 1.0, True, ScoreFunction.COSINE),
]
WEIMOCIR_SPECS = [
    GallerySpec(GalleryKind.WEIMOCIR_CODED),
    GallerySpec(GalleryKind.WEIMOCIR_PAPER, weimocir_b=0.1),
    GallerySpec(GalleryKind.WEIMOCIR_PAPER, weimocir_b=0.5),
]
ALL_SPECS = [IMAGE, *DOT_SPECS, *COSINE_SPECS, *WEIMOCIR_SPECS]


def make_record(
    image_id: str, rng: np.random.Generator, metadata: dict[str, str] | None = None
) -> ImageRecord:
    """An image as ingestion makes it: raw image vector, mean of normalised caption features, R raw slots."""
    captions = rng.normal(size=(5, DIM)).astype(np.float32)
    return ImageRecord(
        id=image_id,
        uri=f"file:///gallery/{image_id}.png",
        metadata=metadata if metadata is not None else {"n": image_id},
        content_sha256=f"{abs(hash(image_id)) % 2**64:064x}",
        captions=[f"caption {image_id} {j}" for j in range(5)],
        image_raw=(rng.normal(size=DIM) * 3).astype(np.float32),
        caption_mean=normalize(captions).mean(axis=0).astype(np.float32),
        caption_slots=captions[:SLOTS],
    )


def features_of(records: list[ImageRecord]) -> GalleryFeatures:
    """The reference matrices, built as the local store builds them."""
    return GalleryFeatures(
        t_v=normalize(np.stack([r.image_raw for r in records])),
        caption_mean=np.stack([r.caption_mean for r in records]),
        caption_slots=np.stack([r.caption_slots for r in records]),
    )


def query_for(spec: GallerySpec, rng: np.random.Generator) -> np.ndarray:
    width = (SLOTS + 1) * DIM if spec.kind is GalleryKind.WEIMOCIR_CODED else DIM
    q = rng.normal(size=width).astype(np.float32)
    # compose_query hands cosine specs a unit query (q . row is then the cosine itself).
    return normalize(q) if spec.score is ScoreFunction.COSINE else q


def reference_top(scores: np.ndarray, ids: list[str], k: int) -> tuple[list[str], np.ndarray]:
    order = np.argsort(-scores, kind="stable")[:k]
    return [ids[i] for i in order], scores[order]


def assert_same_ranking(
    hits, ref_ids: list[str], ref_scores: np.ndarray, all_scores: dict[str, float]
) -> None:
    """Same ids in the same order and scores within 1e-5. Two rows whose reference scores differ by less than
    float32 rounding (1e-6) may come in either order: that is a tie, not a ranking."""
    got_ids = [h.id for h in hits]
    assert len(got_ids) == len(ref_ids)
    np.testing.assert_allclose([h.score for h in hits], ref_scores, atol=1e-5)
    for position, (got, want) in enumerate(zip(got_ids, ref_ids, strict=True)):
        if got != want:
            assert abs(all_scores[got] - all_scores[want]) < 1e-6, (position, got, want)
    assert set(got_ids) == set(ref_ids) or len(ref_ids) < len(all_scores)
    for hit in hits:
        assert abs(hit.score - all_scores[hit.id]) < 1e-5


def store_for(server: MilvusProcess, prefix: str, **kwargs) -> MilvusGalleryStore:
    return MilvusGalleryStore(server.uri, prefix=prefix, **kwargs)


@pytest.fixture
def store(milvus_server: MilvusProcess, milvus_prefix: str) -> Iterator[MilvusGalleryStore]:
    store = store_for(milvus_server, milvus_prefix)
    try:
        yield store
    finally:
        for name in store.names():
            store.drop(name)
        store.close()


def new_collection(store: MilvusGalleryStore, name: str = "shoes", **settings) -> MilvusCollection:
    collection = store.create(name, CollectionSettings(**settings))
    collection.record_models(ENCODER, CAPTIONER, DIM)
    return collection


# --- the layout, without Milvus -------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ALL_SPECS, ids=str)
def test_query_expansion_equals_the_reference_matrix(spec: GallerySpec) -> None:
    rng = np.random.default_rng(7)
    records = [make_record(f"i{n}", rng) for n in range(50)]
    features = features_of(records)
    layout = Layout(DIM, SLOTS, STORED_COSINE)
    rows = gallery_rows(layout, features.t_v, features.caption_mean, features.caption_slots)
    q = query_for(spec, rng)
    field, expanded = expand_query(layout, spec, q)
    assert rows[field].shape[1] == expanded.shape[0] == layout.field_dims()[field]
    np.testing.assert_allclose(rows[field] @ expanded, gallery_matrix(spec, features) @ q, atol=1e-5)


def test_the_presets_cosine_galleries_are_stored() -> None:
    wanted = {(p.gamma, p.caption_features_renormalized) for p in PRESETS.values()}
    assert {(c.gamma, c.renormalized) for c in STORED_COSINE} == wanted


def test_a_cosine_gallery_that_is_not_stored_is_refused_not_approximated() -> None:
    layout = Layout(DIM, SLOTS, (CosineSpec(0.2, False),))
    spec = GallerySpec(GalleryKind.CVSI, 0.5, False, ScoreFunction.COSINE)
    with pytest.raises(FailedPrecondition, match="score_function=dot"):
        expand_query(layout, spec, np.ones(DIM, np.float32))
    # gamma 0.2 is stored, but not with renormalised caption features
    with pytest.raises(FailedPrecondition, match="not stored"):
        expand_query(layout, GallerySpec(GalleryKind.CVSI, 0.2, True, ScoreFunction.COSINE), np.ones(DIM))


def test_filter_expressions_hold_no_caller_text() -> None:
    fields = (FilterableField("color", FieldType.STRING), FilterableField("n", FieldType.INT))
    hostile = '" or 1 == 1 or "\\'
    expression = filter_expression(
        Filter(
            (Condition("color", AnyOf((hostile, "{x}", "ünï"))), Condition("n", Range(gt=2.5, lte=1e300)))
        ),
        fields,
    )
    assert expression is not None
    assert hostile not in expression and "{x}" not in expression and "ü" not in expression
    assert "f_n >= 3" in expression and "<=" not in expression  # an int bound beyond int64 is open
    assert filter_expression(Filter((Condition("n", Range(gt=5, lt=6)),)), fields) is None  # no int in (5, 6)
    with pytest.raises(InvalidArgument, match="declares no filterable field"):
        filter_expression(Filter((Condition("price", Range(gt=1)),)), fields)


# --- rankings -------------------------------------------------------------------------------------------


@pytest.fixture
def ranked(store: MilvusGalleryStore) -> tuple[MilvusCollection, list[ImageRecord]]:
    rng = np.random.default_rng(2024)
    records = [make_record(f"img-{n:04d}", rng) for n in range(300)]
    collection = new_collection(store, "ranked")
    for start in range(0, len(records), 64):
        collection.upsert(records[start : start + 64])
    return collection, records


@pytest.mark.parametrize("k", [10, 300])
def test_every_spec_ranks_as_the_reference(ranked, k: int) -> None:
    collection, records = ranked
    assert collection.size() == 300
    assert collection.caption_slot_count() == SLOTS
    features = features_of(records)
    ids = [r.id for r in records]
    rng = np.random.default_rng(k)
    for spec in ALL_SPECS:
        q = query_for(spec, rng)
        scores = gallery_matrix(spec, features) @ q
        ref_ids, ref_scores = reference_top(scores, ids, k)
        hits = collection.search(spec, q, k)
        assert_same_ranking(hits, ref_ids, ref_scores, dict(zip(ids, scores.tolist(), strict=True)))
        assert hits[0].uri == f"file:///gallery/{hits[0].id}.png"
        assert hits[0].metadata == {"n": hits[0].id}


def test_cosine_at_a_gamma_not_stored_is_failed_precondition(ranked) -> None:
    collection, _ = ranked
    spec = GallerySpec(GalleryKind.CVSI, 0.35, False, ScoreFunction.COSINE)
    with pytest.raises(FailedPrecondition, match="not stored"):
        collection.search(spec, normalize(np.ones(DIM, np.float32)), 10)


# --- records, manifest, export --------------------------------------------------------------------------


def test_records_round_trip_and_upserts_are_idempotent(store: MilvusGalleryStore) -> None:
    rng = np.random.default_rng(1)
    collection = new_collection(store)
    assert collection.size() == 0 and collection.caption_slot_count() == 0
    assert collection.get("nope") is None and collection.content_hashes(["nope"]) == {}
    assert collection.search(IMAGE, np.ones(DIM, np.float32), 5) == []
    records = [make_record(i, rng) for i in ("a", "b", "c")]
    collection.upsert(records)
    collection.upsert(records)  # idempotent by id
    assert collection.size() == 3
    got = collection.get("b")
    assert got is not None and got.id == "b" and got.captions == records[1].captions
    assert got.uri == records[1].uri and got.metadata == records[1].metadata
    np.testing.assert_array_equal(got.image_raw, records[1].image_raw)
    np.testing.assert_array_equal(got.caption_mean, records[1].caption_mean)
    np.testing.assert_array_equal(got.caption_slots, records[1].caption_slots)
    assert collection.content_hashes(["a", "zz", "c"]) == {
        "a": records[0].content_sha256,
        "c": records[2].content_sha256,
    }
    # a replacement (same id, new vector) is what searches see; an id twice in a batch keeps its last entry
    replaced = make_record("b", rng)
    collection.upsert([make_record("b", rng), replaced])
    assert collection.size() == 3
    top = collection.search(IMAGE, normalize(replaced.image_raw), 1)[0]
    assert top.id == "b" and abs(top.score - 1.0) < 1e-5
    assert collection.delete(["a", "missing", "a"]) == (1, ["missing"])
    assert collection.size() == 2 and collection.get("a") is None


def test_shapes_are_fixed_per_collection(store: MilvusGalleryStore) -> None:
    rng = np.random.default_rng(2)
    collection = new_collection(store)
    collection.upsert([make_record("a", rng)])
    other = make_record("b", rng)
    fewer_slots = ImageRecord(**{**other.__dict__, "caption_slots": other.caption_slots[:2]})
    with pytest.raises(InvalidArgument, match="caption slots"):
        collection.upsert([fewer_slots])
    assert collection.size() == 1


def test_an_id_too_long_to_store_is_refused_on_write_and_simply_absent_on_lookup(
    store: MilvusGalleryStore,
) -> None:
    """A search by a 100 KB reference_id is NOT_FOUND (as on the local store), not INVALID_ARGUMENT."""
    rng = np.random.default_rng(3)
    collection = new_collection(store)
    collection.upsert([make_record("a", rng)])
    huge = "x" * 100_000
    assert collection.get(huge) is None
    assert collection.content_hashes([huge, "a"]).keys() == {"a"}
    assert collection.delete([huge]) == (0, [huge])
    with pytest.raises(InvalidArgument, match="keeps ids up to"):
        collection.upsert([make_record(huge, rng)])


def test_export_pages_come_in_id_order_with_the_stored_features(store: MilvusGalleryStore) -> None:
    rng = np.random.default_rng(3)
    # ids whose byte order differs from what a naive encoding would give: unicode, symbols, prefixes
    ids = ["b", "a", "é", "z", "a b", "a-b", "a\nb", "Z", "10", "9", "\u4e2d", "😀", "ab", "a"]
    ids += [f"n{n:03d}" for n in range(40)]
    records = [make_record(i, rng) for i in dict.fromkeys(ids)]
    collection = new_collection(store)
    collection.upsert(records)
    pages = list(collection.export(7))
    assert all(len(p.ids) == 7 for p in pages[:-1]) and 1 <= len(pages[-1].ids) <= 7
    assert all(p.total == len(records) for p in pages)
    exported = [i for p in pages for i in p.ids]
    assert exported == sorted(r.id for r in records)
    by_id = {r.id: r for r in records}
    for page in pages:
        want = features_of([by_id[i] for i in page.ids])
        np.testing.assert_allclose(page.features.t_v, want.t_v, atol=1e-6)
        np.testing.assert_array_equal(page.features.caption_mean, want.caption_mean)
        np.testing.assert_array_equal(page.features.caption_slots, want.caption_slots)
        assert page.image_raw is not None
        np.testing.assert_array_equal(page.image_raw, np.stack([by_id[i].image_raw for i in page.ids]))
        assert page.uris == [by_id[i].uri for i in page.ids]
        assert page.captions == [by_id[i].captions for i in page.ids]
        assert page.content_sha256 == [by_id[i].content_sha256 for i in page.ids]
        assert page.metadata == [by_id[i].metadata for i in page.ids]
    assert list(new_collection(store, "empty").export(5)) == []


def test_manifest_models_settings_names_and_drop(store: MilvusGalleryStore) -> None:
    settings = CollectionSettings(
        num_captions=4, filterable_fields=(FilterableField("color", FieldType.STRING),)
    )
    collection = store.create("alpha", settings)
    assert store.create("alpha", settings).name == "alpha"  # same settings: the existing one
    with pytest.raises(FailedPrecondition, match="already exists"):
        store.create("alpha", CollectionSettings(num_captions=5))
    manifest = collection.manifest()
    assert manifest.name == "alpha" and manifest.settings == settings and manifest.encoder == {}
    collection.record_models(ENCODER, CAPTIONER, DIM)
    collection.record_models(ENCODER, CAPTIONER, DIM)  # the same models again: fine
    with pytest.raises(FailedPrecondition, match="was indexed with encoder clip@abc"):
        collection.record_models({**ENCODER, "revision": "other"}, CAPTIONER, DIM)
    with pytest.raises(FailedPrecondition, match="dim 64"):
        collection.record_models(ENCODER, CAPTIONER, 64)
    manifest = store.open("alpha").manifest()
    assert (manifest.encoder, manifest.captioner, manifest.embedding_dim) == (ENCODER, CAPTIONER, DIM)
    collection.upsert([make_record("x", np.random.default_rng(0), {"color": "red"})])
    assert collection.manifest().updated_at >= manifest.created_at
    store.create("beta.2-b_c", CollectionSettings())
    assert store.names() == ["alpha", "beta.2-b_c"]
    assert store.exists("alpha") and not store.exists("gamma")
    with pytest.raises(NotFound, match="ListCollections") as error:
        store.open("gamma")
    assert "alpha" not in error.value.message  # names how to list, never the list itself
    with pytest.raises(InvalidArgument, match="not valid"):
        store.open("../etc")
    assert store.drop("alpha") == 1
    assert store.names() == ["beta.2-b_c"] and not store.exists("alpha")
    with pytest.raises(NotFound):
        collection.size()  # a handle on a dropped collection says so
    with pytest.raises(NotFound):
        store.drop("alpha")


def test_a_collection_dropped_and_created_again_elsewhere_is_followed(
    milvus_server: MilvusProcess, store: MilvusGalleryStore
) -> None:
    rng = np.random.default_rng(4)
    collection = new_collection(store, "cycled")
    collection.upsert([make_record("old", rng)])
    other = store_for(milvus_server, store.prefix)
    try:
        other.drop("cycled")
        again = new_collection(other, "cycled")
        again.upsert([make_record("new", rng)])
    finally:
        other.close()
    # the first handle still holds the old generation's name: it follows the catalog to the new one
    assert [h.id for h in collection.search(IMAGE, np.ones(DIM, np.float32), 5)] == ["new"]
    collection.upsert([make_record("newer", rng)])
    assert collection.size() == 2


# --- two clients, two processes -------------------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from cir_retriever.gallery.milvus import MilvusGalleryStore
    from cir_retriever.gallery.types import GalleryKind, GallerySpec, ImageRecord

    uri, prefix, action, args = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    store = MilvusGalleryStore(uri, prefix=prefix)

    def record(image_id, seed):
        rng = np.random.default_rng(seed)
        return ImageRecord(image_id, "u:" + image_id, {"seed": str(seed)}, f"{seed:064x}", ["c"],
                           rng.normal(size=args["dim"]).astype(np.float32),
                           rng.normal(size=args["dim"]).astype(np.float32),
                           rng.normal(size=(3, args["dim"])).astype(np.float32))

    if action == "upsert":
        collection = store.open(args["collection"])
        collection.upsert([record(i, s) for i, s in args["items"]])
        print(json.dumps({"size": collection.size()}), flush=True)
    elif action == "search":
        collection = store.open(args["collection"])
        q = np.asarray(args["query"], np.float32)
        hits = collection.search(GallerySpec(GalleryKind.IMAGE), q, args["k"])
        print(json.dumps({"ids": [h.id for h in hits], "scores": [h.score for h in hits]}), flush=True)
    elif action == "delete":
        print(json.dumps({"deleted": store.open(args["collection"]).delete(args["ids"])[0]}), flush=True)
    elif action == "stream":
        # batches of 10, one line per acknowledged batch, until killed
        collection = store.open(args["collection"])
        for batch in range(10_000):
            collection.upsert([record(f"b{batch:05d}-{j}", batch * 10 + j) for j in range(10)])
            print(batch, flush=True)
    """
)


def run_child(server: MilvusProcess, prefix: str, action: str, **args) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, server.uri, prefix, action, json.dumps({"dim": DIM, **args})],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def child_record(image_id: str, seed: int) -> ImageRecord:
    rng = np.random.default_rng(seed)
    return ImageRecord(
        image_id,
        "u:" + image_id,
        {"seed": str(seed)},
        f"{seed:064x}",
        ["c"],
        rng.normal(size=DIM).astype(np.float32),
        rng.normal(size=DIM).astype(np.float32),
        rng.normal(size=(3, DIM)).astype(np.float32),
    )


def test_two_processes_share_one_server_with_no_state_of_their_own(
    milvus_server: MilvusProcess, store: MilvusGalleryStore
) -> None:
    collection = new_collection(store, "shared")
    prefix = store.prefix
    # another process writes: this one sees the images at once
    wrote = run_child(milvus_server, prefix, "upsert", collection="shared", items=[["p", 1], ["q", 2]])
    assert wrote == {"size": 2}
    assert collection.size() == 2
    p = child_record("p", 1)
    top = collection.search(IMAGE, normalize(p.image_raw), 2)
    assert top[0].id == "p" and abs(top[0].score - 1.0) < 1e-5 and top[0].metadata == {"seed": "1"}
    # this one writes and replaces: the other process sees it
    collection.upsert([child_record("r", 3), child_record("p", 4)])
    query = normalize(child_record("p", 4).image_raw).tolist()
    seen = run_child(milvus_server, prefix, "search", collection="shared", query=query, k=3)
    assert seen["ids"][0] == "p" and abs(seen["scores"][0] - 1.0) < 1e-5
    assert sorted(seen["ids"]) == ["p", "q", "r"]
    # the other deletes: gone here too; a second store object (another client) agrees
    assert run_child(milvus_server, prefix, "delete", collection="shared", ids=["q", "zz"]) == {"deleted": 1}
    assert collection.get("q") is None and collection.size() == 2
    second = store_for(milvus_server, prefix)
    try:
        assert second.names() == ["shared"]
        assert sorted(second.open("shared").content_hashes(["p", "q", "r"])) == ["p", "r"]
        assert second.open("shared").manifest().encoder == ENCODER
    finally:
        second.close()


def test_a_writer_killed_mid_stream_loses_only_unacknowledged_batches(
    milvus_server: MilvusProcess, store: MilvusGalleryStore
) -> None:
    collection = new_collection(store, "crash")
    args = json.dumps({"dim": DIM, "collection": "crash"})
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, milvus_server.uri, store.prefix, "stream", args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acked: list[int] = []
    try:
        assert child.stdout is not None
        while len(acked) < 8:
            line = child.stdout.readline()
            assert line, child.stderr.read() if child.stderr else ""
            acked.append(int(line))
        os.kill(child.pid, signal.SIGKILL)  # possibly in the middle of the next batch's request
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=30)
        if child.stdout is not None:
            acked += [int(line) for line in child.stdout.read().split()]
            child.stdout.close()
        if child.stderr is not None:
            child.stderr.close()
    stored = {i for page in collection.export(1000) for i in page.ids}
    batches = {int(i[1:6]) for i in stored}
    assert set(acked) <= batches  # every acknowledged batch is there
    for batch in batches:  # and each batch is all there or not at all
        assert {f"b{batch:05d}-{j}" for j in range(10)} <= stored
    assert max(batches) <= max(acked) + 1  # at most the batch in flight besides
    # writing everything again changes nothing (idempotent)
    before = collection.size()
    again = [child_record(f"b{b:05d}-{j}", b * 10 + j) for b in sorted(batches) for j in range(10)]
    collection.upsert(again)
    assert collection.size() == before


# --- filters --------------------------------------------------------------------------------------------

FIELDS = (
    FilterableField("color", FieldType.STRING),
    FilterableField("size", FieldType.INT),
    FilterableField("price", FieldType.FLOAT),
    FilterableField("stock", FieldType.BOOL),
)
HOSTILE = [
    '"',
    "'",
    "\\",
    '\\"',
    'a"b',
    "x\\y",
    '" or 1 == 1 or "',
    "' or '1'=='1",
    'red" || color != "',
    "{x}",
    "{color}",
    "%s",
    "ünï",
    "😀",
    "中文",
    "a\nb",
    "tab\there",
    "",
    " red",
    "red ",
    "%72ed",  # percent-encoding of "red" as a raw value: must not match "red"
    'array_contains(present, "color")',
]


def filter_records(rng: np.random.Generator) -> list[ImageRecord]:
    records = []
    for n in range(240):
        metadata: dict[str, str] = {"other": "x"}
        if n % 7:
            metadata["color"] = str(rng.choice(["red", "blue", "green"]))
        if n % 5:
            metadata["size"] = str(int(rng.integers(-5, 15)))
        if n % 3:
            metadata["price"] = f"{rng.uniform(0, 100):.3f}"
        if n % 4:
            metadata["stock"] = str(rng.choice(["true", "false", "1", "0"]))
        records.append(make_record(f"f{n:03d}", rng, metadata))
    for n, value in enumerate(HOSTILE):
        records.append(make_record(f"h{n:03d}", rng, {"color": value, "stock": "true"}))
    return records


def reference_filtered(records, where: Filter, q: np.ndarray, k: int) -> tuple[list[str], np.ndarray, dict]:
    keep = []
    for r in records:
        values = filters.typed_metadata(r.metadata, FIELDS)
        if all(filters.matches(c, values.get(c.field)) for c in where.conditions):
            keep.append(r)
    if not keep:
        return [], np.zeros(0), {}
    scores = features_of(keep).t_v @ q
    ids = [r.id for r in keep]
    top_ids, top_scores = reference_top(scores, ids, k)
    return top_ids, top_scores, dict(zip(ids, scores.tolist(), strict=True))


FILTERS = [
    Filter((Condition("color", Equals("red")),)),
    Filter((Condition("color", AnyOf(("red", "green"))),)),
    Filter((Condition("stock", Equals(True)),)),
    Filter((Condition("stock", Equals(False)),)),
    Filter((Condition("stock", AnyOf((True, False))),)),
    Filter((Condition("size", Range(gt=3)),)),
    Filter((Condition("size", Range(gte=3)),)),
    Filter((Condition("size", Range(lt=2.5)),)),
    Filter((Condition("size", Range(lte=-2, gte=-4)),)),
    Filter((Condition("size", Range(gt=2.5, lt=3.5)),)),  # only 3
    Filter((Condition("size", Range(gte=7, lte=7)),)),  # equality on an int
    Filter((Condition("size", Range(gt=-1e300)),)),  # every image with a size
    Filter((Condition("size", Range(lt=1e300, gt=1e19)),)),  # beyond int64: none
    Filter((Condition("price", Range(gt=50.0)),)),
    Filter((Condition("price", Range(gte=10, lt=20.5)),)),
    Filter((Condition("price", Range(lte=5e1)),)),
    Filter((Condition("price", Range(gt=-1e300, lte=1e300)),)),
    Filter(
        (Condition("color", Equals("red")), Condition("size", Range(gte=0)), Condition("stock", Equals(True)))
    ),
    Filter((Condition("color", AnyOf(("blue",))), Condition("price", Range(lt=30)))),
    Filter((Condition("color", Equals("purple")),)),  # nothing matches
]


@pytest.fixture
def filtered(store: MilvusGalleryStore) -> tuple[MilvusCollection, list[ImageRecord]]:
    records = filter_records(np.random.default_rng(11))
    collection = new_collection(store, "filtered", filterable_fields=FIELDS)
    collection.upsert(records)
    return collection, records


@pytest.mark.parametrize("k", [5, 1000])
def test_filters_give_the_exact_top_k_among_matching_images(filtered, k: int) -> None:
    collection, records = filtered
    rng = np.random.default_rng(k)
    for where in FILTERS:
        q = rng.normal(size=DIM).astype(np.float32)
        ref_ids, ref_scores, all_scores = reference_filtered(records, where, q, k)
        hits = collection.search(IMAGE, q, k, where)
        assert_same_ranking(hits, ref_ids, ref_scores, all_scores)


def test_a_filter_matching_few_images_still_gives_all_of_them(filtered) -> None:
    collection, records = filtered
    where = Filter((Condition("size", Range(gt=2.5, lt=3.5)), Condition("color", Equals("red"))))
    q = np.ones(DIM, np.float32)
    ref_ids, _, _ = reference_filtered(records, where, q, 1000)
    assert 0 < len(ref_ids) < 10
    assert sorted(h.id for h in collection.search(IMAGE, q, 10, where)) == sorted(ref_ids)


def test_hostile_values_match_literally_and_never_widen(filtered) -> None:
    collection, _ = filtered
    q = np.ones(DIM, np.float32)
    for n, value in enumerate(HOSTILE):
        hits = collection.search(IMAGE, q, 1000, Filter((Condition("color", Equals(value)),)))
        assert [h.id for h in hits] == [f"h{n:03d}"], value
    hits = collection.search(IMAGE, q, 1000, Filter((Condition("color", AnyOf(tuple(HOSTILE))),)))
    assert sorted(h.id for h in hits) == [f"h{n:03d}" for n in range(len(HOSTILE))]
    for value in ['" or "" == "', 'red" or color != "x', '\\" or 1==1 #', "') or true or ('", "red\x00"]:
        assert collection.search(IMAGE, q, 1000, Filter((Condition("color", Equals(value)),))) == [], value
    # the metadata comes back byte for byte
    hit = collection.search(IMAGE, q, 1, Filter((Condition("color", Equals('" or 1 == 1 or "')),)))[0]
    assert hit.metadata["color"] == '" or 1 == 1 or "'


def test_bad_filters_are_invalid_argument(filtered) -> None:
    collection, _ = filtered
    q = np.ones(DIM, np.float32)
    for where, message in [
        (Filter((Condition("other", Equals("x")),)), "declares no filterable field"),
        (Filter((Condition("size", Equals("3")),)), "compare it with a range"),
        (Filter((Condition("color", AnyOf(())),)), "any_of is empty"),
        (Filter((Condition("stock", Equals("true")),)), "is a bool field"),
    ]:
        with pytest.raises(InvalidArgument, match=message):
            collection.search(IMAGE, q, 5, where)


def test_metadata_that_does_not_parse_is_refused_before_writing(store: MilvusGalleryStore) -> None:
    collection = new_collection(store, "typed", filterable_fields=FIELDS)
    rng = np.random.default_rng(5)
    good = make_record("good", rng, {"size": "3"})
    bad = make_record("bad", rng, {"size": "three"})
    with pytest.raises(InvalidArgument, match="image 'bad': metadata size"):
        collection.upsert([good, bad])
    assert collection.size() == 0


# --- approximate indexes --------------------------------------------------------------------------------


def test_ivf_is_an_option_and_ranks_like_exact_here(store: MilvusGalleryStore) -> None:
    rng = np.random.default_rng(6)
    records = [make_record(f"v{n:03d}", rng) for n in range(200)]
    collection = new_collection(store, "approx", ann="ivf")
    collection.upsert(records)
    q = rng.normal(size=DIM).astype(np.float32)
    scores = features_of(records).t_v @ q
    ref_ids, _ = reference_top(scores, [r.id for r in records], 50)
    got = [h.id for h in collection.search(IMAGE, q, 50)]
    recall = len(set(got) & set(ref_ids)) / 50
    assert recall >= 0.95, recall


def test_hnsw_on_an_engine_without_it_says_so(store: MilvusGalleryStore) -> None:
    # milvus-lite builds FLAT and IVF_FLAT only; a Milvus server builds HNSW.
    collection = new_collection(store, "graph", ann="hnsw")
    with pytest.raises(FailedPrecondition, match="HNSW"):
        collection.upsert([make_record("a", np.random.default_rng(0))])


# --- availability ---------------------------------------------------------------------------------------


def test_an_unreachable_server_is_unavailable_naming_the_uri() -> None:
    port = free_port()
    store = MilvusGalleryStore(f"http://127.0.0.1:{port}", token="root:secret", timeout_s=3)
    with pytest.raises(Unavailable, match=f"127.0.0.1:{port}"):
        store.check()
    with pytest.raises(Unavailable):
        store.names()
    with_userinfo = MilvusGalleryStore(f"http://user:pw@127.0.0.1:{port}", timeout_s=3)
    with pytest.raises(Unavailable) as error:
        with_userinfo.check()
    assert "pw" not in error.value.message


def test_a_server_that_goes_away_is_unavailable_and_comes_back(start_milvus, tmp_path: Path) -> None:
    server = start_milvus(data_dir=tmp_path / "db")
    store = MilvusGalleryStore(server.uri, prefix="outage", timeout_s=3)
    try:
        collection = new_collection(store, "kept")
        collection.upsert([make_record("a", np.random.default_rng(0))])
        store.check()
        server.kill()
        with pytest.raises(Unavailable, match=server.uri.removeprefix("http://")):
            store.check()
        with pytest.raises(Unavailable):
            collection.search(IMAGE, np.ones(DIM, np.float32), 5)
        # the same database on the same port: the store reconnects and the data is still there
        server.stop()
        restarted = start_milvus(server.port, data_dir=tmp_path / "db")
        deadline = time.monotonic() + 60
        while True:
            try:
                store.check()
                break
            except Unavailable:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert ping(restarted.port)
        assert store.open("kept").size() == 1
    finally:
        store.close()


def test_the_factory_opens_the_backend_the_settings_name(
    milvus_server: MilvusProcess, tmp_path, monkeypatch
) -> None:
    from cir_retriever.gallery.factory import open_store
    from cir_retriever.settings import RetrieverSettings

    monkeypatch.setenv("CIR_TEST_MILVUS_TOKEN", "root:Milvus")
    settings = RetrieverSettings(
        store_backend="milvus", milvus_uri=milvus_server.uri, milvus_token_env="CIR_TEST_MILVUS_TOKEN"
    )
    opened = open_store(settings)
    try:
        assert isinstance(opened, MilvusGalleryStore)
        opened.check()
    finally:
        opened.close()
    with pytest.raises(ConfigError, match="local or milvus"):
        open_store(RetrieverSettings(store_backend="cassandra", store_dir=str(tmp_path)))


def test_local_engines_refuse_a_shared_database_or_a_taken_port(start_milvus, tmp_path: Path) -> None:
    from cir_tools.local_milvus import MilvusStartError

    first = start_milvus(data_dir=tmp_path / "db")
    with pytest.raises(MilvusStartError, match="in use by another Milvus engine"):
        start_milvus(data_dir=tmp_path / "db")
    with pytest.raises(MilvusStartError, match="already served"):
        start_milvus(first.port)
    first.stop()
    assert not first.alive and not ping(first.port)
    # stopped, the database is free again, and kept
    again = start_milvus(data_dir=tmp_path / "db")
    assert again.alive and (tmp_path / "db" / "milvus.db").exists()
