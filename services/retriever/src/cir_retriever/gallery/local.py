"""The `local` gallery store: SQLite is the durable record, in-memory matrices answer searches.

Durability: each upsert batch is one SQLite transaction (WAL, synchronous FULL), so a crash loses at most
the batch in flight and never leaves half a record. Vectors are stored raw where later strategies need
raw features (the image embedding feeds Phi; WeiMoCIR fuses raw caption features), and the caption mean as
CVSI's t_c before any renormalisation, so any gamma or preset is answered without running a model again.
The declared filterable fields' typed values have their own table, and so do the InstructCIR target
embeddings (normalised) of a collection that keeps them: a table of its own (`instructcir_targets`), so that
collections written before it existed open unchanged.

Search: the first search (or `load()`) reads the collection once into `matrices.SearchMatrices`; from then
on every upsert / replace / delete updates SQLite and then the matrices (appends, tombstones, compaction),
so a search never re-reads SQLite (`rows_loaded` counts every row read into memory). Searches take a
published view of the matrices without a lock and never wait for a write. A collection created with
`settings.ann` (HNSW / IVF) answers unfiltered searches from an approximate index (`ann.AnnIndexes`);
filtered searches stay exact.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from cir_common.errors import FailedPrecondition, InvalidArgument, Unavailable
from cir_common.vectors import pack_f32, pack_f32_matrix, unpack_f32, unpack_f32_matrix
from cir_retriever.fusion import normalize
from cir_retriever.gallery import matrices as exact
from cir_retriever.gallery.ann import AnnIndexes
from cir_retriever.gallery.filters import TypedValue, validate_fields
from cir_retriever.gallery.matrices import RowBatch, SearchMatrices
from cir_retriever.gallery.rules import (
    check_same_encoder,
    check_shapes,
    check_targets,
    collection_not_found,
    last_of_each_id,
    now,
    typed_record_metadata,
    validate_collection_name,
)
from cir_retriever.gallery.types import (
    CollectionSettings,
    FeaturePage,
    FieldType,
    Filter,
    FilterableField,
    GalleryFeatures,
    GalleryKind,
    GallerySpec,
    Hit,
    ImageRecord,
    Manifest,
    settings_from_dict,
    settings_to_dict,
)

_DB_FILE = "gallery.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,
    uri TEXT NOT NULL,
    metadata TEXT NOT NULL,
    content_sha256 TEXT NOT NULL,
    captions TEXT NOT NULL,
    image_raw BLOB NOT NULL,
    caption_mean BLOB NOT NULL,
    caption_slots BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS image_fields (
    id TEXT NOT NULL,
    name TEXT NOT NULL,
    value NOT NULL,
    PRIMARY KEY (id, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS instructcir_targets (id TEXT PRIMARY KEY, vector BLOB NOT NULL) WITHOUT ROWID;
"""
_MATRIX_HEADER_BYTES = 12  # cir_common.vectors.pack_f32_matrix: magic, rows, cols
_LOAD_CHUNK = 8192  # rows per fetch when loading the matrices (bounds the temporary copies)
_ID_CHUNK = 500  # ids per `IN (...)` (below SQLite's bound on host parameters)


