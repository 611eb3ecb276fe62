"""RetrieverService: collections, streaming ingestion, search with every strategy."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import grpc

from cir.common.v1 import common_pb2
from cir.encoder.v1 import encoder_pb2
from cir.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from cir_common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from cir_common.images import ImageLimits, content_hash, decode_image
from cir_common.request_context import outgoing_metadata
from cir_retriever.downstream import Budget, ModelServices
from cir_retriever.feature_protos import gallery_page_to_proto, query_features_to_proto
from cir_retriever.gallery.local import Collection, GalleryStore, validate_collection_name
from cir_retriever.gallery.types import CollectionSettings
from cir_retriever.index import IndexCache
from cir_retriever.ingest import IngestPipeline, ItemOutcome, PendingImage
from cir_retriever.options import (
    EDIT_MODE_FROM_PROTO,
    PRESET_TO_PROTO,
    SCORE_FROM_PROTO,
    SELECTION_FROM_PROTO,
    STRATEGY_TO_PROTO,
    WEIMOCIR_FROM_PROTO,
    resolve_options,
    resolve_preset,
    resolve_strategy,
)
from cir_retriever.presets import Preset
from cir_retriever.query import Degradation, QueryPipeline, QueryRequest, Reference, Trace
from cir_retriever.settings import ENV_PREFIX, RetrieverSettings
from cir_retriever.strategies import (
    DESCRIPTIONS,
    TEXTUAL_INVERSION,
    Options,
    StrategyName,
    compose_query,
    gallery_matrix,
    requirements,
    without_missing_caption_slots,
)

log = logging.getLogger(__name__)

_STATUS = {
    "indexed": retriever_pb2.ITEM_STATUS_INDEXED,
    "unchanged": retriever_pb2.ITEM_STATUS_UNCHANGED,
    "replaced": retriever_pb2.ITEM_STATUS_REPLACED,
    "failed": retriever_pb2.ITEM_STATUS_FAILED,
}
_ENCODER_INFO_TTL_S = 30.0
_EXPORT_PAGE_SIZE = 256
_EXPORT_ID_BYTES = 1024  # per image: id, uri and message framing, generously


class RetrieverServicer(retriever_pb2_grpc.RetrieverServiceServicer):
    def __init__(self, settings: RetrieverSettings, services: ModelServices | None = None) -> None:
        self.settings = settings
        self.services = services or ModelServices(
            settings.encoder_address,
            settings.captioner_address,
            settings.reasoner_address,
            settings.max_message_bytes,
        )
        self.store = GalleryStore(Path(settings.store_dir))
        self.pipeline = QueryPipeline(self.services, settings)
        self.ingest = IngestPipeline(self.services, settings.default_timeout_s)
        self.indexes = IndexCache()
        self.degradations: Counter[str] = Counter()
        self.searches = 0
        self.degraded_searches = 0
        self._started_at = datetime.now(UTC).isoformat(timespec="seconds")
        self._limits = ImageLimits(max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
        self._encoder_info: tuple[float, encoder_pb2.GetModelInfoResponse] | None = None

    async def load(self) -> None:
        """Ready when the store opens; model services are reached lazily (they may start later)."""
        names = await asyncio.to_thread(self.store.names)
        log.info("gallery store at %s: %d collection(s)", self.settings.store_dir, len(names))

    async def close(self) -> None:
        await self.services.close()
        self.store.close()

    # -- collections -----------------------------------------------------------------------------------

    def _settings_from_proto(self, proto: retriever_pb2.CollectionSettings) -> CollectionSettings:
        settings = CollectionSettings(
            num_captions=proto.num_captions or self.settings.default_num_captions,
            decoding_variant=proto.decoding_variant or self.settings.default_decoding_variant,
            preprocessing=proto.preprocessing or self.settings.default_preprocessing,
        )
        if settings.decoding_variant not in ("nucleus", "beam_sample"):
            raise InvalidArgument(
                f"settings.decoding_variant {settings.decoding_variant!r} is unknown: nucleus or beam_sample"
            )
        if settings.preprocessing not in ("targetpad", "model_default"):
            raise InvalidArgument(
                f"settings.preprocessing {settings.preprocessing!r} is unknown: targetpad or model_default"
            )
        return settings

    async def CreateCollection(
        self, request: retriever_pb2.CreateCollectionRequest, context: object
    ) -> retriever_pb2.CreateCollectionResponse:
        settings = self._settings_from_proto(request.settings)
        await asyncio.to_thread(self.store.create, request.collection, settings)
        return retriever_pb2.CreateCollectionResponse(
            collection=request.collection, settings=retriever_pb2.CollectionSettings(**asdict(settings))
        )

    async def _open(self, name: str) -> Collection:
        return await asyncio.to_thread(self.store.open, name)

    async def DeleteImages(
        self, request: retriever_pb2.DeleteImagesRequest, context: object
    ) -> retriever_pb2.DeleteImagesResponse:
        collection = await self._open(request.collection)
        if not request.ids:
            raise InvalidArgument("ids is empty: name at least one image id to delete")
        deleted, missing = await asyncio.to_thread(collection.delete, list(request.ids))
        return retriever_pb2.DeleteImagesResponse(deleted=deleted, not_found_ids=missing)

    async def DeleteCollection(
        self, request: retriever_pb2.DeleteCollectionRequest, context: object
    ) -> retriever_pb2.DeleteCollectionResponse:
        deleted = await asyncio.to_thread(self.store.drop, validate_collection_name(request.collection))
        return retriever_pb2.DeleteCollectionResponse(deleted_images=deleted)

    async def ListCollections(
        self, request: retriever_pb2.ListCollectionsRequest, context: object
    ) -> retriever_pb2.ListCollectionsResponse:
        return retriever_pb2.ListCollectionsResponse(collections=await asyncio.to_thread(self.store.names))

    async def GetCollectionInfo(
        self, request: retriever_pb2.GetCollectionInfoRequest, context: object
    ) -> retriever_pb2.GetCollectionInfoResponse:
        collection = await self._open(request.collection)
        manifest = await asyncio.to_thread(collection.manifest)
        size = await asyncio.to_thread(collection.size)
        available = [s for s, ok, _ in await self._availability() if ok]
        return retriever_pb2.GetCollectionInfoResponse(
            collection=manifest.name,
            size=size,
            embedding_dim=manifest.embedding_dim,
            settings=retriever_pb2.CollectionSettings(**asdict(manifest.settings)),
            models=retriever_pb2.ModelsUsed(
                encoder=common_pb2.ModelIdentity(**manifest.encoder),
                captioner=common_pb2.ModelIdentity(**manifest.captioner),
            ),
            strategies_available=[STRATEGY_TO_PROTO[s] for s in available],
            created_at=manifest.created_at,
            updated_at=manifest.updated_at,
        )

    # -- ingestion -------------------------------------------------------------------------------------

    async def IngestImages(
        self, request_iterator: AsyncIterator[retriever_pb2.IngestImagesRequest], context: object
    ) -> AsyncIterator[retriever_pb2.IngestImagesResponse]:
        events: asyncio.Queue[retriever_pb2.IngestImagesResponse | None] = asyncio.Queue()
        reader = asyncio.create_task(self._ingest_stream(request_iterator, events))
        try:
            while (event := await events.get()) is not None:
                yield event
            await reader  # re-raises a stream-level error (e.g. unknown settings) as the call's status
        finally:
            reader.cancel()

    async def _ingest_stream(
        self,
        requests: AsyncIterator[retriever_pb2.IngestImagesRequest],
        events: asyncio.Queue[retriever_pb2.IngestImagesResponse | None],
    ) -> None:
        progress = retriever_pb2.IngestProgress()
        slots = asyncio.Semaphore(self.settings.ingest_max_batches_in_flight)
        in_flight: set[asyncio.Task[None]] = set()
        pending_ids: set[str] = set()
        batch: list[PendingImage] = []
        collection: Collection | None = None
        name = ""

        def report(outcome: ItemOutcome) -> None:
            counter = outcome.status if outcome.status != "failed" else "failed"
            setattr(progress, counter, getattr(progress, counter) + 1)
            if outcome.status != "failed":
                progress.committed += 1
            events.put_nowait(
                retriever_pb2.IngestImagesResponse(
                    item=retriever_pb2.IngestItemResult(
                        id=outcome.id,
                        status=_STATUS[outcome.status],
                        error_code=outcome.error_code,
                        error_message=outcome.error_message,
                    )
                )
            )

        async def run(items: list[PendingImage], target: Collection) -> None:
            try:
                for outcome in await self.ingest.process(target, items):
                    report(outcome)
            except Exception as error:
                log.exception("ingest batch failed")
                for item in items:
                    report(ItemOutcome(item.id, "failed", "INTERNAL", f"{type(error).__name__}: {error}"))
            finally:
                pending_ids.difference_update(i.id for i in items)
                events.put_nowait(
                    retriever_pb2.IngestImagesResponse(
                        progress=retriever_pb2.IngestProgress(**_fields(progress))
                    )
                )
                slots.release()

        async def flush() -> None:
            nonlocal batch
            if batch and collection is not None:
                await slots.acquire()  # back-pressure: stop reading while enough batches are in flight
                task = asyncio.create_task(run(batch, collection))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                batch = []

        try:
            async for request in requests:
                progress.received += 1
                if collection is None:
                    name = request.collection
                    collection = await self._collection_for_ingest(name)
                elif request.collection != name:
                    report(
                        ItemOutcome(
                            request.image.id,
                            "failed",
                            "INVALID_ARGUMENT",
                            f"collection {request.collection!r} differs from this stream's {name!r}",
                        )
                    )
                    continue
                item_or_error = await asyncio.to_thread(self._prepare, request.image)
                if isinstance(item_or_error, ItemOutcome):
                    report(item_or_error)
                    continue
                if item_or_error.id in pending_ids:
                    # The same id again before its first copy is committed: keep the order by waiting.
                    await flush()
                    await asyncio.gather(*in_flight)
                pending_ids.add(item_or_error.id)
                batch.append(item_or_error)
                if len(batch) >= self.settings.ingest_batch_size:
                    await flush()
            await flush()
            await asyncio.gather(*in_flight)
        finally:
            events.put_nowait(None)

    async def _collection_for_ingest(self, name: str) -> Collection:
        validate_collection_name(name)
        if await asyncio.to_thread(self.store.exists, name):
            return await self._open(name)
        return await asyncio.to_thread(
            self.store.create, name, self._settings_from_proto(retriever_pb2.CollectionSettings())
        )

    def _prepare(self, image: retriever_pb2.GalleryImage) -> PendingImage | ItemOutcome:
        if not image.id:
            return ItemOutcome(
                "", "failed", "INVALID_ARGUMENT", "image.id is empty: every gallery image needs an id"
            )
        if image.image.WhichOneof("source") != "data":
            return ItemOutcome(
                image.id, "failed", "INVALID_ARGUMENT", "image.image.data is empty: send the image bytes"
            )
        try:
            decode_image(image.image.data, self._limits, label=f"image {image.id!r}")
        except InvalidArgument as error:
            return ItemOutcome(image.id, "failed", "INVALID_ARGUMENT", error.message)
        return PendingImage(
            id=image.id,
            data=image.image.data,
            sha256=content_hash(image.image.data),
            uri=image.uri,
            metadata=dict(image.metadata),
        )

    # -- search ----------------------------------------------------------------------------------------

    async def _encoder_model_info(self, budget: Budget) -> encoder_pb2.GetModelInfoResponse:
        now = time.monotonic()
        if self._encoder_info is not None and now - self._encoder_info[0] < _ENCODER_INFO_TTL_S:
            return self._encoder_info[1]
        try:
            info = await self.services.encoder.GetModelInfo(
                encoder_pb2.GetModelInfoRequest(), timeout=budget.timeout(), metadata=outgoing_metadata()
            )
        except grpc.aio.AioRpcError as error:
            raise Unavailable(f"the encoder service is unavailable: {error.details()}") from error
        self._encoder_info = (now, info)
        return info

    async def _availability(self) -> list[tuple[StrategyName, bool, str]]:
        try:
            info = await self._encoder_model_info(Budget.from_context(None, 5.0))
            networks = {n.name for n in info.mapping_networks}
            has_default = any(n.is_default for n in info.mapping_networks)
        except Unavailable as error:
            return [(s, False, error.message) for s in StrategyName]
        rows = []
        for strategy in StrategyName:
            if strategy in TEXTUAL_INVERSION and strategy.value not in networks:
                rows.append((strategy, False, f"the encoder has no mapping network named {strategy.value!r}"))
            elif strategy is StrategyName.CVSI and not has_default:
                rows.append((strategy, False, "the encoder has no default mapping network"))
            else:
                rows.append((strategy, True, ""))
        return rows

    async def ListStrategies(
        self, request: retriever_pb2.ListStrategiesRequest, context: object
    ) -> retriever_pb2.ListStrategiesResponse:
        presets = [PRESET_TO_PROTO[p] for p in Preset]
        infos = []
        for strategy, ok, why in await self._availability():
            options = resolve_options(Preset.CIRCO, retriever_pb2.Weights(), retriever_pb2.StrategyOptions())
            needs = requirements(strategy, options)
            infos.append(
                retriever_pb2.StrategyInfo(
                    strategy=STRATEGY_TO_PROTO[strategy],
                    name=strategy.value,
                    description=DESCRIPTIONS[strategy],
                    available=ok,
                    unavailable_reason=why,
                    presets=presets,
                    uses_captioner=needs.captions,
                    uses_reasoner=needs.edits is not None or needs.objects,
                )
            )
        return retriever_pb2.ListStrategiesResponse(strategies=infos)

    async def Search(
        self, request: retriever_pb2.SearchRequest, context: grpc.aio.ServicerContext
    ) -> retriever_pb2.SearchResponse:
        budget = Budget.from_context(context, self.settings.default_timeout_s)
        text = request.modification_text.strip()
        if not text:
            raise InvalidArgument("modification_text is empty: say how the reference should change")
        strategy = resolve_strategy(request.strategy, self.settings.default_strategy)
        preset = resolve_preset(request.preset, self.settings.default_preset)
        options = resolve_options(preset, request.weights, request.options)
        top_k = request.top_k or self.settings.default_top_k
        if top_k > self.settings.max_top_k:
            raise InvalidArgument(
                f"top_k = {top_k} is over the limit of {self.settings.max_top_k} ({ENV_PREFIX}MAX_TOP_K)"
            )
        collection = await self._open(request.collection)
        manifest = await asyncio.to_thread(collection.manifest)
        if not manifest.encoder:
            raise FailedPrecondition(f"collection {manifest.name!r} is empty: ingest images before searching")
        reference = await self._reference(request, collection)
        info = await self._encoder_model_info(budget)
        if (info.model.name, info.model.revision) != (manifest.encoder["name"], manifest.encoder["revision"]):
            raise FailedPrecondition(
                f"collection {manifest.name!r} was indexed with encoder {manifest.encoder['name']}@"
                f"{manifest.encoder['revision'][:12]}, but the encoder serving now is {info.model.name}@"
                f"{info.model.revision[:12]}: the vectors do not compare; re-index or switch the encoder back"
            )
        for strategy_row, ok, why in await self._availability():
            if strategy_row is strategy and not ok:
                raise FailedPrecondition(f"strategy {strategy.value} is not available: {why}")

        needs = requirements(strategy, options)
        query = QueryRequest(
            reference,
            text,
            strategy,
            options,
            needs,
            manifest.settings,
            # only LDRE's adaptive weights read them: other strategies skip embedding N more captions
            reference_captions=request.return_features and strategy is StrategyName.LDRE,
        )
        inputs, trace = await self.pipeline.run(query, budget)
        snapshot = await asyncio.to_thread(collection.snapshot)
        slots = snapshot.features.caption_slots.shape[1]
        composed_inputs, composed_options = without_missing_caption_slots(strategy, inputs, options, slots)
        if composed_options is not options:
            options = composed_options
            trace.degradations.append(
                Degradation(
                    "weimocir_captions",
                    "no reference captions",
                    "caption term dropped (b = 0): image term only",
                )
            )
        q, spec = compose_query(strategy, composed_inputs, options)

        with trace.timer.stage("search"):
            index = await asyncio.to_thread(
                self.indexes.get,
                (manifest.name, snapshot.version, spec),
                lambda: gallery_matrix(spec, snapshot.features),
            )
            scores, rows = await asyncio.to_thread(index.search, q[None, :], top_k)
        ids = [snapshot.ids[r] for r in rows[0] if r >= 0]
        metadata = await asyncio.to_thread(collection.metadata, ids)
        self.searches += 1
        self.degraded_searches += bool(trace.degradations)
        for degradation in trace.degradations:
            self.degradations[degradation.stage] += 1
        return retriever_pb2.SearchResponse(
            hits=[
                retriever_pb2.SearchHit(
                    id=snapshot.ids[r],
                    score=float(s),
                    uri=snapshot.uris[r],
                    metadata=metadata.get(snapshot.ids[r], {}),
                )
                for s, r in zip(scores[0], rows[0], strict=True)
                if r >= 0
            ],
            resolved=_resolved(strategy, preset, options),
            explanation=_explanation(trace, options) if request.explain else None,
            degradations=[retriever_pb2.Degradation(**asdict(d)) for d in trace.degradations],
            timings=trace.timer.as_protos(),
            collection_size=len(snapshot.ids),
            features=query_features_to_proto(inputs) if request.return_features else None,
        )

    async def ExportGalleryFeatures(
        self, request: retriever_pb2.ExportGalleryFeaturesRequest, context: object
    ) -> AsyncIterator[retriever_pb2.ExportGalleryFeaturesResponse]:
        collection = await self._open(request.collection)
        snapshot = await asyncio.to_thread(collection.snapshot)
        # A page must fit one message: t_v, the caption mean and R caption slots per image, packed float32.
        features = snapshot.features
        per_image = 4 * features.t_v.shape[1] * (2 + features.caption_slots.shape[1]) + _EXPORT_ID_BYTES
        limit = max(1, self.settings.max_message_bytes // per_image)
        if request.page_size > limit:
            raise InvalidArgument(
                f"page_size = {request.page_size} is over the limit of {limit} for this collection "
                f"(pages must fit {ENV_PREFIX}MAX_MESSAGE_BYTES = {self.settings.max_message_bytes})"
            )
        page = min(request.page_size or _EXPORT_PAGE_SIZE, limit)
        total = len(snapshot.ids)
        for start in range(0, total, page):
            rows = range(start, min(start + page, total))
            yield gallery_page_to_proto(snapshot.ids, snapshot.uris, snapshot.features, rows, total)

    async def GetServiceStats(
        self, request: retriever_pb2.GetServiceStatsRequest, context: object
    ) -> retriever_pb2.GetServiceStatsResponse:
        return retriever_pb2.GetServiceStatsResponse(
            searches=self.searches,
            degraded_searches=self.degraded_searches,
            degradations_by_stage=dict(self.degradations),
            started_at=self._started_at,
        )

    async def _reference(self, request: retriever_pb2.SearchRequest, collection: Collection) -> Reference:
        which = request.WhichOneof("reference")
        if which == "reference_id":
            stored = await asyncio.to_thread(collection.get, request.reference_id)
            if stored is None:
                raise NotFound(
                    f"reference_id {request.reference_id!r} is not in collection {request.collection!r}"
                )
            return Reference(stored=stored)
        if which == "reference_image" and request.reference_image.WhichOneof("source") == "data":
            await asyncio.to_thread(
                decode_image, request.reference_image.data, self._limits, label="reference_image"
            )
            return Reference(image=request.reference_image)
        raise InvalidArgument("give the reference as reference_image.data (image bytes) or reference_id")


def _fields(progress: retriever_pb2.IngestProgress) -> dict[str, int]:
    return {f.name: getattr(progress, f.name) for f in progress.DESCRIPTOR.fields}


def _resolved(strategy: StrategyName, preset: Preset, options: Options) -> retriever_pb2.ResolvedStrategy:

    def back(table: dict, value: object) -> int:
        return next(k for k, v in table.items() if v == value)

    return retriever_pb2.ResolvedStrategy(
        strategy=STRATEGY_TO_PROTO[strategy],
        preset=PRESET_TO_PROTO[preset],
        alpha=options.alpha,
        beta=options.beta,
        gamma=options.gamma,
        weimocir_a=options.weimocir_a,
        weimocir_b=options.weimocir_b,
        edit_mode=back(EDIT_MODE_FROM_PROTO, options.edit_mode),
        objects_caption_selection=back(SELECTION_FROM_PROTO, options.objects_caption_selection),
        score_function=back(SCORE_FROM_PROTO, options.score),
        weimocir_variant=back(WEIMOCIR_FROM_PROTO, options.weimocir_variant),
        edit_template=options.edit_template,
        caption_features_renormalized=options.caption_features_renormalized,
    )


def _explanation(trace: Trace, options: Options) -> retriever_pb2.Explanation:
    return retriever_pb2.Explanation(
        captions=trace.captions,
        edited_captions=trace.edited_captions,
        added_objects=trace.added_objects,
        fine_grained_prompt=trace.prompt,
        edit_outcomes=trace.edit_outcomes,
        objects_outcome=trace.objects_outcome,
    )
