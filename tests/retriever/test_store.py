"""The local gallery store: durable, atomic per batch, consistent after a crash; settings, export, checks."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from cir_common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from cir_retriever.fusion import normalize
from cir_retriever.gallery.local import GalleryStore
from cir_retriever.gallery.types import (
    CollectionSettings,
    FieldType,
    FilterableField,
    GalleryKind,
    GallerySpec,
    ImageRecord,
)

DIM = 8
IMAGE = GallerySpec(GalleryKind.IMAGE)


def record(image_id: str, seed: int, sha: str | None = None) -> ImageRecord:
    rng = np.random.default_rng(seed)
    return ImageRecord(
        id=image_id,
        uri=f"file:///gallery/{image_id}.png",
        metadata={"seed": str(seed)},
        content_sha256=sha or f"{seed:064x}",
        captions=[f"caption {seed} {j}" for j in range(3)],
        image_raw=rng.normal(size=DIM).astype(np.float32),
        caption_mean=rng.normal(size=DIM).astype(np.float32),
        caption_slots=rng.normal(size=(3, DIM)).astype(np.float32),
    )


def new_collection(store: GalleryStore, name: str = "shoes"):
    collection = store.create(name, CollectionSettings())
    collection.record_models({"name": "clip", "revision": "abc"}, {"name": "blip2", "revision": "def"}, DIM)
    return collection


def ids_by_image_search(collection) -> list[str]:
    """Every stored id, through the search path (a zero query scores all rows equal: write order)."""
    return [hit.id for hit in collection.search(IMAGE, np.zeros(DIM, np.float32), 10_000)]


def exported(collection, page_size: int = 1000) -> list:
    return list(collection.export(page_size))


def test_round_trip_and_restart(tmp_path):
    store = GalleryStore(tmp_path)
    collection = new_collection(store)
    collection.upsert([record("b", 2), record("a", 1)])
    query = record("q", 9).image_raw
    before = collection.search(IMAGE, query, 2)
    store.close()

    reopened = GalleryStore(tmp_path).open("shoes")
    assert reopened.name == "shoes"
    again = reopened.search(IMAGE, query, 2)
    assert [(h.id, h.uri, h.metadata) for h in again] == [(h.id, h.uri, h.metadata) for h in before]
    np.testing.assert_allclose([h.score for h in again], [h.score for h in before], rtol=1e-6)
    assert ids_by_image_search(reopened) == ["b", "a"]  # rows keep their write order across a restart
    (page,) = exported(reopened)
    assert page.ids == ["a", "b"] and page.total == 2
    np.testing.assert_allclose(
        page.features.t_v, normalize(np.stack([record("a", 1).image_raw, record("b", 2).image_raw]))
    )
    stored = reopened.get("b")
    assert stored is not None and stored.captions == record("b", 2).captions
    np.testing.assert_array_equal(stored.caption_slots, record("b", 2).caption_slots)
    assert reopened.manifest().encoder == {"name": "clip", "revision": "abc"}
    assert reopened.caption_slot_count() == 3


def test_replace_and_delete(tmp_path):
    collection = new_collection(GalleryStore(tmp_path))
    collection.upsert([record("a", 1), record("b", 2)])
    assert ids_by_image_search(collection) == ["a", "b"]
    collection.upsert([record("a", 3)])
    assert collection.content_hashes(["a", "b", "zz"]) == {"a": f"{3:064x}", "b": f"{2:064x}"}
    assert ids_by_image_search(collection) == ["b", "a"]  # a replaced image is written again, last
    deleted, missing = collection.delete(["b", "nope"])
    assert (deleted, missing) == (1, ["nope"])
    assert ids_by_image_search(collection) == ["a"] and collection.size() == 1
    (page,) = exported(collection)
    np.testing.assert_allclose(page.features.t_v[0], normalize(record("a", 3).image_raw))


def test_export_pages_in_id_order_from_sqlite(tmp_path):
    collection = new_collection(GalleryStore(tmp_path))
    ids = [f"img-{i:02d}" for i in range(7)]
    collection.upsert([record(i, n) for n, i in reversed(list(enumerate(ids)))])
    pages = exported(collection, page_size=3)
    assert [p.ids for p in pages] == [ids[0:3], ids[3:6], ids[6:]]
    assert {p.total for p in pages} == {7}
    last = pages[-1].features
    assert last.t_v.shape == (1, DIM) and last.caption_slots.shape == (1, 3, DIM)
    np.testing.assert_array_equal(last.caption_mean[0], record(ids[6], 6).caption_mean)  # raw, as stored
    np.testing.assert_array_equal(last.caption_slots[0], record(ids[6], 6).caption_slots)
    # everything stored comes along, so that importing the pages is a full copy
    expected = record(ids[6], 6)
    np.testing.assert_array_equal(pages[-1].image_raw[0], expected.image_raw)
    assert pages[-1].captions == [expected.captions] and pages[-1].metadata == [expected.metadata]
    assert pages[-1].content_sha256 == [expected.content_sha256]
    with pytest.raises(InvalidArgument, match="page_size"):
        collection.export(0)


def test_an_unparsable_filter_value_writes_nothing(tmp_path):
    store = GalleryStore(tmp_path)
    fields = (FilterableField("price", FieldType.FLOAT), FilterableField("color", FieldType.STRING))
    collection = store.create("shop", CollectionSettings(filterable_fields=fields))
    good = record("good", 1)
    bad = ImageRecord(**{**record("bad", 2).__dict__, "metadata": {"price": "cheap"}})
    with pytest.raises(InvalidArgument, match="image 'bad': metadata price = 'cheap' is not a valid float"):
        collection.upsert([good, bad])
    assert collection.size() == 0 and collection.content_hashes(["good", "bad"]) == {}
    wrong_shape = ImageRecord(**{**record("short", 3).__dict__, "image_raw": np.ones(DIM + 1, np.float32)})
    collection.upsert([good])
    with pytest.raises(InvalidArgument, match="image 'short': vectors of shapes"):
        collection.upsert([wrong_shape])
    assert collection.size() == 1


def test_settings_with_filterable_fields_and_ann_persist(tmp_path):
    store = GalleryStore(tmp_path)
    fields = (FilterableField("color", FieldType.STRING), FilterableField("stock", FieldType.INT))
    settings = CollectionSettings(num_captions=4, filterable_fields=fields, ann="hnsw")
    store.create("shop", settings)
    store.close()
    reopened = GalleryStore(tmp_path)
    assert reopened.open("shop").manifest().settings == settings
    assert reopened.create("shop", settings).manifest().settings == settings  # same settings: the same one
    with pytest.raises(InvalidArgument, match="declared twice"):
        reopened.create("dup", CollectionSettings(filterable_fields=(fields[0], fields[0])))
    with pytest.raises(InvalidArgument, match=r"settings\.ann 'annoy' is unknown"):
        reopened.create("other", CollectionSettings(ann="annoy"))
    assert reopened.names() == ["shop"]


def test_check_says_when_the_root_is_not_usable(tmp_path):
    root = tmp_path / "store"
    store = GalleryStore(root)
    store.check()
    assert list(root.iterdir()) == []  # the probe is removed
    shutil.rmtree(root)
    root.write_text("not a folder")
    with pytest.raises(Unavailable, match="is not usable"):
        store.check()


def test_a_collection_created_again_holds_only_its_own_images(tmp_path):
    store = GalleryStore(tmp_path)
    old = new_collection(store)
    old.upsert([record("a", 1), record("b", 2)])
    assert ids_by_image_search(old) == ["a", "b"]  # the old one's matrices are loaded
    assert store.drop("shoes") == 2
    new = new_collection(store)
    new.upsert([record("c", 3)])
    assert ids_by_image_search(store.open("shoes")) == ["c"]


def test_names_and_errors(tmp_path):
    store = GalleryStore(tmp_path)
    for bad in ("../escape", "probe\n", "", "-x", "x" * 129):  # a trailing newline is not a second name
        with pytest.raises(InvalidArgument, match="not valid"):
            store.create(bad, CollectionSettings())
    with pytest.raises(NotFound, match="does not exist; list the collections with ListCollections"):
        store.open("missing")
    new_collection(store, "one")
    with pytest.raises(FailedPrecondition, match="already exists"):
        store.create("one", CollectionSettings(num_captions=3))
    assert store.names() == ["one"]
    assert store.drop("one") == 0 and store.names() == []


def test_a_different_encoder_is_refused(tmp_path):
    collection = new_collection(GalleryStore(tmp_path))
    with pytest.raises(FailedPrecondition, match="indexed with encoder clip@abc"):
        collection.record_models({"name": "other", "revision": "xyz"}, {}, DIM)


def test_a_crash_mid_ingestion_keeps_committed_batches_and_nothing_half_written(tmp_path):
    """A writer process is SIGKILLed while committing batch after batch; the store must stay readable."""
    store = GalleryStore(tmp_path)
    new_collection(store)
    store.close()
    writer = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_store import record
        from cir_retriever.gallery.local import GalleryStore
        collection = GalleryStore(Path({str(tmp_path)!r})).open("shoes")
        batch = 0
        while True:
            collection.upsert([record(f"img-{{batch}}-{{i}}", batch * 100 + i) for i in range(50)])
            print(batch, flush=True)
            batch += 1
        """
    )
    process = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    try:
        committed = [process.stdout.readline() for _ in range(5)]
        assert all(line.strip() for line in committed)
        time.sleep(0.05)
    finally:
        process.kill()
        process.wait()
    collection = GalleryStore(tmp_path).open("shoes")
    stored_ids = [i for page in collection.export(1000) for i in page.ids]
    assert len(stored_ids) % 50 == 0 and len(stored_ids) >= 5 * 50  # whole batches only
    assert sorted(ids_by_image_search(collection)) == stored_ids  # the matrices load what SQLite holds
    batches = {image_id.split("-")[1] for image_id in stored_ids}
    assert {str(b) for b in range(5)} <= batches
    for image_id in stored_ids[:: max(1, len(stored_ids) // 20)]:
        stored = collection.get(image_id)
        batch, i = (int(x) for x in image_id.split("-")[1:])
        np.testing.assert_array_equal(stored.image_raw, record(image_id, batch * 100 + i).image_raw)