class Collection:
    """One collection. Thread-safe: writes are serialised by a lock, searches read a published view."""

    def __init__(self, path: Path, compact_fraction: float = 0.25) -> None:
        self.name = path.name
        self.path = path
        self.compact_fraction = compact_fraction
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path / _DB_FILE, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._settings: CollectionSettings | None = None
        self._matrices: SearchMatrices | None = None
        self._ann: AnnIndexes | None = None
        self._shape: tuple[int, int] | None = None  # (d, R) of the stored images, once known
        # Rows read from SQLite into memory (the load, the lazy caption-slot build): searches add nothing.
        self.rows_loaded = 0

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._matrices = None

    # -- manifest --------------------------------------------------------------------------------------------

    def manifest(self) -> Manifest:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'manifest'").fetchone()
        if row is None:
            raise FailedPrecondition(
                f"collection at {self.path} has no manifest; it was not created by this store"
            )
        data = json.loads(row[0])
        data["settings"] = settings_from_dict(data["settings"])
        return Manifest(**data)

    def _write_manifest(self, manifest: Manifest) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('manifest', ?)", (json.dumps(asdict(manifest)),)
        )

    def settings(self) -> CollectionSettings:
        """The settings (fixed at creation, so read once)."""
        if self._settings is None:
            self._settings = self.manifest().settings
        return self._settings

    def record_models(
        self,
        encoder: dict[str, str],
        captioner: dict[str, str],
        dim: int,
        instructcir: dict[str, str] | None = None,
        instructcir_dim: int = 0,
    ) -> None:
        """Records which models made the vectors; another encoder is refused (its vectors do not compare), and
        so are InstructCIR targets of another checkpoint than the collection keeps (or none / some where it
        keeps some / none)."""
        with self._lock:
            manifest = self.manifest()
            check_same_encoder(manifest, encoder, dim, instructcir, instructcir_dim)
            if not manifest.encoder:
                manifest.encoder, manifest.captioner, manifest.embedding_dim = encoder, captioner, dim
                manifest.instructcir = dict(instructcir or {})
                manifest.instructcir_dim = instructcir_dim if instructcir else 0
                self._write_manifest(manifest)

    # -- records ---------------------------------------------------------------------------------------------

    def content_hashes(self, ids: Sequence[str]) -> dict[str, str]:
        with self._lock:
            found: dict[str, str] = {}
            for chunk in _chunks(list(ids), _ID_CHUNK):
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(f"SELECT id, content_sha256 FROM images WHERE id IN ({marks})", chunk)
                found.update(dict(rows.fetchall()))
            return found

    def upsert(self, records: Sequence[ImageRecord]) -> None:
        """Writes a batch in one transaction (all of it or none of it), then updates the search matrices.

        Everything is checked before anything is written: each declared field's value must parse as its type,
        and the vectors must have the collection's shapes (InvalidArgument naming the image otherwise). An id
        given twice keeps its last entry, as SQLite's INSERT OR REPLACE does.
        """
        records = last_of_each_id(records)
        if not records:
            return
        fields = self.settings().filterable_fields
        typed = [typed_record_metadata(record, fields) for record in records]
        self._check_shapes(records)
        check_targets(records, self.name, self.manifest().instructcir_dim)
        rows = [
            (
                r.id,
                r.uri,
                json.dumps(r.metadata),
                r.content_sha256,
                json.dumps(r.captions),
                pack_f32(r.image_raw),
                pack_f32(r.caption_mean),
                pack_f32_matrix(r.caption_slots),
            )
            for r in records
        ]
        field_rows = [
            (r.id, name, _to_sql(value))
            for r, values in zip(records, typed, strict=True)
            for name, value in values.items()
        ]
        target_rows = [
            (r.id, pack_f32(r.instructcir_target)) for r in records if r.instructcir_target is not None
        ]
        ids = [r.id for r in records]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
                for chunk in _chunks(ids, _ID_CHUNK):
                    marks = ",".join("?" * len(chunk))
                    self._db.execute(f"DELETE FROM image_fields WHERE id IN ({marks})", chunk)
                    self._db.execute(f"DELETE FROM instructcir_targets WHERE id IN ({marks})", chunk)
                self._db.executemany(
                    "INSERT INTO image_fields (id, name, value) VALUES (?, ?, ?)", field_rows
                )
                self._db.executemany(
                    "INSERT INTO instructcir_targets (id, vector) VALUES (?, ?)", target_rows
                )
                self._touch()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            if self._shape is None:
                self._shape = (int(records[0].image_raw.shape[0]), int(records[0].caption_slots.shape[0]))
            self._follow(lambda matrices: matrices.upsert(_row_batch(records, rows, typed)))

    def _check_shapes(self, records: Sequence[ImageRecord]) -> None:
        """One dimension and one caption-slot count per collection (the matrices and the coded WeiMoCIR
        gallery need them), checked against what is stored."""
        stored = self._stored_shape()
        dim, slots = stored or (
            self.manifest().embedding_dim or int(records[0].image_raw.shape[-1]),
            int(records[0].caption_slots.shape[0]),
        )
        check_shapes(records, dim, slots)

    def _stored_shape(self) -> tuple[int, int] | None:
        """(d, R) of the stored images, None while there are none; one indexed row read, then cached."""
        if self._shape is not None:
            return self._shape
        with self._lock:
            header = f"substr(caption_slots, 1, {_MATRIX_HEADER_BYTES})"
            row = self._db.execute(f"SELECT length(image_raw), {header} FROM images LIMIT 1").fetchone()
            if row is None:
                return None
            slots = int(np.frombuffer(row[1], "<u4", count=1, offset=4)[0])
            self._shape = (int(row[0]) // 4, slots)
            return self._shape

    def delete(self, ids: Sequence[str]) -> tuple[int, list[str]]:
        with self._lock:
            present = set(self.content_hashes(ids))
            if present:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for chunk in _chunks(sorted(present), _ID_CHUNK):
                        marks = ",".join("?" * len(chunk))
                        self._db.execute(f"DELETE FROM images WHERE id IN ({marks})", chunk)
                        self._db.execute(f"DELETE FROM image_fields WHERE id IN ({marks})", chunk)
                        self._db.execute(f"DELETE FROM instructcir_targets WHERE id IN ({marks})", chunk)
                    self._touch()
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._shape = None  # an emptied collection may take other shapes: read them again
                self._follow(lambda matrices: matrices.remove(present))
        return len(present), [i for i in ids if i not in present]

    def _follow(self, change: Callable[[SearchMatrices], object]) -> None:
        """Applies a committed write to the matrices when they are loaded (then compacts if due). Should that
        fail (memory), the matrices are dropped: the next search loads them again from SQLite rather than
        answer from a copy that missed a write."""
        matrices = self._matrices
        if matrices is None:
            return
        try:
            change(matrices)
            matrices.maybe_compact()
        except BaseException:
            self._matrices = None
            raise

    def get(self, image_id: str) -> ImageRecord | None:
        with self._lock:
            row = self._db.execute(f"{_RECORD_COLUMNS} WHERE images.id = ?", (image_id,)).fetchone()
        return None if row is None else _record(row)

    def size(self) -> int:
        matrices = self._matrices
        if matrices is not None:
            return matrices.view().live
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM images").fetchone()[0])

    def caption_slot_count(self) -> int:
        """R, the caption slots each stored image has (0 while empty)."""
        shape = self._stored_shape()
        return 0 if shape is None else shape[1]

    def _touch(self) -> None:
        manifest = self.manifest()
        manifest.updated_at = now()
        self._write_manifest(manifest)

    # -- search ----------------------------------------------------------------------------------------------

    def load(self) -> None:
        """Reads the collection into the search matrices now (otherwise the first search does); idempotent."""
        self._loaded()

    def search(self, spec: GallerySpec, query: np.ndarray, k: int, where: Filter | None = None) -> list[Hit]:
        """The exact top-k images among those matching `where`, best first (ties: the earlier written first);
        from the approximate index instead when the collection declared one and there is no filter."""
        return self.search_batch(spec, np.asarray(query)[None, :], k, where)[0]

    def search_batch(
        self, spec: GallerySpec, queries: np.ndarray, k: int, where: Filter | None = None
    ) -> list[list[Hit]]:
        """`search` for each row of `queries` (b, w), in one matrix product per stored matrix."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        matrices = self._loaded()
        if exact.needs_slots(spec) and not matrices.has_slots:
            self._build_slots(matrices)
        if spec.kind is GalleryKind.INSTRUCTCIR and not matrices.has_instructcir:
            self._build_instructcir(matrices)
        view = matrices.view()
        if view.live and queries.shape[1] != exact.query_width(view, spec):
            raise InvalidArgument(
                f"the query vector has {queries.shape[1]} components; the {spec.kind.value} gallery of this "
                f"collection needs {exact.query_width(view, spec)}"
            )
        found = None
        if self._ann is not None and (where is None or not where.conditions):
            found = self._ann.search(view, spec, queries, k)
        rows, scores = found if found is not None else exact.search(view, spec, queries, k, where)
        return [
            [
                Hit(id=view.ids[r], score=float(s), uri=view.uris[r], metadata=_metadata(view.metadata[r]))
                for r, s in zip(query_rows.tolist(), query_scores.tolist(), strict=True)
            ]
            for query_rows, query_scores in zip(rows, scores, strict=True)
        ]

    def compact(self) -> None:
        """Drops the tombstones now (writes also do it when they pass `compact_fraction` of the rows)."""
        with self._lock:
            if self._matrices is not None:
                self._matrices.compact()

    def memory_bytes(self) -> int:
        """Bytes of the search matrices in memory (0 until a search or `load()` read them)."""
        matrices = self._matrices
        return 0 if matrices is None else matrices.memory_bytes()

    def matrices(self) -> SearchMatrices:
        """The search matrices, loaded on first use (for tests and benchmarks)."""
        return self._loaded()

    def _loaded(self) -> SearchMatrices:
        matrices = self._matrices
        if matrices is not None:
            return matrices
        with self._lock:
            if self._matrices is None:
                self._matrices = self._load()
            return self._matrices

    def _load(self) -> SearchMatrices:
        """One pass over SQLite, in rowid order (= write order, so rows come back in the order they had)."""
        settings = self.settings()
        if settings.ann:
            self._ann = AnnIndexes(settings.ann)
        count = int(self._db.execute("SELECT COUNT(*) FROM images").fetchone()[0])
        first = self._db.execute("SELECT length(image_raw) FROM images LIMIT 1").fetchone()
        dim = 0 if first is None else int(first[0]) // 4
        matrices = SearchMatrices(
            settings.filterable_fields, dim, count + count // 8, compact_fraction=self.compact_fraction
        )
        cursor = self._db.execute(
            "SELECT id, uri, metadata, image_raw, caption_mean FROM images ORDER BY rowid"
        )
        while rows := cursor.fetchmany(_LOAD_CHUNK):
            ids, uris, metadata, image_raw, caption_mean = zip(*rows, strict=True)
            matrices.upsert(
                RowBatch(
                    ids=list(ids),
                    uris=list(uris),
                    metadata=list(metadata),
                    image_raw=_packed_rows(image_raw, dim),
                    caption_mean=_packed_rows(caption_mean, dim),
                    typed=[{}] * len(rows),
                )
            )
            self.rows_loaded += len(rows)
        for spec in settings.filterable_fields:
            values = self._db.execute(
                "SELECT id, value FROM image_fields WHERE name = ?", (spec.name,)
            ).fetchall()
            if values:
                matrices.put_typed(spec.name, [v[0] for v in values], [_from_sql(spec, v[1]) for v in values])
        return matrices

    def _build_slots(self, matrices: SearchMatrices) -> None:
        """The normalised caption slots WeiMoCIR searches need: one more pass over SQLite, once."""
        with self._lock:
            if matrices.has_slots:
                return
            slot_count, dim = self.caption_slot_count(), matrices.view().dim
            payload = 4 * slot_count * dim

            def chunks() -> Iterator[tuple[list[str], np.ndarray]]:
                cursor = self._db.execute("SELECT id, caption_slots FROM images")
                while rows := cursor.fetchmany(_LOAD_CHUNK):
                    self.rows_loaded += len(rows)
                    blobs = [blob[_MATRIX_HEADER_BYTES:] for _, blob in rows]
                    if any(len(blob) != payload for blob in blobs):
                        raise FailedPrecondition(
                            f"collection {self.name!r} holds images with different caption slot counts; "
                            "re-index it"
                        )
                    slots = np.frombuffer(b"".join(blobs), "<f4").reshape(len(rows), slot_count, dim)
                    yield [image_id for image_id, _ in rows], slots.astype(np.float32, copy=False)

            matrices.build_slots(slot_count, chunks())

    def _build_instructcir(self, matrices: SearchMatrices) -> None:
        """The InstructCIR target matrix instructcir searches need: one more pass over SQLite, once; a
        collection that keeps no targets is refused (the core checks this first, with advice)."""
        with self._lock:
            if matrices.has_instructcir:
                return
            dim = self.manifest().instructcir_dim
            if not dim:
                raise FailedPrecondition(f"collection {self.name!r} keeps no InstructCIR target embeddings")

            def chunks() -> Iterator[tuple[list[str], np.ndarray]]:
                cursor = self._db.execute("SELECT id, vector FROM instructcir_targets")
                while rows := cursor.fetchmany(_LOAD_CHUNK):
                    self.rows_loaded += len(rows)
                    yield [image_id for image_id, _ in rows], _packed_rows([blob for _, blob in rows], dim)

            matrices.build_instructcir(dim, chunks())

    # -- export ----------------------------------------------------------------------------------------------

    def export(self, page_size: int) -> Iterator[FeaturePage]:
        """Every image's stored features from SQLite, in id order, `page_size` images a page."""
        if page_size < 1:
            raise InvalidArgument(f"page_size = {page_size}: give at least 1")
        return self._pages(page_size, self.size())

    def _pages(self, page_size: int, total: int) -> Iterator[FeaturePage]:
        columns = _RECORD_COLUMNS
        after: str | None = None
        while True:
            # Keyset pagination: no cursor stays open (or lock held) while a consumer handles a page.
            with self._lock:
                if after is None:
                    rows = self._db.execute(f"{columns} ORDER BY images.id LIMIT ?", (page_size,)).fetchall()
                else:
                    rows = self._db.execute(
                        f"{columns} WHERE images.id > ? ORDER BY images.id LIMIT ?", (after, page_size)
                    ).fetchall()
            if not rows:
                return
            image_raw = np.stack([unpack_f32(r[5]) for r in rows])
            yield FeaturePage(
                ids=[r[0] for r in rows],
                uris=[r[1] for r in rows],
                features=GalleryFeatures(
                    t_v=normalize(image_raw),
                    caption_mean=np.stack([unpack_f32(r[6]) for r in rows]),
                    caption_slots=np.stack([unpack_f32_matrix(r[7]) for r in rows]),
                    instructcir_target=_targets([r[8] for r in rows]),
                ),
                total=total,
                image_raw=image_raw,
                captions=[json.loads(r[4]) for r in rows],
                content_sha256=[r[3] for r in rows],
                metadata=[json.loads(r[2]) for r in rows],
            )
            if len(rows) < page_size:
                return
            after = rows[-1][0]


_decode_json = json.JSONDecoder().raw_decode
# A stored record: the images row and its InstructCIR target (NULL for a collection that keeps none).
_RECORD_COLUMNS = (
    "SELECT images.id, uri, metadata, content_sha256, captions, image_raw, caption_mean, caption_slots, "
    "instructcir_targets.vector FROM images "
    "LEFT JOIN instructcir_targets ON instructcir_targets.id = images.id"
)


def _targets(blobs: Sequence[bytes | None]) -> np.ndarray | None:
    """The rows' InstructCIR targets as one matrix; None when they have none (the collection keeps none)."""
    if any(blob is None for blob in blobs):
        return None
    return np.stack([unpack_f32(blob) for blob in blobs if blob is not None])


def _metadata(text: str) -> dict[str, str]:
    """A hit's metadata from the JSON text kept per row (written by json.dumps: no leading whitespace, so the
    decoder's raw entry point applies; it skips the per-call checks of json.loads, half the cost)."""
    return {} if text == "{}" else _decode_json(text)[0]


def _row_batch(records: Sequence[ImageRecord], rows: Sequence[tuple], typed: Sequence[dict]) -> RowBatch:
    """The matrices' rows for records just written (`rows`: what went to SQLite, for the metadata text)."""
    return RowBatch(
        ids=[r.id for r in records],
        uris=[r.uri for r in records],
        metadata=[row[2] for row in rows],
        image_raw=np.stack([r.image_raw for r in records]).astype(np.float32, copy=False),
        caption_mean=np.stack([r.caption_mean for r in records]).astype(np.float32, copy=False),
        typed=typed,
        caption_slots=np.stack([r.caption_slots for r in records]).astype(np.float32, copy=False),
        instructcir_target=None
        if any(r.instructcir_target is None for r in records)
        else np.stack([r.instructcir_target for r in records]).astype(np.float32, copy=False),
    )


def _to_sql(value: TypedValue) -> str | int | float:
    return int(value) if isinstance(value, bool) else value


def _from_sql(spec: FilterableField, value: str | int | float) -> TypedValue:
    if spec.type is FieldType.BOOL:
        return bool(value)
    if spec.type is FieldType.INT:
        return int(value)
    if spec.type is FieldType.FLOAT:
        return float(value)
    return str(value)


def _packed_rows(blobs: Sequence[bytes], dim: int) -> np.ndarray:
    """Packed float32 vectors of one dimension as an (m, d) matrix, in one copy."""
    return np.frombuffer(b"".join(blobs), "<f4").reshape(len(blobs), dim).astype(np.float32, copy=False)


def _record(row: tuple) -> ImageRecord:
    return ImageRecord(
        id=row[0],
        uri=row[1],
        metadata=json.loads(row[2]),
        content_sha256=row[3],
        captions=json.loads(row[4]),
        image_raw=unpack_f32(row[5]),
        caption_mean=unpack_f32(row[6]),
        caption_slots=unpack_f32_matrix(row[7]),
        instructcir_target=None if row[8] is None else unpack_f32(row[8]),
    )


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class GalleryStore:
    """All collections under one root folder (one sub-folder and SQLite file each)."""

    def __init__(self, root: Path, compact_fraction: float = 0.25) -> None:
        self.root = root
        self.compact_fraction = compact_fraction
        root.mkdir(parents=True, exist_ok=True)
        self._open: dict[str, Collection] = {}
        self._lock = threading.Lock()

    def create(self, name: str, settings: CollectionSettings) -> Collection:
        validate_collection_name(name)
        settings = replace(settings, filterable_fields=validate_fields(settings.filterable_fields))
        with self._lock:
            path = self.root / name
            if (path / _DB_FILE).exists():
                existing = self._open_locked(name).manifest()
                if existing.settings != settings:
                    shown = settings_to_dict(existing.settings)
                    raise FailedPrecondition(
                        f"collection {name!r} already exists with settings {shown}; "
                        "delete it first or use another name"
                    )
                return self._open[name]
            path.mkdir(parents=True, exist_ok=True)
            collection = Collection(path, self.compact_fraction)
            created = now()
            collection._write_manifest(
                Manifest(name=name, settings=settings, created_at=created, updated_at=created)
            )
            self._open[name] = collection
            return collection

    def open(self, name: str) -> Collection:
        validate_collection_name(name)
        with self._lock:
            return self._open_locked(name)

    def _open_locked(self, name: str) -> Collection:
        if name not in self._open:
            path = self.root / name
            if not (path / _DB_FILE).exists():
                raise collection_not_found(name)
            self._open[name] = Collection(path, self.compact_fraction)
        return self._open[name]

    def exists(self, name: str) -> bool:
        return (self.root / validate_collection_name(name) / _DB_FILE).exists()

    def memory_bytes(self) -> int:
        """Bytes of the search matrices of the open collections (the metrics' store memory)."""
        with self._lock:
            collections = list(self._open.values())
        return sum(collection.memory_bytes() for collection in collections)

    def names(self) -> list[str]:
        with self._lock:
            return self._names()

    def _names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / _DB_FILE).exists())

    def drop(self, name: str) -> int:
        # Checked before the name becomes a path: it is removed recursively.
        validate_collection_name(name)
        with self._lock:
            collection = self._open_locked(name)
            size = collection.size()
            collection.close()
            del self._open[name]
            shutil.rmtree(self.root / name)
            return size

    def check(self) -> None:
        """Unavailable unless the root folder can be listed, written and read back."""
        probe = self.root / f".check-{os.getpid()}-{threading.get_ident()}"
        try:
            probe.write_bytes(b"ok")
            readable = probe.read_bytes() == b"ok"
            probe.unlink()
            self._names()
        except OSError as error:
            raise Unavailable(f"gallery store at {self.root} is not usable: {error}") from None
        if not readable:
            raise Unavailable(f"gallery store at {self.root} did not read back what was written")

    def close(self) -> None:
        with self._lock:
            for collection in self._open.values():
                collection.close()
            self._open.clear()
