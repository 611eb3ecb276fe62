"""Approximate search for collections that ask for it (`settings.ann`: HNSW or IVF), never the default.

One FAISS inner-product index per gallery spec, over that spec's gallery rows materialised once (every kind
can be: `matrices.gallery_rows`). Built on the first search with the spec, extended with the rows appended
since, rebuilt when compaction moved the rows (labels are row numbers of the matrices). Tombstones, and rows
appended after the view a search holds, are excluded with an ID selector rather than by over-fetching.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import faiss
import numpy as np

from cir_retriever.gallery.matrices import View, gallery_rows
from cir_retriever.gallery.types import AnnIndex, GallerySpec

_ADD_CHUNK = 65536  # rows materialised per step when filling an index


@dataclass
class _Entry:
    index: faiss.Index
    generation: int  # the matrices' generation its labels refer to
    rows: int  # rows [0, rows) are in the index
    trained_rows: int  # rows the IVF quantiser was trained on (0 for HNSW)


class AnnIndexes:
    """The approximate indexes of one collection, one per gallery spec. Thread-safe (one lock: FAISS indexes
    must not be searched while rows are added)."""

    def __init__(
        self,
        method: AnnIndex | str,
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 256,
        ivf_probe_fraction: float = 0.25,
    ) -> None:
        self.method = AnnIndex(method)  # ValueError for an unknown one
        if self.method is AnnIndex.EXACT:
            raise ValueError("AnnIndexes builds approximate indexes (hnsw or ivf), not exact search")
        self.hnsw_m, self.ef_construction, self.ef_search = hnsw_m, ef_construction, ef_search
        self.ivf_probe_fraction = ivf_probe_fraction
        self._entries: dict[GallerySpec, _Entry] = {}
        self._lock = threading.Lock()
        self.builds = 0  # full (re)builds, for tests and stats

    def search(
        self, view: View, spec: GallerySpec, queries: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Approximate top-k (rows (b, k'), scores (b, k')) among the view's live rows; rows a query could not
        fill are dropped from the end (k' is the smallest count any query got). None when the view is older
        than the index (a compaction happened since it was taken): the caller searches that view exactly."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = min(k, view.live)
        if k <= 0:
            return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)
        with self._lock:
            known = self._entries.get(spec)
            if known is not None and view.generation < known.generation:
                return None
            entry = self._current(view, spec)
            selector = _selector(view, entry.rows)
            params = self._params(entry, k, selector)
            scores, rows = entry.index.search(queries, k, params=params)
        filled = int((rows >= 0).all(axis=0).sum())  # FAISS pads with -1 where it found fewer
        return rows[:, :filled].astype(np.int64), scores[:, :filled]

    def _current(self, view: View, spec: GallerySpec) -> _Entry:
        entry = self._entries.get(spec)
        if (
            entry is None
            or entry.generation != view.generation
            or (entry.trained_rows and view.n > 4 * entry.trained_rows)  # IVF lists sized for a smaller set
        ):
            entry = self._build(view, spec)
            self._entries[spec] = entry
        elif entry.rows < view.n:
            _add(entry.index, view, spec, entry.rows, view.n)
            entry.rows = view.n
        return entry

    def _build(self, view: View, spec: GallerySpec) -> _Entry:
        self.builds += 1
        width = gallery_rows(view, spec, 0, 1).shape[1]
        if self.method is AnnIndex.HNSW:
            index = faiss.IndexHNSWFlat(width, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self.ef_construction
            _add(index, view, spec, 0, view.n)
            return _Entry(index, view.generation, view.n, 0)
        # About 4 sqrt(n) lists, but at least 39 training points each (what FAISS's k-means asks for).
        lists = max(1, min(int(4 * math.sqrt(view.n)), view.n // 39))
        quantizer = faiss.IndexFlatIP(width)
        index = faiss.IndexIVFFlat(quantizer, width, lists, faiss.METRIC_INNER_PRODUCT)
        # Train on evenly spaced rows (at most 64 per list: what k-means needs, not the whole gallery).
        step = max(1, view.n // (64 * lists))
        sample = np.concatenate(
            [
                gallery_rows(view, spec, start, min(start + _ADD_CHUNK, view.n))[(-start) % step :: step]
                for start in range(0, view.n, _ADD_CHUNK)
            ]
        )
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
        index.quantizer_trains_alone = 0
        _add(index, view, spec, 0, view.n)
        return _Entry(index, view.generation, view.n, view.n)

    def _params(self, entry: _Entry, k: int, selector: faiss.IDSelector | None) -> faiss.SearchParameters:
        if self.method is AnnIndex.HNSW:
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(self.ef_search, k)
        else:
            params = faiss.SearchParametersIVF()
            lists = entry.index.nlist
            params.nprobe = max(1, min(lists, math.ceil(self.ivf_probe_fraction * lists)))
        if selector is not None:
            params.sel = selector
        # The selector objects must outlive the search: keep them on the params object.
        params.keepalive = selector
        return params


def _add(index: faiss.Index, view: View, spec: GallerySpec, start: int, stop: int) -> None:
    for chunk in range(start, stop, _ADD_CHUNK):
        rows = gallery_rows(view, spec, chunk, min(chunk + _ADD_CHUNK, stop))
        index.add(np.ascontiguousarray(rows, dtype=np.float32))


def _selector(view: View, indexed: int) -> faiss.IDSelector | None:
    """Excludes tombstones and rows beyond the view; None when nothing is excluded."""
    parts: list[faiss.IDSelector] = []
    if indexed > view.n:
        parts.append(faiss.IDSelectorRange(0, view.n))
    if view.dead.size:
        batch = faiss.IDSelectorBatch(view.dead)
        parts.append(faiss.IDSelectorNot(batch))
        parts[-1].keepalive = batch  # IDSelectorNot does not own its operand
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    both = faiss.IDSelectorAnd(parts[0], parts[1])
    both.keepalive = parts
    return both
