"""Gallery ingestion: validated images in, batches through the captioner and the encoder, records committed.

A batch is committed in one store transaction after its model calls succeed, so a crash loses at
most the batches in flight. Images whose id and bytes are already stored cost nothing.

InstructCIR: a collection whose first images were indexed while the encoder served an InstructCIR checkpoint
keeps that checkpoint's target embedding for every image (EmbedInstructCirTargets next to EmbedImages); one
indexed without keeps none. A later batch for a collection with targets needs the same checkpoint served.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum

from cir_common.errors import FailedPrecondition
from cir_retriever import fusion
from cir_retriever.clients import Budget, DownstreamError, ImageEmbeddings, InstructCirInfo, ModelServices
from cir_retriever.gallery.base import Collection
from cir_retriever.gallery.types import ImageRecord, Manifest
from cir_retriever.presets import WEIMOCIR_SLOTS

# The InstructCIR checkpoint the encoder serves now (None: none).
# `fresh`: ask the encoder now rather than trust a cached answer.
ServingInstructCir = Callable[[Budget, bool], Awaitable[InstructCirInfo | None]]

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
    instructcir: dict[str, str] = field(default_factory=dict)  # the targets' checkpoint; empty: no targets
    instructcir_dim: int = 0


async def _none_served(budget: Budget, fresh: bool = False) -> InstructCirInfo | None:
    return None


class IngestPipeline:
    def __init__(
        self,
        services: ModelServices,
        request_timeout_s: float,
        serving_instructcir: ServingInstructCir = _none_served,
    ) -> None:
        self._services = services
        self._timeout_s = request_timeout_s
        self._serving_instructcir = serving_instructcir

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
                    collection.record_models,
                    computed.encoder,
                    computed.captioner,
                    computed.dim,
                    computed.instructcir,
                    computed.instructcir_dim,
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
                merged = replace(single, records=merged.records, failures=merged.failures)
        return merged

    async def _targets_wanted(self, manifest: Manifest, budget: Budget) -> bool:
        """Whether this batch computes InstructCIR targets: a collection already indexed keeps its choice (and
        then needs its checkpoint served); a new one keeps them when the encoder serves a checkpoint now."""
        if manifest.encoder and not manifest.instructcir:
            return False
        # A new collection decides once and for all: ask the encoder now, not a cached answer that may
        # predate its restart with (or without) a checkpoint.
        serving = await self._serving_instructcir(budget, not manifest.encoder)
        if not manifest.encoder:
            return serving is not None
        kept = (manifest.instructcir.get("name"), manifest.instructcir.get("revision"))
        if serving is None or (serving.model.name, serving.model.revision) != kept:
            serving = await self._serving_instructcir(budget, True)
        if serving is None or (serving.model.name, serving.model.revision) != kept:
            now = "none" if serving is None else f"{serving.model.name}@{serving.model.revision[:12]}"
            raise FailedPrecondition(
                f"collection {manifest.name!r} keeps the InstructCIR target embeddings of checkpoint "
                f"{kept[0]}@{str(kept[1])[:12]} for every image, but the encoder serves {now}: serve that "
                "checkpoint again (CIR_ENCODER_INSTRUCTCIR_CHECKPOINT) or ingest into a new collection"
            )
        return True

    async def _compute_batch(self, collection: Collection, items: list[PendingImage]) -> _Computed:
        manifest = await asyncio.to_thread(collection.manifest)
        settings = manifest.settings
        budget = Budget.starting_now(self._timeout_s)
        images = [item.data for item in items]
        encoder = self._services.encoder
        targets: ImageEmbeddings | None = None
        if await self._targets_wanted(manifest, budget):
            embedded, captioned, targets = await asyncio.gather(
                encoder.embed_images(images, settings.preprocessing, budget),
                self._services.captioner.captions(
                    images, settings.num_captions, settings.decoding_variant, budget
                ),
                encoder.embed_instructcir_targets(images, settings.preprocessing, budget),
            )
        else:
            embedded, captioned = await asyncio.gather(
                encoder.embed_images(images, settings.preprocessing, budget),
                self._services.captioner.captions(
                    images, settings.num_captions, settings.decoding_variant, budget
                ),
            )
        flat = [text for per_image in captioned.per_image for text in per_image]
        text_features = await self._services.encoder.embed_texts(flat, budget)
        records = []
        offset = 0
        for n, (item, image_vector, per_image) in enumerate(
            zip(items, embedded.vectors, captioned.per_image, strict=True)
        ):
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
                    # normalised again: the store's column holds unit vectors whatever the encoder sent
                    instructcir_target=None if targets is None else fusion.normalize(targets.vectors[n]),
                )
            )
        return _Computed(
            records=records,
            encoder=embedded.model.as_dict(),
            captioner=captioned.model.as_dict(),
            dim=int(embedded.vectors.shape[1]),
            instructcir={} if targets is None else targets.model.as_dict(),
            instructcir_dim=0 if targets is None else int(targets.vectors.shape[1]),
        )


def _failed(item_id: str, error: DownstreamError) -> ItemOutcome:
    return ItemOutcome.failed(item_id, error.downstream_code, error.details)
