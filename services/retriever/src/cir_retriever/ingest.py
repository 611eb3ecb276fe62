"""Gallery ingestion: validated images in, batches through the captioner and the encoder, records committed.

A batch is committed in one store transaction after its model calls succeed, so a crash loses at
most the batches in flight. Images whose id and bytes are already stored cost nothing.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from enum import StrEnum

from cir_retriever import fusion
from cir_retriever.clients import Budget, DownstreamError, ModelServices
from cir_retriever.gallery.base import Collection
from cir_retriever.gallery.types import ImageRecord
from cir_retriever.presets import WEIMOCIR_SLOTS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PendingImage:
    id: str
    data: bytes
    sha256: str
    uri: str
    metadata: dict[str, str]


class ItemStatus(StrEnum):
    """What became of one ingested image (also the name of its counter in `IngestProgress`)."""

    INDEXED = "indexed"
    UNCHANGED = "unchanged"
    REPLACED = "replaced"
    FAILED = "failed"


@dataclass(frozen=True)
class ItemOutcome:
    id: str
    status: ItemStatus
    error_code: str = ""
    error_message: str = ""

    @classmethod
    def failed(cls, item_id: str, error_code: str, error_message: str) -> ItemOutcome:
        return cls(item_id, ItemStatus.FAILED, error_code, error_message)


@dataclass
class _Computed:
    records: list[ImageRecord] = field(default_factory=list)
    failures: list[ItemOutcome] = field(default_factory=list)
    encoder: dict[str, str] = field(default_factory=dict)
    captioner: dict[str, str] = field(default_factory=dict)
    dim: int = 0


class IngestPipeline:
    def __init__(self, services: ModelServices, request_timeout_s: float) -> None:
        self._services = services
        self._timeout_s = request_timeout_s

    async def process(self, collection: Collection, items: list[PendingImage]) -> list[ItemOutcome]:
        """Indexes one batch and commits it; returns one outcome per item, in order."""
        stored = await asyncio.to_thread(collection.content_hashes, [i.id for i in items])
        outcomes: dict[str, ItemOutcome] = {}
        todo = []
        for item in items:
            if stored.get(item.id) == item.sha256:
                outcomes[item.id] = ItemOutcome(item.id, ItemStatus.UNCHANGED)
            else:
                todo.append(item)
        if todo:
            computed = await self._compute(collection, todo)
            for failure in computed.failures:
                outcomes[failure.id] = failure
            if computed.records:
                await asyncio.to_thread(
                    collection.record_models, computed.encoder, computed.captioner, computed.dim
                )
                await asyncio.to_thread(collection.upsert, computed.records)
                for record in computed.records:
                    status = ItemStatus.REPLACED if record.id in stored else ItemStatus.INDEXED
                    outcomes[record.id] = ItemOutcome(record.id, status)
        return [outcomes[item.id] for item in items]

    async def _compute(self, collection: Collection, items: list[PendingImage]) -> _Computed:
        try:
            return await self._compute_batch(collection, items)
        except DownstreamError as error:
            if not error.refused_input or len(items) == 1:
                return _Computed(failures=[_failed(item.id, error) for item in items])
        # One bad item fails a whole batch call: redo one by one so the others still get in.
        merged = _Computed()
        for item in items:
            single = await self._compute(collection, [item])
            merged.records += single.records
            merged.failures += single.failures
            if single.records:
                merged.encoder, merged.captioner, merged.dim = single.encoder, single.captioner, single.dim
        return merged

    async def _compute_batch(self, collection: Collection, items: list[PendingImage]) -> _Computed:
        settings = (await asyncio.to_thread(collection.manifest)).settings
        budget = Budget.starting_now(self._timeout_s)
        images = [item.data for item in items]
        embedded, captioned = await asyncio.gather(
            self._services.encoder.embed_images(images, settings.preprocessing, budget),
            self._services.captioner.captions(
                images, settings.num_captions, settings.decoding_variant, budget
            ),
        )
        flat = [text for per_image in captioned.per_image for text in per_image]
        text_features = await self._services.encoder.embed_texts(flat, budget)
        records = []
        offset = 0
        for item, image_vector, per_image in zip(items, embedded.vectors, captioned.per_image, strict=True):
            features = text_features[offset : offset + len(per_image)]
            offset += len(per_image)
            records.append(
                ImageRecord(
                    id=item.id,
                    uri=item.uri,
                    metadata=item.metadata,
                    content_sha256=item.sha256,
                    captions=per_image,
                    image_raw=image_vector,
                    caption_mean=fusion.caption_feature(features, renormalize=False),
                    caption_slots=features[:WEIMOCIR_SLOTS],
                )
            )
        return _Computed(
            records=records,
            encoder=embedded.model.as_dict(),
            captioner=captioned.model.as_dict(),
            dim=int(embedded.vectors.shape[1]),
        )


def _failed(item_id: str, error: DownstreamError) -> ItemOutcome:
    return ItemOutcome.failed(item_id, error.downstream_code, error.details)
