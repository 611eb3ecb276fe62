"""The local store's search: factored scoring, incremental matrices, filters, ties, approximate search.

The reference everywhere is `strategies.gallery_matrix(spec, features) @ q` over the features SQLite holds
(read back with `export`), and `filters.matches` for which images a filter selects.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from cir_common.errors import InvalidArgument
from cir_retriever import fusion
from cir_retriever.fusion import ScoreFunction, normalize
from cir_retriever.gallery import matrices as exact
from cir_retriever.gallery.filters import matches, typed_metadata
from cir_retriever.gallery.local import Collection, GalleryStore
from cir_retriever.gallery.topk import top_k
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
from cir_retriever.strategies import gallery_matrix

DIM, SLOTS = 16, 3
FIELDS = (
    FilterableField("color", FieldType.STRING),
    FilterableField("size", FieldType.INT),
    FilterableField("price", FieldType.FLOAT),
    FilterableField("in_stock", FieldType.BOOL),
)
# Values a caller might send to break an expression language: here they are only ever compared literally.
HOSTILE = ['"a" or 1==1', "it's", "x') OR ('1'='1", "back\\slash", "ünï©ødé 🚀", "", "red "]
COLORS = ["red", "blue", "green", *HOSTILE]

IMAGE = GallerySpec(GalleryKind.IMAGE)
SPECS = [
    IMAGE,
    *(
        GallerySpec(GalleryKind.CVSI, gamma, renormalized, score)
        for gamma in (0.0, 0.3, 0.5, 0.85, 1.0)
        for renormalized in (False, True)
        for score in (ScoreFunction.DOT, ScoreFunction.COSINE)
    ),
    *(GallerySpec(GalleryKind.WEIMOCIR_PAPER, weimocir_b=b) for b in (0.0, 0.35, 1.0)),
    GallerySpec(GalleryKind.WEIMOCIR_CODED),
]
SOME_SPECS = [
    IMAGE,
    GallerySpec(GalleryKind.CVSI, 0.5, False, ScoreFunction.DOT),
    GallerySpec(GalleryKind.CVSI, 0.85, True, ScoreFunction.COSINE),
    GallerySpec(GalleryKind.WEIMOCIR_PAPER, weimocir_b=0.35),
    GallerySpec(GalleryKind.WEIMOCIR_CODED),
]


def spec_id(spec: GallerySpec) -> str:
    renormalized = int(spec.caption_features_renormalized)
    return f"{spec.kind.value}-g{spec.gamma}-r{renormalized}-{spec.score}-b{spec.weimocir_b}"


def random_metadata(rng: np.random.Generator) -> dict[str, str]:
    """Each field present four times in five (absent values must match no condition)."""
    values = {
        "color": COLORS[rng.integers(len(COLORS))],
        "size": str(int(rng.integers(0, 7))),
        "price": f"{rng.uniform(0, 50):.2f}",
        "in_stock": ["true", "false", "1", "0"][rng.integers(4)],
    }
    return {key: value for key, value in values.items() if rng.random() < 0.8} | {"note": "free text"}


def make_record(image_id: str, rng: np.random.Generator, dim: int = DIM, slots: int = SLOTS) -> ImageRecord:
    return ImageRecord(
        id=image_id,
        uri=f"file:///gallery/{image_id}.png",
        metadata=random_metadata(rng),
        content_sha256=f"{rng.integers(1 << 62):064x}",
        captions=["a caption"],
        image_raw=rng.normal(size=dim).astype(np.float32),
        caption_mean=(rng.normal(size=dim) * 0.3).astype(np.float32),
        caption_slots=rng.normal(size=(slots, dim)).astype(np.float32),
    )


def query_for(spec: GallerySpec, rng: np.random.Generator, dim: int = DIM) -> np.ndarray:
    width = (SLOTS + 1) * dim if spec.kind is GalleryKind.WEIMOCIR_CODED else dim
    return rng.normal(size=width).astype(np.float32)


def new_collection(tmp_path, n: int, seed: int = 0, **settings: object) -> Collection:
    store = GalleryStore(tmp_path)
    collection = store.create("shop", CollectionSettings(filterable_fields=FIELDS, **settings))
    rng = np.random.default_rng(seed)
    collection.upsert([make_record(f"img-{i:05d}", rng) for i in range(n)])
    return collection


def stored(collection: Collection) -> tuple[list[str], GalleryFeatures]:
    """Every image's features as SQLite holds them (id order), through `export`."""
    pages = list(collection.export(10_000))
    if not pages:
        return [], GalleryFeatures(np.zeros((0, DIM)), np.zeros((0, DIM)), np.zeros((0, SLOTS, DIM)))
    features = GalleryFeatures(
        *(
            np.concatenate([getattr(p.features, f) for p in pages])
            for f in ("t_v", "caption_mean", "caption_slots")
        )
    )
    return [i for p in pages for i in p.ids], features


