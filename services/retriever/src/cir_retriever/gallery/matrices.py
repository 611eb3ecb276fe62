"""The in-memory search copy of a local collection: row-aligned matrices maintained incrementally, and the
exact search over them.

What is kept per row: t_v (normalised image features) and t_c (raw caption mean) as two float32 matrices,
three float64 scalars (|t_v|^2, |t_c|^2, t_c . t_v) for the cosine form of CVSI, the id / URI / metadata
text, and the typed filter columns. The caption slots WeiMoCIR needs are built only when a WeiMoCIR search
first asks for them (they are R times the size of t_v), then maintained like the rest; so is the matrix of
InstructCIR target embeddings, built when an instructcir search first asks for it. Raw image vectors are not
kept: SQLite has them.

Rows are appended in write order, which is also SQLite's rowid order, so a reopened collection has the
same rows in the same order. A replaced image's old row and a deleted image's row become tombstones; when
tombstones pass a fraction of the rows, compaction copies the live rows into new arrays.

Every write publishes a new immutable `View`. New rows are written beyond the rows any published view
covers (or into new arrays when the capacity doubles), so a search takes the current view once and reads
it without a lock, never seeing half a write or half a compaction. Writers are serialised by the caller.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from cir_common.errors import InvalidArgument
from cir_retriever import fusion
from cir_retriever.fusion import normalize
from cir_retriever.gallery.columns import FilterColumns
from cir_retriever.gallery.filters import TypedValue
from cir_retriever.gallery.topk import top_k
from cir_retriever.gallery.types import Filter, FilterableField, GalleryKind, GallerySpec

_MIN_CAPACITY = 1024
# A filter matching fewer than this fraction of the rows scores only those rows. Gathering scattered rows
# runs at a tenth of the bandwidth of the multi-threaded matrix-vector product that streams every row
# (measured at 1M x 768: 10% gathered ~ 90 ms, every row ~ 100 ms), so only a selective filter gains.
_GATHER_BELOW = 0.05
_COPY_CHUNK = 65536  # rows per step when compaction gathers rows (bounds the temporary copies)


@dataclass(frozen=True)
class RowBatch:
    """Rows to append: one entry per image."""

    ids: list[str]
    uris: list[str]
    metadata: list[str]  # the metadata as stored (JSON text); parsed only for returned hits
    image_raw: np.ndarray  # (m, d) raw image features
    caption_mean: np.ndarray  # (m, d) raw caption means (t_c)
    typed: Sequence[dict[str, TypedValue]]  # declared fields' typed values
    caption_slots: np.ndarray | None = None  # (m, R, d) raw; None when loading (slots are built lazily)
    instructcir_target: np.ndarray | None = None  # (m, d_i) normalised; None when loading or kept by none

    def last_of_each_id(self) -> RowBatch:
        """The batch as SQLite's INSERT OR REPLACE leaves it: the last entry of each id, in the order of those
        last entries (a replaced row moves to the end, as a new rowid does)."""
        last = {image_id: i for i, image_id in enumerate(self.ids)}
        if len(last) == len(self.ids):
            return self
        keep = sorted(last.values())
        return RowBatch(
            ids=[self.ids[i] for i in keep],
            uris=[self.uris[i] for i in keep],
            metadata=[self.metadata[i] for i in keep],
            image_raw=self.image_raw[keep],
            caption_mean=self.caption_mean[keep],
            typed=[self.typed[i] for i in keep],
            caption_slots=None if self.caption_slots is None else self.caption_slots[keep],
            instructcir_target=None if self.instructcir_target is None else self.instructcir_target[keep],
        )


@dataclass(frozen=True)
class View:
    """One published state of the matrices; rows [0, n) are in use (tombstones included)."""

    n: int
    generation: int  # changes when rows move (compaction); growth keeps row numbers
    dim: int
    t_v: np.ndarray  # (capacity, d) normalised image features
    t_c: np.ndarray  # (capacity, d) raw caption means
    image_sq: np.ndarray  # (capacity,) |t_v|^2
    caption_sq: np.ndarray  # (capacity,) |t_c|^2
    caption_dot: np.ndarray  # (capacity,) t_c . t_v
    ids: list[str]  # shared, append-only: a view reads only its first n entries
    uris: list[str]
    metadata: list[str]
    dead: np.ndarray  # sorted rows that are tombstones
    columns: FilterColumns
    slots: np.ndarray | None = None  # (capacity, R, d) normalised caption slots, once a search needed them
    slot_mean: np.ndarray | None = None  # (capacity, d) mean_r of the normalised slots
    instructcir: np.ndarray | None = None  # (capacity, d_i) InstructCIR targets, once a search needed them

    @property
    def live(self) -> int:
        return self.n - int(self.dead.size)

    @property
    def capacity(self) -> int:
        return int(self.t_v.shape[0])


class SearchMatrices:
    """The matrices of one collection. Writers (upsert, remove, compact, build_slots) must be serialised by
    the caller; `view()` may be called from any thread at any time."""

    def __init__(
        self,
        fields: Sequence[FilterableField],
        dim: int = 0,
        capacity: int = 0,
        compact_fraction: float = 0.25,
    ) -> None:
        self.fields = tuple(fields)
        self.compact_fraction = compact_fraction
        self._row_of: dict[str, int] = {}
        self._view = _empty_view(self.fields, dim, max(capacity, _MIN_CAPACITY), generation=0)

    def view(self) -> View:
        return self._view

    def memory_bytes(self) -> int:
        """Bytes the current view's arrays hold (their allocated capacity), for the metrics."""
        view = self._view
        arrays = (view.t_v, view.t_c, view.image_sq, view.caption_sq, view.caption_dot, view.dead)
        slots = sum(a.nbytes for a in (view.slots, view.slot_mean, view.instructcir) if a is not None)
        return sum(a.nbytes for a in arrays) + slots + view.columns.nbytes

    def row_of(self, image_id: str) -> int | None:
        return self._row_of.get(image_id)

    @property
    def has_slots(self) -> bool:
        return self._view.slots is not None

    @property
    def has_instructcir(self) -> bool:
        return self._view.instructcir is not None

    # -- writes ----------------------------------------------------------------------------------------------

    def upsert(self, batch: RowBatch) -> None:
        """Appends the batch's rows; an id already present turns its old row into a tombstone."""
        batch = batch.last_of_each_id()
        count = len(batch.ids)
        if count == 0:
            return
        view = self._view
        dim = int(batch.image_raw.shape[1])
        if view.n == 0:
            # Nothing stored (or everything compacted away): start afresh, so that a collection emptied and
            # refilled may take another dimension or slot count (caption slots are rebuilt when needed).
            view = _empty_view(self.fields, dim, view.capacity, view.generation + 1)
        if dim != view.dim:
            raise ValueError(f"rows of dimension {dim} appended to matrices of dimension {view.dim}")
        start, stop = view.n, view.n + count
        view = _with_capacity(view, stop)
        t_v = view.t_v[start:stop]
        t_v[:] = normalize(np.asarray(batch.image_raw, np.float32))
        view.t_c[start:stop] = batch.caption_mean
        image_sq, caption_sq, dots = fusion.cvsi_row_scalars(view.t_c[start:stop], t_v)
        view.image_sq[start:stop], view.caption_sq[start:stop], view.caption_dot[start:stop] = (
            image_sq,
            caption_sq,
            dots,
        )
        view.columns.write(start, batch.typed)
        if view.slots is not None and view.slot_mean is not None:
            if batch.caption_slots is None or batch.caption_slots.shape[1:] != view.slots.shape[1:]:
                raise ValueError("rows appended without caption slots of the collection's shape")
            slots = normalize(np.asarray(batch.caption_slots, np.float32))
            view.slots[start:stop] = slots
            view.slot_mean[start:stop] = slots.mean(axis=1)
        if view.instructcir is not None:
            # A row without a target (never written by ingestion, which keeps the column whole) scores 0.
            targets = batch.instructcir_target
            if targets is None or targets.shape[1:] != view.instructcir.shape[1:]:
                view.instructcir[start:stop] = 0.0
            else:
                view.instructcir[start:stop] = normalize(np.asarray(targets, np.float32))
        replaced = [self._row_of[i] for i in batch.ids if i in self._row_of]
        self._row_of.update(zip(batch.ids, range(start, stop), strict=True))
        view.ids.extend(batch.ids)
        view.uris.extend(batch.uris)
        view.metadata.extend(batch.metadata)
        self._view = replace(view, n=stop, dead=_with_dead(view.dead, replaced))

    def remove(self, ids: Iterable[str]) -> int:
        """Tombstones the rows of these ids; returns how many were present."""
        rows = [self._row_of.pop(i) for i in ids if i in self._row_of]
        if rows:
            self._view = replace(self._view, dead=_with_dead(self._view.dead, rows))
        return len(rows)

    def maybe_compact(self) -> bool:
        """Compacts when tombstones are more than `compact_fraction` of the rows."""
        view = self._view
        if view.dead.size and view.dead.size > self.compact_fraction * view.n:
            self.compact()
            return True
        return False

    def compact(self) -> None:
        """Copies the live rows, in order, into new arrays and publishes them (searches on the old view go on
        reading the old arrays)."""
        view = self._view
        keep = np.ones(view.n, bool)
        keep[view.dead] = False
        rows = np.flatnonzero(keep)
        count = int(rows.size)
        capacity = _capacity_for(count)
        ids = [view.ids[r] for r in rows]
        self._view = View(
            n=count,
            generation=view.generation + 1,
            dim=view.dim,
            t_v=_gathered(view.t_v, rows, capacity),
            t_c=_gathered(view.t_c, rows, capacity),
            image_sq=_gathered(view.image_sq, rows, capacity),
            caption_sq=_gathered(view.caption_sq, rows, capacity),
            caption_dot=_gathered(view.caption_dot, rows, capacity),
            ids=ids,
            uris=[view.uris[r] for r in rows],
            metadata=[view.metadata[r] for r in rows],
            dead=np.zeros(0, np.int64),
            columns=view.columns.compacted(rows, capacity),
            slots=None if view.slots is None else _gathered(view.slots, rows, capacity),
            slot_mean=None if view.slot_mean is None else _gathered(view.slot_mean, rows, capacity),
            instructcir=None if view.instructcir is None else _gathered(view.instructcir, rows, capacity),
        )
        self._row_of = {image_id: row for row, image_id in enumerate(ids)}

    def put_typed(self, name: str, ids: Sequence[str], values: Sequence[TypedValue]) -> None:
        """Sets one field's values for stored ids; only while loading, before any search sees the matrices."""
        pairs = [(self._row_of[i], v) for i, v in zip(ids, values, strict=True) if i in self._row_of]
        if pairs:
            rows, kept = zip(*pairs, strict=True)
            self._view.columns.put(name, np.array(rows, np.int64), kept)

    def build_slots(self, slot_count: int, chunks: Iterable[tuple[Sequence[str], np.ndarray]]) -> None:
        """Builds the normalised caption-slot matrices from (ids, raw slots (m, R, d)) chunks of every stored
        image, and publishes them; later upserts keep them up to date."""
        view = self._view
        slots = np.zeros((view.capacity, slot_count, view.dim), np.float32)
        slot_mean = np.zeros((view.capacity, view.dim), np.float32)
        for ids, raw in chunks:
            found = [(k, self._row_of[i]) for k, i in enumerate(ids) if i in self._row_of]
            if not found:
                continue
            picked, rows = (list(x) for x in zip(*found, strict=True))
            normalized = normalize(np.asarray(raw[picked], np.float32))
            slots[rows] = normalized
            slot_mean[rows] = normalized.mean(axis=1)
        self._view = replace(view, slots=slots, slot_mean=slot_mean)

    def build_instructcir(self, dim: int, chunks: Iterable[tuple[Sequence[str], np.ndarray]]) -> None:
        """Builds the InstructCIR target matrix from (ids, targets (m, d_i)) chunks of the stored images and
        publishes it (rows of ids without a target stay 0); later upserts keep it up to date."""
        view = self._view
        targets = np.zeros((view.capacity, dim), np.float32)
        for ids, vectors in chunks:
            found = [(k, self._row_of[i]) for k, i in enumerate(ids) if i in self._row_of]
            if found:
                picked, rows = (list(x) for x in zip(*found, strict=True))
                targets[rows] = normalize(np.asarray(vectors[picked], np.float32))
        self._view = replace(view, instructcir=targets)


