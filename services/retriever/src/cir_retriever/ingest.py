"""Gallery ingestion: validated images in, batches through the captioner and the encoder, records committed.

A batch is committed in one store transaction after its model calls succeed, so a crash loses at
most the batches in flight. Images whose id and bytes are already stored cost nothing.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import grpc
import numpy as np

from cir.captioner.v1 import captioner_pb2
from cir.common.v1 import common_pb2
from cir.encoder.v1 import encoder_pb2
from cir_common.request_context import outgoing_metadata
from cir_common.vectors import vector_from_proto
from cir_retriever import fusion
from cir_retriever.downstream import Budget, ModelServices
from cir_retriever.gallery.local import Collection
from cir_retriever.gallery.types import ImageRecord
from cir_retriever.options import PREPROCESSING_TO_PROTO, VARIANT_TO_PROTO
from cir_retriever.presets import WEIMOCIR_SLOTS
from cir_retriever.query import PACKED

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PendingImage:
    id: str
    data: bytes
    sha256: str
    uri: str
    metadata: dict[str, str]


@dataclass(frozen=True)
class ItemOutcome:
    id: str
    status: str  # "indexed" | "unchanged" | "replaced" | "failed"
    error_code: str = ""
    error_message: str = ""


@dataclass
class _Computed:
    records: list[ImageRecord] = field(default_factory=list)
    failures: list[ItemOutcome] = field(default_factory=list)
    encoder: dict[str, str] = field(default_factory=dict)
    captioner: dict[str, str] = field(default_factory=dict)
    dim: int = 0


def _identity(model: common_pb2.ModelIdentity) -> dict[str, str]:
    return {"name": model.name, "revision": model.revision, "family": model.family}


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
                outcomes[item.id] = ItemOutcome(item.id, "unchanged")
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
                    status = "replaced" if record.id in stored else "indexed"
                    outcomes[record.id] = ItemOutcome(record.id, status)
        return [outcomes[item.id] for item in items]

    async def _compute(self, collection: Collection, items: list[PendingImage]) -> _Computed:
        try:
            return await self._compute_batch(collection, items)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.INVALID_ARGUMENT or len(items) == 1:
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
        settings = collection.manifest().settings
        budget = Budget.from_context(None, self._timeout_s)
        images = [common_pb2.Image(data=item.data) for item in items]
        embed = self._services.encoder.EmbedImages(
            encoder_pb2.EmbedImagesRequest(
                images=images,
                preprocessing=PREPROCESSING_TO_PROTO[settings.preprocessing],
                vector_format=PACKED,
            ),
            timeout=budget.timeout(),
            metadata=outgoing_metadata(),
        )
        caption = self._services.captioner.GenerateCaptions(
            captioner_pb2.GenerateCaptionsRequest(
                images=images,
                num_captions=settings.num_captions,
                decoding=captioner_pb2.DecodingParameters(
                    variant=VARIANT_TO_PROTO[settings.decoding_variant]
                ),
            ),
            timeout=budget.timeout(),
            metadata=outgoing_metadata(),
        )
        image_response, caption_response = await asyncio.gather(embed, caption)
        captions = [list(result.captions) for result in caption_response.results]
        flat = [text for per_image in captions for text in per_image]
        text_response = await self._services.encoder.EmbedTexts(
            encoder_pb2.EmbedTextsRequest(texts=flat, vector_format=PACKED),
            timeout=budget.timeout(),
            metadata=outgoing_metadata(),
        )
        text_features = np.stack([vector_from_proto(e.embedding) for e in text_response.embeddings])
        records = []
        offset = 0
        for item, image_vector, per_image in zip(items, image_response.embeddings, captions, strict=True):
            features = text_features[offset : offset + len(per_image)]
            offset += len(per_image)
            records.append(
                ImageRecord(
                    id=item.id,
                    uri=item.uri,
                    metadata=item.metadata,
                    content_sha256=item.sha256,
                    captions=per_image,
                    image_raw=vector_from_proto(image_vector),
                    caption_mean=fusion.caption_feature(features, renormalize=False),
                    caption_slots=features[:WEIMOCIR_SLOTS],
                )
            )
        return _Computed(
            records=records,
            encoder=_identity(image_response.model),
            captioner=_identity(caption_response.model),
            dim=int(records[0].image_raw.shape[0]),
        )


def _failed(item_id: str, error: grpc.aio.AioRpcError) -> ItemOutcome:
    return ItemOutcome(item_id, "failed", error.code().name, error.details() or "")