def reference_top(
    collection: Collection, spec: GallerySpec, q: np.ndarray, k: int, where: Filter | None = None
) -> list[tuple[str, float]]:
    """The exact top-k by `gallery_matrix @ q` among images `filters.matches` selects."""
    ids, features = stored(collection)
    scores = gallery_matrix(spec, features) @ q
    keep = np.arange(len(ids))
    if where is not None:
        typed = [typed_metadata(collection.get(i).metadata, FIELDS) for i in ids]
        keep = np.array(
            [
                r
                for r, values in enumerate(typed)
                if all(matches(c, values.get(c.field)) for c in where.conditions)
            ],
            np.int64,
        )
    order = keep[np.argsort(-scores[keep], kind="stable")][:k]
    return [(ids[r], float(scores[r])) for r in order]


def assert_same_hits(hits: list, expected: list[tuple[str, float]]) -> None:
    assert [h.id for h in hits] == [i for i, _ in expected]
    np.testing.assert_allclose([h.score for h in hits], [s for _, s in expected], rtol=1e-5, atol=1e-5)


# --- the factored equations (fusion) against the materialised gallery -----------------------------------


def factored_scores(spec: GallerySpec, features: GalleryFeatures, q: np.ndarray) -> np.ndarray:
    """Scores of a query (w,) or queries (b, w) from products with the stored matrices (never fused)."""

    def product(matrix: np.ndarray, query: np.ndarray) -> np.ndarray:
        return query @ matrix.T  # (n,) or (b, n)

    t_v, t_c = features.t_v, features.caption_mean
    if spec.kind is GalleryKind.IMAGE:
        return product(t_v, q)
    if spec.kind is GalleryKind.CVSI:
        image_sq, caption_sq, dots = fusion.cvsi_row_scalars(t_c, t_v)
        return fusion.cvsi_scores_from_products(
            product(t_v, q),
            product(t_c, q),
            spec.gamma,
            spec.score,
            image_sq,
            caption_sq,
            dots,
            spec.caption_features_renormalized,
        )
    slots = normalize(features.caption_slots)
    if spec.kind is GalleryKind.WEIMOCIR_PAPER:
        return fusion.weimocir_paper_scores_from_products(
            product(t_v, q), product(slots.mean(axis=1), q), spec.weimocir_b
        )
    slot_part, image_part = fusion.weimocir_coded_query_parts(q, t_v.shape[1])
    return fusion.weimocir_coded_scores_from_products(
        product(slots.reshape(len(t_v), -1), slot_part), product(t_v, image_part)
    )


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_factored_scores_equal_the_materialised_gallery(spec):
    rng = np.random.default_rng(11)
    n = 400
    caption_mean = (rng.normal(size=(n, DIM)) * 0.3).astype(np.float32)
    caption_mean[7] = 0.0  # an image without caption features: the eps paths of normalize
    features = GalleryFeatures(
        t_v=normalize(rng.normal(size=(n, DIM)).astype(np.float32)),
        caption_mean=caption_mean,
        caption_slots=rng.normal(size=(n, SLOTS, DIM)).astype(np.float32),
    )
    for _ in range(3):
        q = query_for(spec, rng)
        expected = gallery_matrix(spec, features) @ q
        got = factored_scores(spec, features, q)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(np.argsort(-got)[:50], np.argsort(-expected)[:50])
        # batched queries (one product per stored matrix) give the same scores
        batch = np.stack([q, query_for(spec, rng)])
        batched = factored_scores(spec, features, batch)
        assert batched.shape == (2, n)
        np.testing.assert_allclose(batched[0], expected, rtol=1e-5, atol=1e-5)


