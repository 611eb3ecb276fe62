"""The gallery store interface both backends implement (`local`: SQLite + in-memory matrices; `milvus`).

Methods are blocking (the core calls them from worker threads) and thread-safe. A backend raises
`cir_common.errors` types (NotFound, FailedPrecondition, InvalidArgument, Unavailable) and knows nothing of
gRPC or of strategies: a search is a query vector plus a `GallerySpec` that says which stored vectors it
is scored against.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np

from cir_retriever.gallery.types import (
    CollectionSettings,
    FeaturePage,
    Filter,
    GallerySpec,
    Hit,
    ImageRecord,
    Manifest,
)


class Collection(Protocol):
    name: str

    def manifest(self) -> Manifest: ...

    def record_models(
        self,
        encoder: dict[str, str],
        captioner: dict[str, str],
        dim: int,
        instructcir: dict[str, str] | None = None,
        instructcir_dim: int = 0,
    ) -> None:
        """Records which models made the vectors (and the InstructCIR checkpoint of the images' targets, None
        when they carry none); FailedPrecondition when another encoder (or checkpoint) made them."""
        ...

    def content_hashes(self, ids: Sequence[str]) -> dict[str, str]:
        """id -> content sha256 of the ids that are stored."""
        ...

    def upsert(self, records: Sequence[ImageRecord]) -> None:
        """Writes a batch atomically (all or nothing); visible to every later search once it returns."""
        ...

    def delete(self, ids: Sequence[str]) -> tuple[int, list[str]]:
        """(deleted count, ids that were not stored)."""
        ...

    def get(self, image_id: str) -> ImageRecord | None: ...

    def size(self) -> int: ...

    def caption_slot_count(self) -> int:
        """R, the caption slots each stored image has (0 while empty)."""
        ...

    def search(self, spec: GallerySpec, query: np.ndarray, k: int, where: Filter | None = None) -> list[Hit]:
        """The exact top-k images (best first) among those matching `where`, by `query . row(spec)`.

        An approximate index, when the collection declared one, answers instead. A spec the backend cannot
        answer exactly raises FailedPrecondition saying what to enable.
        """
        ...

    def export(self, page_size: int) -> Iterator[FeaturePage]:
        """Every image's stored features, in id order, `page_size` images a page."""
        ...


class GalleryStore(Protocol):
    def create(self, name: str, settings: CollectionSettings) -> Collection:
        """Creates a collection, or returns it when it exists with the same settings (FailedPrecondition
        when the settings differ)."""
        ...

    def open(self, name: str) -> Collection:
        """NotFound when there is no such collection."""
        ...

    def exists(self, name: str) -> bool: ...

    def names(self) -> list[str]: ...

    def drop(self, name: str) -> int:
        """Deletes a collection; returns how many images it held."""
        ...

    def check(self) -> None:
        """Raises Unavailable when the backend cannot serve (readiness)."""
        ...

    def close(self) -> None: ...
