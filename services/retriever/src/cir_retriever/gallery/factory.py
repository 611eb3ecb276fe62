"""The gallery store the settings name: `local` (embedded) or `milvus` (shared by stateless replicas)."""

from __future__ import annotations

import os
from pathlib import Path

from cir_retriever.gallery.base import GalleryStore
from cir_retriever.settings import RetrieverSettings, StoreBackend


def open_store(settings: RetrieverSettings) -> GalleryStore:
    # `settings.store_backend` is a StoreBackend: RetrieverSettings refuses any other value when built.
    if settings.store_backend == StoreBackend.MILVUS:
        # Imported only here: the local backend never loads pymilvus.
        from cir_retriever.gallery.milvus import MilvusGalleryStore

        return MilvusGalleryStore(settings.milvus_uri, os.environ.get(settings.milvus_token_env, ""))
    from cir_retriever.gallery.local import GalleryStore as LocalGalleryStore

    return LocalGalleryStore(Path(settings.store_dir))