# --- the store's search against the reference ---------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS, ids=spec_id)
def test_search_equals_the_reference_for_every_gallery_spec(tmp_path, spec):
    collection = new_collection(tmp_path, 300)
    rng = np.random.default_rng(5)
    for _ in range(2):
        q = query_for(spec, rng)
        assert_same_hits(collection.search(spec, q, 25), reference_top(collection, spec, q, 25))
    queries = np.stack([query_for(spec, rng) for _ in range(4)])
    batched = collection.search_batch(spec, queries, 10)
    for q, hits in zip(queries, batched, strict=True):
        assert [h.id for h in hits] == [h.id for h in collection.search(spec, q, 10)]


def test_hits_carry_uri_and_metadata_and_bad_queries_are_refused(tmp_path):
    collection = new_collection(tmp_path, 20)
    (hit,) = collection.search(IMAGE, np.ones(DIM, np.float32), 1)
    record = collection.get(hit.id)
    assert (hit.uri, hit.metadata) == (record.uri, record.metadata)
    assert collection.search(IMAGE, np.ones(DIM, np.float32), 0) == []
    with pytest.raises(
        InvalidArgument, match="has 17 components; the image gallery of this collection needs 16"
    ):
        collection.search(IMAGE, np.ones(DIM + 1, np.float32), 3)
    with pytest.raises(InvalidArgument, match="needs 64"):
        collection.search(GallerySpec(GalleryKind.WEIMOCIR_CODED), np.ones(DIM, np.float32), 3)
    empty = GalleryStore(tmp_path / "other").create("empty", CollectionSettings())
    assert empty.search(IMAGE, np.ones(DIM, np.float32), 5) == []


# --- incremental maintenance --------------------------------------------------------------------------


def test_incremental_maintenance_equals_a_fresh_load(tmp_path):
    """Upserts, replaces, deletes and compactions applied to loaded matrices answer exactly as matrices
    loaded afresh from SQLite: same ids in the same order (row order included), same scores."""
    collection = new_collection(tmp_path, 120, seed=1)
    collection.search(GallerySpec(GalleryKind.WEIMOCIR_CODED), np.zeros((SLOTS + 1) * DIM, np.float32), 1)
    rng = np.random.default_rng(2)
    next_id, generations = 1000, {collection.matrices().view().generation}
    for _ in range(80):
        ids = [i for page in collection.export(10_000) for i in page.ids]
        op = rng.choice(["insert", "replace", "delete", "mixed", "compact"], p=[0.3, 0.25, 0.25, 0.15, 0.05])
        if op == "insert":
            batch = [make_record(f"new-{next_id + j}", rng) for j in range(int(rng.integers(1, 20)))]
            next_id += len(batch)
            collection.upsert(batch)
        elif op == "replace" and ids:
            collection.upsert(
                [make_record(i, rng) for i in rng.choice(ids, min(len(ids), 10), replace=False)]
            )
        elif op == "delete" and ids:
            collection.delete(list(rng.choice(ids, min(len(ids), int(rng.integers(1, 15))), replace=False)))
        elif op == "mixed" and ids:
            # one batch with an id twice (the last entry wins) and a new image
            again = str(rng.choice(ids))
            collection.upsert(
                [make_record(again, rng), make_record(f"new-{next_id}", rng), make_record(again, rng)]
            )
            next_id += 1
        elif op == "compact":
            collection.compact()
        generations.add(collection.matrices().view().generation)
    assert len(generations) >= 3, "the sequence should have compacted more than once"

    fresh = GalleryStore(tmp_path).open("shop")  # another store object: loads from SQLite
    assert fresh.size() == collection.size()
    zero = np.zeros(DIM, np.float32)  # every score equal: the answer is the row order itself
    assert [h.id for h in fresh.search(IMAGE, zero, 10_000)] == [
        h.id for h in collection.search(IMAGE, zero, 10_000)
    ]
    wheres = [
        None,
        Filter((Condition("color", AnyOf(("red", "blue", HOSTILE[0]))),)),
        Filter((Condition("size", Range(gte=2)),)),
    ]
    for spec in SOME_SPECS:
        for where in wheres:
            q = query_for(spec, rng)
            incremental, loaded = collection.search(spec, q, 40, where), fresh.search(spec, q, 40, where)
            assert [h.id for h in incremental] == [h.id for h in loaded]
            np.testing.assert_allclose([h.score for h in incremental], [h.score for h in loaded], rtol=1e-5)
            assert_same_hits(incremental, reference_top(collection, spec, q, 40, where))