# -- search ----------------------------------------------------------------------------------------------


def query_width(view: View, spec: GallerySpec) -> int:
    """How many components a query vector for `spec` has ((R + 1) d for the coded WeiMoCIR gallery)."""
    if spec.kind is GalleryKind.WEIMOCIR_CODED:
        if view.slots is None:
            raise RuntimeError("the caption slots are not built: call build_slots first")
        return (view.slots.shape[1] + 1) * view.dim
    if spec.kind is GalleryKind.INSTRUCTCIR:
        return _instructcir(view).shape[1]
    return view.dim


def _instructcir(view: View) -> np.ndarray:
    if view.instructcir is None:
        raise RuntimeError("the InstructCIR targets are not built: call build_instructcir first")
    return view.instructcir


def needs_slots(spec: GallerySpec) -> bool:
    return spec.kind in (GalleryKind.WEIMOCIR_CODED, GalleryKind.WEIMOCIR_PAPER)


def search(
    view: View, spec: GallerySpec, queries: np.ndarray, k: int, where: Filter | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The exact top-k (rows (b, k'), scores (b, k')) of each query among live rows matching `where`, best
    first, ties by row order; k' = min(k, matching rows)."""
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    empty = (np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32))
    if k <= 0 or view.live == 0:
        return empty
    width = query_width(view, spec)
    if queries.shape[1] != width:
        raise InvalidArgument(
            f"the query vector has {queries.shape[1]} components; the {spec.kind.value} gallery of this "
            f"collection needs {width}"
        )
    plan = _plan(view, where)
    if plan.valid == 0:
        return empty
    scores = gallery_scores(view, spec, queries, plan.rows if plan.score_rows_only else None)
    if plan.rows is not None and not plan.score_rows_only:
        scores = scores[:, plan.rows]
    if plan.exclude is not None:
        if plan.exclude.dtype == bool:
            np.copyto(scores, np.float32(-np.inf), where=plan.exclude)
        else:
            scores[:, plan.exclude] = -np.inf
    best, best_scores = top_k(scores, min(k, plan.valid))
    return (best if plan.rows is None else plan.rows[best]), best_scores


