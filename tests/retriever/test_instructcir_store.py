"""The InstructCIR target column in both gallery stores (local SQLite + matrices, and a real Milvus engine):
written with the models that made it, searched by inner product, kept whole across replace, delete, export
and an import of the export, refused where the collection keeps none."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cir_common.errors import FailedPrecondition, InvalidArgument
from cir_retriever.fusion import normalize
from cir_retriever.gallery.base import Collection, GalleryStore
from cir_retriever.gallery.local import GalleryStore as LocalStore
from cir_retriever.gallery.milvus import MilvusGalleryStore
from cir_retriever.gallery.milvus_vectors import INSTRUCTCIR, Layout, expand_query, gallery_rows
from cir_retriever.gallery.types import CollectionSettings, GalleryKind, GallerySpec, ImageRecord

DIM, TARGET_DIM, SLOTS = 8, 6, 3
ENCODER = {"name": "clip", "revision": "abc", "family": "open_clip"}
CAPTIONER = {"name": "blip2", "revision": "def", "family": "blip2"}
CHECKPOINT = {"name": "instructcir.pt", "revision": "0123456789abcdef", "family": "instructcir"}
TARGETS = GallerySpec(GalleryKind.INSTRUCTCIR)
IMAGE = GallerySpec(GalleryKind.IMAGE)


def make_record(image_id: str, rng: np.random.Generator, target: bool = True) -> ImageRecord:
    return ImageRecord(
        id=image_id,
        uri=f"file:///gallery/{image_id}.png",
        metadata={},
        content_sha256=rng.bytes(32).hex(),
        captions=["a caption"],
        image_raw=rng.normal(size=DIM).astype(np.float32),
        caption_mean=rng.normal(size=DIM).astype(np.float32),
        caption_slots=rng.normal(size=(SLOTS, DIM)).astype(np.float32),
        instructcir_target=normalize(rng.normal(size=TARGET_DIM).astype(np.float32)) if target else None,
    )


@pytest.fixture(params=["local", "milvus"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GalleryStore]:
    if request.param == "local":
        local = LocalStore(tmp_path / "collections")
        yield local
        local.close()
        return
    server = request.getfixturevalue("milvus_server")
    milvus = MilvusGalleryStore(server.uri, prefix=request.getfixturevalue("milvus_prefix"))
    try:
        yield milvus
    finally:
        for name in milvus.names():
            milvus.drop(name)
        milvus.close()


def with_targets(store: GalleryStore, name: str) -> Collection:
    collection = store.create(name, CollectionSettings())
    collection.record_models(ENCODER, CAPTIONER, DIM, CHECKPOINT, TARGET_DIM)
    return collection


def ranking(collection: Collection, q: np.ndarray, k: int = 100) -> list[tuple[str, float]]:
    return [(hit.id, hit.score) for hit in collection.search(TARGETS, q, k)]


def expected(records: list[ImageRecord], q: np.ndarray) -> list[tuple[str, float]]:
    scores = {r.id: float(r.instructcir_target @ q) for r in records}  # type: ignore[operator]
    return sorted(scores.items(), key=lambda item: -item[1])


def assert_ranked(got: list[tuple[str, float]], want: list[tuple[str, float]]) -> None:
    assert [i for i, _ in got] == [i for i, _ in want]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)


def test_targets_are_searched_replaced_deleted_and_kept_with_the_models(store: GalleryStore) -> None:
    rng = np.random.default_rng(3)
    collection = with_targets(store, "scenes")
    manifest = collection.manifest()
    assert manifest.instructcir == CHECKPOINT and manifest.instructcir_dim == TARGET_DIM
    records = [make_record(f"img-{n}", rng) for n in range(9)]
    collection.upsert(records[:5])
    q = normalize(rng.normal(size=TARGET_DIM).astype(np.float32))
    assert_ranked(ranking(collection, q), expected(records[:5], q))
    collection.upsert(records[5:])  # after the column was built for a search: appended rows are in it
    assert_ranked(ranking(collection, q), expected(records, q))
    # the image gallery is untouched by the column
    assert collection.search(IMAGE, normalize(records[2].image_raw), 1)[0].id == "img-2"

    stored = collection.get("img-4")
    assert stored is not None and stored.instructcir_target is not None
    np.testing.assert_allclose(stored.instructcir_target, records[4].instructcir_target, atol=1e-7)

    replaced = make_record("img-4", rng)
    collection.upsert([replaced])
    records[4] = replaced
    assert_ranked(ranking(collection, q), expected(records, q))
    assert collection.delete(["img-0", "img-7"]) == (2, [])
    kept = [r for r in records if r.id not in ("img-0", "img-7")]
    assert_ranked(ranking(collection, q), expected(kept, q))
    top = collection.search(TARGETS, replaced.instructcir_target, 1)[0]
    assert top.id == "img-4" and abs(top.score - 1.0) < 1e-5

    # another checkpoint's targets, or none, do not join this column
    with pytest.raises(FailedPrecondition, match=r"instructcir\.pt"):
        collection.record_models(ENCODER, CAPTIONER, DIM, {**CHECKPOINT, "revision": "other"}, TARGET_DIM)
    with pytest.raises(FailedPrecondition, match="no checkpoint"):
        collection.record_models(ENCODER, CAPTIONER, DIM)
    with pytest.raises(InvalidArgument, match="InstructCIR target has none"):
        collection.upsert([make_record("bare", rng, target=False)])
    with pytest.raises(InvalidArgument, match="dimension 6"):
        collection.upsert([replace(make_record("wide", rng), instructcir_target=np.ones(7, np.float32))])


def test_export_carries_the_targets_and_an_import_of_it_searches_the_same(store: GalleryStore) -> None:
    rng = np.random.default_rng(4)
    source = with_targets(store, "source")
    records = [make_record(f"r{n:02d}", rng) for n in range(11)]
    source.upsert(records)
    pages = list(source.export(4))
    assert [len(p.ids) for p in pages] == [4, 4, 3]
    exported: list[ImageRecord] = []
    for page in pages:
        assert page.features.instructcir_target is not None
        assert page.features.instructcir_target.shape == (len(page.ids), TARGET_DIM)
        for row, image_id in enumerate(page.ids):
            original = next(r for r in records if r.id == image_id)
            np.testing.assert_allclose(
                page.features.instructcir_target[row], original.instructcir_target, atol=1e-7
            )
            assert page.image_raw is not None
            exported.append(
                ImageRecord(
                    id=image_id,
                    uri=page.uris[row],
                    metadata=page.metadata[row],
                    content_sha256=page.content_sha256[row],
                    captions=page.captions[row],
                    image_raw=page.image_raw[row],
                    caption_mean=page.features.caption_mean[row],
                    caption_slots=page.features.caption_slots[row],
                    instructcir_target=page.features.instructcir_target[row],
                )
            )
    copy = with_targets(store, "copy")
    copy.upsert(exported)
    q = normalize(rng.normal(size=TARGET_DIM).astype(np.float32))
    assert_ranked(ranking(copy, q), ranking(source, q))
    assert_ranked(ranking(copy, q), expected(records, q))


def test_a_collection_without_targets_keeps_working_and_refuses_them(store: GalleryStore) -> None:
    rng = np.random.default_rng(5)
    plain = store.create("plain", CollectionSettings())
    plain.record_models(ENCODER, CAPTIONER, DIM)
    records = [make_record(f"p{n}", rng, target=False) for n in range(4)]
    plain.upsert(records)
    manifest = plain.manifest()
    assert manifest.instructcir == {} and manifest.instructcir_dim == 0
    assert plain.search(IMAGE, normalize(records[1].image_raw), 1)[0].id == "p1"
    assert all(page.features.instructcir_target is None for page in plain.export(10))
    assert plain.get("p1").instructcir_target is None  # type: ignore[union-attr]
    with pytest.raises(FailedPrecondition, match="keeps no InstructCIR"):
        plain.search(TARGETS, np.ones(TARGET_DIM, np.float32), 3)
    with pytest.raises(FailedPrecondition, match="keeps no InstructCIR"):
        plain.record_models(ENCODER, CAPTIONER, DIM, CHECKPOINT, TARGET_DIM)
    with pytest.raises(InvalidArgument, match="keeps none"):
        plain.upsert([make_record("t", rng)])


def test_the_local_column_survives_a_restart(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    first = LocalStore(tmp_path)
    records = [make_record(f"k{n}", rng) for n in range(5)]
    with_targets(first, "kept").upsert(records)
    first.close()
    again = LocalStore(tmp_path)
    try:
        collection = again.open("kept")
        q = normalize(rng.normal(size=TARGET_DIM).astype(np.float32))
        assert_ranked(ranking(collection, q), expected(records, q))
        assert collection.manifest().instructcir == CHECKPOINT
    finally:
        again.close()


def test_milvus_keeps_the_targets_in_their_own_vector_field() -> None:
    rng = np.random.default_rng(7)
    layout = Layout(dim=DIM, slots=SLOTS, cosine=(), instructcir_dim=TARGET_DIM)
    assert layout.field_dims()[INSTRUCTCIR] == TARGET_DIM
    assert INSTRUCTCIR not in Layout(dim=DIM, slots=SLOTS, cosine=()).field_dims()  # four fields as before
    targets = normalize(rng.normal(size=(5, TARGET_DIM)).astype(np.float32))
    rows = gallery_rows(
        layout,
        normalize(rng.normal(size=(5, DIM)).astype(np.float32)),
        rng.normal(size=(5, DIM)).astype(np.float32),
        rng.normal(size=(5, SLOTS, DIM)).astype(np.float32),
        targets,
    )
    q = rng.normal(size=TARGET_DIM).astype(np.float32)
    field, vector = expand_query(layout, TARGETS, q)
    assert field == INSTRUCTCIR
    np.testing.assert_allclose(rows[field] @ vector, targets @ q, rtol=1e-5)
    with pytest.raises(FailedPrecondition, match="no InstructCIR"):
        expand_query(Layout(dim=DIM, slots=SLOTS, cosine=()), TARGETS, q)
    with pytest.raises(FailedPrecondition, match="dimension 6"):
        expand_query(layout, TARGETS, np.ones(DIM, np.float32))