def test_a_search_between_writes_never_reads_sqlite(tmp_path):
    collection = new_collection(tmp_path, 200)
    rng = np.random.default_rng(3)
    for spec in SOME_SPECS:  # loads the matrices, then builds the caption slots: two passes, once each
        collection.search(spec, query_for(spec, rng), 5)
    loaded = collection.rows_loaded
    assert loaded == 2 * 200

    class NoSQLite:
        def __getattr__(self, name: str) -> object:
            raise AssertionError(f"a search used SQLite ({name})")

    for step in range(4):
        collection.upsert([make_record(f"w{step}-{j}", rng) for j in range(16)])
        collection.upsert([make_record(f"img-{step:05d}", rng)])  # a replace
        collection.delete([f"img-{100 + step:05d}"])
        database, collection._db = collection._db, NoSQLite()
        try:
            for spec in SOME_SPECS:
                hits = collection.search(spec, query_for(spec, rng), 300)
                assert len(hits) == collection.size() and f"w{step}-0" in {h.id for h in hits}
                assert f"img-{100 + step:05d}" not in {h.id for h in hits}
        finally:
            collection._db = database
    assert collection.rows_loaded == loaded


def test_matrices_that_missed_a_write_are_dropped_and_loaded_again(tmp_path, monkeypatch):
    collection = new_collection(tmp_path, 50)
    collection.load()
    rng = np.random.default_rng(6)

    def out_of_memory(self, batch):
        raise MemoryError("no room")

    monkeypatch.setattr(exact.SearchMatrices, "upsert", out_of_memory)
    with pytest.raises(MemoryError):
        collection.upsert([make_record("late", rng)])  # committed to SQLite, not applied in memory
    monkeypatch.undo()
    loaded = collection.rows_loaded
    assert "late" in {h.id for h in collection.search(IMAGE, np.zeros(DIM, np.float32), 100)}
    assert collection.rows_loaded == loaded + 51


def test_an_emptied_collection_takes_new_shapes(tmp_path):
    collection = new_collection(tmp_path, 10)
    collection.search(GallerySpec(GalleryKind.WEIMOCIR_CODED), np.zeros((SLOTS + 1) * DIM, np.float32), 3)
    collection.delete([f"img-{i:05d}" for i in range(10)])
    assert collection.size() == 0 and collection.caption_slot_count() == 0
    rng = np.random.default_rng(1)
    collection.upsert([make_record(f"two-{i}", rng, slots=2) for i in range(5)])
    assert collection.caption_slot_count() == 2
    hits = collection.search(GallerySpec(GalleryKind.WEIMOCIR_CODED), query_for(IMAGE, rng, 3 * DIM), 5)
    assert len(hits) == 5


