"""The gallery store the settings name: `local` (embedded) or `milvus` (shared by stateless replicas)."""

from __future__ import annotations

import os
from pathlib import Path

from cir_common.errors import ConfigError
from cir_retriever.gallery.base import GalleryStore
from cir_retriever.settings import ENV_PREFIX, RetrieverSettings

BACKENDS = ("local", "milvus")


def open_store(settings: RetrieverSettings) -> GalleryStore:
    if settings.store_backend == "local":
        from cir_retriever.gallery.local import GalleryStore as LocalGalleryStore

        return LocalGalleryStore(Path(settings.store_dir))
    if settings.store_backend == "milvus":
        # Imported only here: the local backend never loads pymilvus.
        from cir_retriever.gallery.milvus import MilvusGalleryStore

        return MilvusGalleryStore(settings.milvus_uri, os.environ.get(settings.milvus_token_env, ""))
    raise ConfigError(
        f"{ENV_PREFIX}STORE_BACKEND = {settings.store_backend!r} is unknown: {' or '.join(BACKENDS)}"
    )
