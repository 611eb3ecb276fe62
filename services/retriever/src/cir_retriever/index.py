"""Exact inner-product search over a gallery matrix (FAISS flat; on the GPU when FAISS sees one)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

import faiss
import numpy as np


class ExactIndex:
    def __init__(self, matrix: np.ndarray) -> None:
        matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        self.size, self.dim = matrix.shape
        index = faiss.IndexFlatIP(self.dim)
        if _gpus() > 0:
            index = faiss.index_cpu_to_all_gpus(index)
        index.add(matrix)
        self._index = index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, row indices) per query row; fewer than k when the gallery is smaller."""
        k = min(k, self.size)
        if k == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        return self._index.search(np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32), k)


def _gpus() -> int:
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


class IndexCache:
    """Keeps the most recently used indexes (one per collection version and gallery spec)."""

    def __init__(self, capacity: int = 16) -> None:
        self._capacity = capacity
        self._items: OrderedDict[Hashable, ExactIndex] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, build: Callable[[], np.ndarray]) -> ExactIndex:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        index = ExactIndex(build())
        with self._lock:
            self._items[key] = index
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)
        return index