def test_searches_during_writes_see_each_write_whole(tmp_path):
    """A writer replaces and deletes/re-adds images (compacting on the way) while searches run: every
    answer has the full count and never an image twice (an old and a new row of one image)."""
    collection = new_collection(tmp_path, 300)
    collection.load()
    ids = [f"img-{i:05d}" for i in range(300)]
    done = threading.Event()
    failures: list[str] = []

    def write() -> None:
        rng = np.random.default_rng(9)
        try:
            for step in range(60):
                chosen = [str(i) for i in rng.choice(ids, 16, replace=False)]
                if step % 3 == 2:
                    collection.delete(chosen)
                collection.upsert([make_record(i, rng) for i in chosen])
        finally:
            done.set()

    writer = threading.Thread(target=write)
    writer.start()
    rng = np.random.default_rng(4)
    searches = 0
    while not done.is_set() or searches < 5:
        hits = collection.search(IMAGE, query_for(IMAGE, rng), 400)
        found = [h.id for h in hits]
        if len(set(found)) != len(found) or not 284 <= len(found) <= 300:
            failures.append(f"{len(found)} hits, {len(set(found))} distinct")
        searches += 1
    writer.join()
    assert not failures, failures[:5]
    assert collection.matrices().view().generation > 0  # compaction happened while searching
    assert collection.size() == 300


# --- filters ------------------------------------------------------------------------------------------

FILTERS = {
    "equals-string": Filter((Condition("color", Equals("red")),)),
    "equals-hostile-quotes": Filter((Condition("color", Equals('"a" or 1==1')),)),
    "equals-hostile-sql": Filter((Condition("color", Equals("x') OR ('1'='1")),)),
    "equals-backslash": Filter((Condition("color", Equals("back\\slash")),)),
    "equals-unicode": Filter((Condition("color", Equals("ünï©ødé 🚀")),)),
    "equals-empty-string": Filter((Condition("color", Equals("")),)),
    "equals-unknown-value": Filter((Condition("color", Equals("purple")),)),
    "any-of-strings": Filter((Condition("color", AnyOf(("blue", "it's", "red ", "purple"))),)),
    "equals-bool": Filter((Condition("in_stock", Equals(True)),)),
    "any-of-bool": Filter((Condition("in_stock", AnyOf((False,))),)),
    "any-of-both-bools": Filter((Condition("in_stock", AnyOf((True, False))),)),
    "int-gt": Filter((Condition("size", Range(gt=3)),)),
    "int-gte": Filter((Condition("size", Range(gte=3)),)),
    "int-lt": Filter((Condition("size", Range(lt=3)),)),
    "int-lte": Filter((Condition("size", Range(lte=3)),)),
    "int-equal": Filter((Condition("size", Range(gte=4, lte=4)),)),
    "float-gt-lt": Filter((Condition("price", Range(gt=10.5, lt=40.0)),)),
    "float-gte-lte": Filter((Condition("price", Range(gte=12.25, lte=12.25 + 20)),)),
    "float-broad": Filter(
        (Condition("price", Range(gte=0.0)),)
    ),  # most rows: scored in full, the rest excluded
    "and": Filter(
        (
            Condition("color", AnyOf(("red", "blue", "green"))),
            Condition("size", Range(gte=2)),
            Condition("in_stock", Equals(True)),
            Condition("price", Range(lt=45.0)),
        )
    ),
    "and-nothing": Filter((Condition("size", Range(gt=5)), Condition("size", Range(lt=1)))),
    "and-selective": Filter((Condition("color", Equals("it's")), Condition("in_stock", Equals(False)))),
}


@pytest.fixture(scope="module")
def filtered_collection(tmp_path_factory) -> Collection:
    collection = new_collection(tmp_path_factory.mktemp("filters"), 400, seed=21)
    rng = np.random.default_rng(22)  # some replaced images change their values: the columns follow
    collection.upsert([make_record(f"img-{i:05d}", rng) for i in range(0, 400, 7)])
    collection.delete([f"img-{i:05d}" for i in range(3, 400, 11)])
    return collection


