"""The gallery store: durable, atomic per batch, consistent after a crash."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from cir_common.errors import FailedPrecondition, InvalidArgument, NotFound
from cir_retriever.fusion import normalize
from cir_retriever.gallery.local import GalleryStore
from cir_retriever.gallery.types import CollectionSettings, ImageRecord

DIM = 8


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


def test_round_trip_and_restart(tmp_path):
    store = GalleryStore(tmp_path)
    collection = new_collection(store)
    collection.upsert([record("a", 1), record("b", 2)])
    snapshot = collection.snapshot()
    store.close()

    reopened = GalleryStore(tmp_path).open("shoes")
    again = reopened.snapshot()
    assert again.ids == snapshot.ids == ["a", "b"]
    np.testing.assert_array_equal(again.features.t_v, snapshot.features.t_v)
    np.testing.assert_allclose(
        again.features.t_v, normalize(np.stack([record("a", 1).image_raw, record("b", 2).image_raw]))
    )
    stored = reopened.get("b")
    assert stored is not None and stored.captions == record("b", 2).captions
    np.testing.assert_array_equal(stored.caption_slots, record("b", 2).caption_slots)
    assert reopened.manifest().encoder == {"name": "clip", "revision": "abc"}


def test_replace_delete_and_snapshot_versions(tmp_path):
    collection = new_collection(GalleryStore(tmp_path))
    collection.upsert([record("a", 1), record("b", 2)])
    first = collection.snapshot()
    assert collection.snapshot() is first  # cached until a write
    collection.upsert([record("a", 3)])
    assert collection.content_hashes(["a", "b", "zz"]) == {"a": f"{3:064x}", "b": f"{2:064x}"}
    deleted, missing = collection.delete(["b", "nope"])
    assert (deleted, missing) == (1, ["nope"])
    assert collection.snapshot().ids == ["a"] and collection.size() == 1


def test_a_collection_created_again_never_reuses_a_snapshot_version(tmp_path):
    """Search caches indexes by (name, version): the new collection's must not match the dropped one's."""
    store = GalleryStore(tmp_path)
    old = new_collection(store)
    old.upsert([record("a", 1), record("b", 2)])
    old_version = old.snapshot().version
    store.drop("shoes")
    new = new_collection(store)
    new.upsert([record("c", 3)])
    assert new.snapshot().version != old_version
    assert new.snapshot().ids == ["c"]


def test_names_and_errors(tmp_path):
    store = GalleryStore(tmp_path)
    with pytest.raises(InvalidArgument, match="not valid"):
        store.create("../escape", CollectionSettings())
    with pytest.raises(NotFound, match="does not exist; known collections: none"):
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
    snapshot = collection.snapshot()
    assert len(snapshot.ids) % 50 == 0 and len(snapshot.ids) >= 5 * 50  # whole batches only
    batches = {image_id.split("-")[1] for image_id in snapshot.ids}
    assert {str(b) for b in range(5)} <= batches
    for image_id in snapshot.ids[:: max(1, len(snapshot.ids) // 20)]:
        stored = collection.get(image_id)
        batch, i = (int(x) for x in image_id.split("-")[1:])
        np.testing.assert_array_equal(stored.image_raw, record(image_id, batch * 100 + i).image_raw)