@dataclass(frozen=True)
class _Plan:
    """Which rows a search scores and which it may return."""

    valid: int  # rows that can be returned
    rows: np.ndarray | None = None  # the candidate rows, ascending; None: every row
    score_rows_only: bool = False  # multiply only the candidates' vectors (else score all, keep theirs)
    exclude: np.ndarray | None = None  # rows (int) or a mask (bool) whose scores become -inf


def _plan(view: View, where: Filter | None) -> _Plan:
    """Without a filter every row is scored and the tombstones (at most `compact_fraction`) are set to -inf.
    A selective filter multiplies only the matching rows' vectors; a filter keeping under half of the rows
    scores every row and keeps the matching scores (a partition over a majority of -inf is slow: 34 ms
    instead of 2 at 1M); a broader one sets the others to -inf."""
    if where is None or not where.conditions:
        return _Plan(view.live, exclude=view.dead if view.dead.size else None)
    mask = view.columns.mask(where, view.n)
    mask[view.dead] = False
    count = int(np.count_nonzero(mask))
    if count < _GATHER_BELOW * view.n:
        return _Plan(count, rows=np.flatnonzero(mask), score_rows_only=True)
    if 2 * count < view.n:
        return _Plan(count, rows=np.flatnonzero(mask))
    return _Plan(count, exclude=~mask)