@pytest.mark.parametrize("name", list(FILTERS))
def test_filters_select_exactly_the_matching_images(filtered_collection, name):
    where = FILTERS[name]
    rng = np.random.default_rng(len(name))
    for spec in (IMAGE, GallerySpec(GalleryKind.CVSI, 0.85, True, ScoreFunction.COSINE)):
        q = query_for(spec, rng)
        everything = reference_top(filtered_collection, spec, q, 10_000, where)
        hits = filtered_collection.search(spec, q, 10_000, where)  # k larger than the matching count
        assert_same_hits(hits, everything)
        assert_same_hits(filtered_collection.search(spec, q, 5, where), everything[:5])
    if name.startswith("equals-hostile") or name in ("equals-backslash", "equals-unicode"):
        value = where.conditions[0].test.value
        assert hits and all(filtered_collection.get(h.id).metadata["color"] == value for h in hits)


def test_every_way_of_applying_a_filter_is_exercised(filtered_collection):
    """The cases above cover each plan: a selective filter multiplies only its rows' vectors, one keeping
    under half of the rows keeps only their scores, a broad one sets the others' scores to -inf."""
    view = filtered_collection.matrices().view()
    selective = exact._plan(view, FILTERS["and-selective"])
    assert (
        selective.rows is not None
        and selective.score_rows_only
        and 0 < selective.valid == selective.rows.size
    )
    minority = exact._plan(view, FILTERS["int-gt"])
    assert minority.rows is not None and not minority.score_rows_only and minority.exclude is None
    broad = exact._plan(view, FILTERS["float-broad"])
    assert broad.rows is None and broad.exclude is not None and broad.valid == int((~broad.exclude).sum())


def test_filter_columns_without_numbers_or_values_match_nothing(filtered_collection):
    """Images lacking a field never match a condition on it, whatever the operator."""
    ids, _ = stored(filtered_collection)
    lacking = {i for i in ids if "size" not in filtered_collection.get(i).metadata}
    assert lacking
    wide = Filter((Condition("size", Range(gt=-1e18)),))
    found = {h.id for h in filtered_collection.search(IMAGE, np.ones(DIM, np.float32), 10_000, wide)}
    assert found == set(ids) - lacking


# --- ties and top-k -----------------------------------------------------------------------------------


def test_top_k_breaks_ties_by_row_order():
    scores = np.array([[1.0, 3.0, 3.0, 3.0, 2.0, 3.0, -np.inf]], np.float32)
    rows, values = top_k(scores, 2)
    assert rows.tolist() == [[1, 2]] and values.tolist() == [[3.0, 3.0]]
    rows, _ = top_k(scores, 5)
    assert rows.tolist() == [[1, 2, 3, 5, 4]]
    rows, _ = top_k(np.tile(scores, (3, 1)), 6)
    assert rows.tolist() == [[1, 2, 3, 5, 4, 0]] * 3
    rows, _ = top_k(scores, 0)
    assert rows.shape == (1, 0)


def test_equal_scores_come_back_in_write_order(tmp_path):
    store = GalleryStore(tmp_path)
    collection = store.create("same", CollectionSettings())
    rng = np.random.default_rng(0)
    same = make_record("x", rng)
    collection.upsert([ImageRecord(**{**same.__dict__, "id": f"s{i:02d}"}) for i in range(40)])
    q = np.ones(DIM, np.float32)
    assert [h.id for h in collection.search(IMAGE, q, 7)] == [f"s{i:02d}" for i in range(7)]
    collection.upsert([ImageRecord(**{**same.__dict__, "id": "s01"})])  # written again: now last
    assert [h.id for h in collection.search(IMAGE, q, 40)][-1] == "s01"
    assert [h.id for h in collection.search(IMAGE, q, 3)] == ["s00", "s02", "s03"]


# --- approximate search -------------------------------------------------------------------------------


