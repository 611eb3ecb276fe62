"""The gallery store: durable collections of indexed images, one SQLite file per collection.

SQLite gives the durability contract for free: each ingestion batch is one transaction, so a
crash loses at most the batch in flight and never leaves a half-written record; WAL mode keeps
readers (searches) going while a batch commits. Vectors are stored raw where later strategies
need raw features (the image embedding feeds Phi; WeiMoCIR fuses raw caption features), and the
caption mean as CVSI's t_c before any renormalisation, so any gamma or preset can be rebuilt
without running a model again.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from cir_common.errors import FailedPrecondition, InvalidArgument, NotFound
from cir_common.vectors import pack_f32, pack_f32_matrix, unpack_f32, unpack_f32_matrix
from cir_retriever.fusion import normalize
from cir_retriever.gallery.types import (
    CollectionSettings,
    GalleryFeatures,
    ImageRecord,
    Manifest,
    settings_from_dict,
)

# Snapshot versions are unique across every Collection object of the process: a collection dropped and
# created again under the same name never reuses a version, so no cached index of the old one matches.
_VERSIONS = itertools.count(1)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
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
"""


def validate_collection_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise InvalidArgument(
            f"collection name {name!r} is not valid: use 1-128 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Snapshot:
    """An immutable view of a collection for searching; `version` changes with every write."""

    version: int
    ids: list[str]
    uris: list[str]
    features: GalleryFeatures


class Collection:
    """One collection. Thread-safe: the service calls it from worker threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path / _DB_FILE, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._version = next(_VERSIONS)
        self._snapshot: Snapshot | None = None

    def close(self) -> None:
        with self._lock:
            self._db.close()

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

    def write_manifest(self, manifest: Manifest) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('manifest', ?)",
                (json.dumps(asdict(manifest)),),
            )

    def record_models(self, encoder: dict[str, str], captioner: dict[str, str], dim: int) -> None:
        """Records which models made the vectors; another encoder is refused (its vectors do not compare)."""
        with self._lock:
            manifest = self.manifest()
            if manifest.encoder and (manifest.encoder, manifest.embedding_dim) != (encoder, dim):
                raise FailedPrecondition(
                    f"collection {manifest.name!r} was indexed with encoder {_describe(manifest.encoder)} "
                    f"(dim {manifest.embedding_dim}), but the encoder now serving is {_describe(encoder)} "
                    f"(dim {dim}); use the original encoder or index into a new collection"
                )
            if not manifest.encoder:
                manifest.encoder, manifest.captioner, manifest.embedding_dim = encoder, captioner, dim
                self.write_manifest(manifest)

    # -- records ---------------------------------------------------------------------------------------------

    def content_hashes(self, ids: Sequence[str]) -> dict[str, str]:
        with self._lock:
            found: dict[str, str] = {}
            for chunk in _chunks(list(ids), 500):
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(f"SELECT id, content_sha256 FROM images WHERE id IN ({marks})", chunk)
                found.update(dict(rows.fetchall()))
            return found

    def upsert(self, records: Sequence[ImageRecord]) -> None:
        """Writes a batch in one transaction: all of it is committed, or none of it."""
        if not records:
            return
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
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
                self._touch()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._version = next(_VERSIONS)

    def delete(self, ids: Sequence[str]) -> tuple[int, list[str]]:
        with self._lock:
            present = set(self.content_hashes(ids))
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for chunk in _chunks(sorted(present), 500):
                    self._db.execute(f"DELETE FROM images WHERE id IN ({','.join('?' * len(chunk))})", chunk)
                self._touch()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._version = next(_VERSIONS)
        return len(present), [i for i in ids if i not in present]

    def get(self, image_id: str) -> ImageRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM images WHERE id = ?", (image_id,)).fetchone()
        return None if row is None else _record(row)

    def size(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM images").fetchone()[0])

    def snapshot(self) -> Snapshot:
        """All vectors as matrices, rebuilt only after a write."""
        with self._lock:
            if self._snapshot is not None and self._snapshot.version == self._version:
                return self._snapshot
            rows = self._db.execute(
                "SELECT id, uri, image_raw, caption_mean, caption_slots FROM images ORDER BY id"
            ).fetchall()
            dim = self.manifest().embedding_dim
            if rows:
                t_v = normalize(np.stack([unpack_f32(r[2]) for r in rows]))
                caption_mean = np.stack([unpack_f32(r[3]) for r in rows])
                slots = np.stack([unpack_f32_matrix(r[4]) for r in rows])
            else:
                t_v = caption_mean = np.zeros((0, dim), np.float32)
                slots = np.zeros((0, 0, dim), np.float32)
            self._snapshot = Snapshot(
                version=self._version,
                ids=[r[0] for r in rows],
                uris=[r[1] for r in rows],
                features=GalleryFeatures(t_v=t_v, caption_mean=caption_mean, caption_slots=slots),
            )
            return self._snapshot

    def metadata(self, ids: Iterable[str]) -> dict[str, dict[str, str]]:
        wanted = list(ids)
        with self._lock:
            found: dict[str, dict[str, str]] = {}
            for chunk in _chunks(wanted, 500):
                marks = ",".join("?" * len(chunk))
                for image_id, meta in self._db.execute(
                    f"SELECT id, metadata FROM images WHERE id IN ({marks})", chunk
                ):
                    found[image_id] = json.loads(meta)
            return found

    def _touch(self) -> None:
        manifest = self.manifest()
        manifest.updated_at = _now()
        self._db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('manifest', ?)", (json.dumps(asdict(manifest)),)
        )


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
    )


def _describe(identity: dict[str, str]) -> str:
    return f"{identity.get('name', '?')}@{identity.get('revision', '?')[:12]}"


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class GalleryStore:
    """All collections under one root folder (one sub-folder each)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._open: dict[str, Collection] = {}
        self._lock = threading.Lock()

    def create(self, name: str, settings: CollectionSettings) -> Collection:
        validate_collection_name(name)
        with self._lock:
            path = self.root / name
            if (path / _DB_FILE).exists():
                existing = self._open_locked(name).manifest()
                if existing.settings != settings:
                    raise FailedPrecondition(
                        f"collection {name!r} already exists with settings {asdict(existing.settings)}; "
                        "delete it first or use another name"
                    )
                return self._open[name]
            path.mkdir(parents=True, exist_ok=True)
            collection = Collection(path)
            now = _now()
            collection.write_manifest(Manifest(name=name, settings=settings, created_at=now, updated_at=now))
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
                known = ", ".join(self.names_unlocked()) or "none"
                raise NotFound(f"collection {name!r} does not exist; known collections: {known}")
            self._open[name] = Collection(path)
        return self._open[name]

    def exists(self, name: str) -> bool:
        return (self.root / validate_collection_name(name) / _DB_FILE).exists()

    def names(self) -> list[str]:
        with self._lock:
            return self.names_unlocked()

    def names_unlocked(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / _DB_FILE).exists())

    def drop(self, name: str) -> int:
        with self._lock:
            collection = self._open_locked(name)
            size = collection.size()
            collection.close()
            del self._open[name]
            shutil.rmtree(self.root / name)
            return size

    def close(self) -> None:
        with self._lock:
            for collection in self._open.values():
                collection.close()
            self._open.clear()