def gallery_scores(view: View, spec: GallerySpec, queries: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    """`queries (b, w) . row(spec)` for rows [0, n) (rows None) or the given rows: (b, rows) float32.

    Fused galleries are never materialised: each stored matrix is multiplied once and the products combined
    by the factored equations in `fusion`.
    """

    def product(matrix: np.ndarray, q: np.ndarray) -> np.ndarray:
        part = matrix[: view.n] if rows is None else matrix[rows]
        if q.shape[0] == 1:  # one query: a matrix-vector product (BLAS gemv) streams the rows once
            return (part @ q[0])[None, :]
        return q @ part.T

    def scalar(values: np.ndarray) -> np.ndarray:
        return values[: view.n] if rows is None else values[rows]

    if spec.kind is GalleryKind.IMAGE:
        return product(view.t_v, queries)
    if spec.kind is GalleryKind.INSTRUCTCIR:
        return product(_instructcir(view), queries)
    if spec.kind is GalleryKind.CVSI:
        return fusion.cvsi_scores_from_products(
            product(view.t_v, queries),
            product(view.t_c, queries),
            spec.gamma,
            spec.score,
            scalar(view.image_sq),
            scalar(view.caption_sq),
            scalar(view.caption_dot),
            spec.caption_features_renormalized,
        )
    if view.slots is None or view.slot_mean is None:
        raise RuntimeError("the caption slots are not built: call build_slots first")
    if spec.kind is GalleryKind.WEIMOCIR_PAPER:
        return fusion.weimocir_paper_scores_from_products(
            product(view.t_v, queries), product(view.slot_mean, queries), spec.weimocir_b
        )
    slot_queries, image_queries = fusion.weimocir_coded_query_parts(queries, view.dim)
    concatenated = view.slots.reshape(view.capacity, -1)  # (capacity, R d): one product for every slot
    return fusion.weimocir_coded_scores_from_products(
        product(concatenated, np.ascontiguousarray(slot_queries)),
        product(view.t_v, np.ascontiguousarray(image_queries)),
    )


def gallery_rows(view: View, spec: GallerySpec, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of the gallery matrix of `spec`, materialised (for an approximate index)."""
    t_v = view.t_v[start:stop]
    if spec.kind is GalleryKind.IMAGE:
        return np.ascontiguousarray(t_v)
    if spec.kind is GalleryKind.INSTRUCTCIR:
        return np.ascontiguousarray(_instructcir(view)[start:stop])
    if spec.kind is GalleryKind.CVSI:
        t_c = view.t_c[start:stop]
        if spec.caption_features_renormalized:
            t_c = normalize(t_c)
        return fusion.searchable_gallery(fusion.cvsi_gallery(t_c, t_v, spec.gamma), spec.score)
    if view.slots is None:
        raise RuntimeError("the caption slots are not built: call build_slots first")
    if spec.kind is GalleryKind.WEIMOCIR_PAPER:
        return fusion.weimocir_paper_gallery(view.slots[start:stop], t_v, spec.weimocir_b)
    return fusion.weimocir_coded_gallery(view.slots[start:stop], t_v)


# -- storage helpers -------------------------------------------------------------------------------------


def _empty_view(fields: Sequence[FilterableField], dim: int, capacity: int, generation: int) -> View:
    # np.empty: pages of rows not yet written are never touched, so unused capacity costs no resident memory.
    return View(
        n=0,
        generation=generation,
        dim=dim,
        t_v=np.empty((capacity, dim), np.float32),
        t_c=np.empty((capacity, dim), np.float32),
        image_sq=np.empty(capacity, np.float64),
        caption_sq=np.empty(capacity, np.float64),
        caption_dot=np.empty(capacity, np.float64),
        ids=[],
        uris=[],
        metadata=[],
        dead=np.zeros(0, np.int64),
        columns=FilterColumns(fields, capacity),
    )


def _capacity_for(rows: int) -> int:
    """Capacity for a fresh set of rows (load, compaction): an eighth of headroom so that the next writes do
    not double the arrays at once."""
    return max(_MIN_CAPACITY, rows + rows // 8)


def _with_capacity(view: View, rows: int) -> View:
    """`view` with room for `rows` rows: the same arrays, or copies of twice the capacity."""
    if rows <= view.capacity:
        return view
    capacity = max(rows, 2 * view.capacity, _MIN_CAPACITY)
    return replace(
        view,
        t_v=_grown(view.t_v, view.n, capacity),
        t_c=_grown(view.t_c, view.n, capacity),
        image_sq=_grown(view.image_sq, view.n, capacity),
        caption_sq=_grown(view.caption_sq, view.n, capacity),
        caption_dot=_grown(view.caption_dot, view.n, capacity),
        columns=view.columns.grown(capacity, view.n),
        slots=None if view.slots is None else _grown(view.slots, view.n, capacity),
        slot_mean=None if view.slot_mean is None else _grown(view.slot_mean, view.n, capacity),
        instructcir=None if view.instructcir is None else _grown(view.instructcir, view.n, capacity),
    )


def _grown(array: np.ndarray, rows: int, capacity: int) -> np.ndarray:
    grown = np.empty((capacity, *array.shape[1:]), array.dtype)
    grown[:rows] = array[:rows]
    return grown


def _gathered(array: np.ndarray, rows: np.ndarray, capacity: int) -> np.ndarray:
    """array[rows] into a new array of `capacity` rows, copied in chunks (no full-size temporary)."""
    out = np.empty((capacity, *array.shape[1:]), array.dtype)
    for start in range(0, rows.size, _COPY_CHUNK):
        chunk = rows[start : start + _COPY_CHUNK]
        np.take(array, chunk, axis=0, out=out[start : start + chunk.size])
    return out


def _with_dead(dead: np.ndarray, rows: Sequence[int]) -> np.ndarray:
    """A new sorted tombstone array (the old one stays as it was for views that hold it)."""
    if not rows:
        return dead
    return np.union1d(dead, np.asarray(rows, np.int64)).astype(np.int64)