def ann_collection(tmp_path, method: str, n: int, dim: int) -> Collection:
    store = GalleryStore(tmp_path)
    collection = store.create("ann", CollectionSettings(ann=method))
    rng = np.random.default_rng(2024)
    for start in range(0, n, 5000):
        collection.upsert([make_record(f"v{i:06d}", rng, dim, 1) for i in range(start, min(start + 5000, n))])
    return collection


def recall_at(collection: Collection, queries: np.ndarray, k: int) -> float:
    view = collection.matrices().view()
    exact_rows, _ = exact.search(view, IMAGE, queries, k)
    approximate = collection.search_batch(IMAGE, queries, k)
    found = [
        len({view.ids[r] for r in rows} & {h.id for h in hits}) / k
        for rows, hits in zip(exact_rows, approximate, strict=True)
    ]
    return float(np.mean(found))


def test_hnsw_recall_at_50_against_exact_search(tmp_path):
    collection = ann_collection(tmp_path, "hnsw", 20_000, 64)
    queries = normalize(np.random.default_rng(7).normal(size=(100, 64)).astype(np.float32))
    recall = recall_at(collection, queries, 50)
    print(f"HNSW recall@50 on 20000 x 64 seeded random vectors: {recall:.4f}")
    assert recall >= 0.95

    # after writes: deleted images never come back, new ones are found (the index is extended, not rebuilt)
    builds = collection._ann.builds
    first = collection.search(IMAGE, queries[0], 50)
    collection.delete([h.id for h in first[:10]])
    probe = make_record("probe", np.random.default_rng(8), 64, 1)
    collection.upsert([ImageRecord(**{**probe.__dict__, "image_raw": queries[1] * 3})])
    assert not {h.id for h in first[:10]} & {h.id for h in collection.search(IMAGE, queries[0], 50)}
    assert collection.search(IMAGE, queries[1], 5)[0].id == "probe"
    assert collection._ann.builds == builds
    # a filter is always answered exactly
    assert collection.search(IMAGE, queries[0], 5, Filter()) == collection.search(IMAGE, queries[0], 5)


def test_ivf_answers_with_a_reported_recall(tmp_path):
    collection = ann_collection(tmp_path, "ivf", 5_000, 32)
    queries = normalize(np.random.default_rng(7).normal(size=(50, 32)).astype(np.float32))
    recall = recall_at(collection, queries, 50)
    print(f"IVF recall@50 on 5000 x 32 seeded random vectors: {recall:.4f}")
    assert recall >= 0.5
    assert len(collection.search(IMAGE, queries[0], 50)) == 50


def test_top_k_of_a_large_batch_splits_across_threads_and_agrees():
    rng = np.random.default_rng(3)
    scores = rng.standard_normal((5, 300_000)).astype(np.float32)  # 1.5M scores: the threaded path
    scores[:, 1000:1100] = 9.0  # a hundred ties at the top
    for k in (50, 120):
        rows, values = top_k(scores, k)
        expected = np.stack([np.lexsort((np.arange(row.size), -row))[:k] for row in scores])
        np.testing.assert_array_equal(rows, expected)
        np.testing.assert_array_equal(values, np.take_along_axis(scores, expected, axis=1))
    assert top_k(scores, 50)[0][0].tolist() == list(range(1000, 1050))


@pytest.mark.parametrize("name", ["../victim", "long " * 100, "a/b", ""])
def test_dropping_a_name_that_is_no_collection_name_touches_no_folder(tmp_path, name):
    # The fuzzer found drop() turning any string into a path under the root and removing it recursively.
    victim = tmp_path / "victim"
    GalleryStore(victim).create("kept", CollectionSettings())
    (victim / "gallery.sqlite").write_bytes(b"")  # would make "../victim" look like a collection
    store = GalleryStore(tmp_path / "root")
    with pytest.raises(InvalidArgument):
        store.drop(name)
    assert (victim / "kept").is_dir() and (victim / "gallery.sqlite").exists()
