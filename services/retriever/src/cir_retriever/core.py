"""The retriever's core: collections, ingestion, search and export over a gallery store. No protos here.

`Retriever` is what the gRPC layer (`service.py`) calls after converting a request; it returns
dataclasses and raises `cir_common.errors` types, which the server maps to status codes. It holds no
state of its own beyond counters and a short-lived copy of the encoder's model info: everything durable
lives in the gallery store (local SQLite, or Milvus shared by every replica).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from cir_common import metrics
from cir_common.admission import AdmissionGate, to_thread_to_completion
from cir_common.errors import (
    CirError,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from cir_common.images import ImageLimits, content_hash, decode_image, decoded_within, probe_image
from cir_common.service_kit import decode_budget
from cir_retriever.clients import Budget, DownstreamError, EncoderInfo, InstructCirInfo, ModelServices
from cir_retriever.gallery.base import Collection, GalleryStore
from cir_retriever.gallery.filters import typed_metadata, validate_fields, validate_filter
from cir_retriever.gallery.types import (
    MAX_NUM_CAPTIONS,
    CollectionSettings,
    FeaturePage,
    Filter,
    Hit,
    ImageRecord,
    Manifest,
)
from cir_retriever.ingest import IngestPipeline, ItemOutcome, ItemStatus, PendingImage
from cir_retriever.options import VariantChoices, WeightOverrides, resolve_options
from cir_retriever.presets import Preset
from cir_retriever.query import (
    SEARCH_STAGE,
    Degradation,
    QueryPipeline,
    QueryRequest,
    Reference,
    Trace,
    shed_message,
)
from cir_retriever.settings import ENV_PREFIX, RetrieverSettings
from cir_retriever.strategies import (
    DESCRIPTIONS,
    TEXTUAL_INVERSION,
    InstructCirVariant,
    Options,
    QueryInputs,
    StrategyName,
    compose_query,
    ranked_as,
    requirements,
    without_missing_caption_slots,
)

if TYPE_CHECKING:
    from prometheus_client.core import Metric

log = logging.getLogger(__name__)

_ENCODER_INFO_TTL_S = 30.0
EXPORT_DEFAULT_PAGE_SIZE = 256
_EXPORT_ID_BYTES = 1024  # per image: id, uri and message framing, generously


# --- what the core takes and returns --------------------------------------------------------------------


@dataclass(frozen=True)
class SearchQuery:
    collection: str
    text: str
    reference_image: bytes | None = None  # exactly one of reference_image / reference_id
    reference_id: str | None = None
    strategy: StrategyName | None = None  # None = the server's default
    preset: Preset | None = None
    weights: WeightOverrides = field(default_factory=WeightOverrides)
    choices: VariantChoices = field(default_factory=VariantChoices)
    top_k: int = 0  # 0 = the server's default
    where: Filter = field(default_factory=Filter)
    return_features: bool = False


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    strategy: StrategyName
    preset: Preset
    options: Options
    trace: Trace
    collection_size: int
    features: QueryInputs | None


@dataclass(frozen=True)
class StrategyAvailability:
    strategy: StrategyName
    description: str
    available: bool
    unavailable_reason: str
    uses_captioner: bool
    uses_reasoner: bool


@dataclass(frozen=True)
class CollectionInfo:
    manifest: Manifest
    size: int
    strategies_available: list[StrategyName]


@dataclass(frozen=True)
class IngestItem:
    collection: str
    id: str
    data: bytes | None  # None: the caller sent no image bytes
    uri: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class IngestProgress:
    received: int = 0
    indexed: int = 0
    unchanged: int = 0
    replaced: int = 0
    failed: int = 0
    committed: int = 0


IngestEvent = ItemOutcome | IngestProgress


@dataclass(frozen=True)
class ImportBatch:
    """One message of a feature import: the first names the collection, the models and the dimension."""

    collection: str
    encoder: dict[str, str]
    captioner: dict[str, str]
    embedding_dim: int
    records: list[ImageRecord]
    # The InstructCIR checkpoint that made the images' instructcir_target; empty = the images carry none.
    instructcir: dict[str, str] = field(default_factory=dict)


@dataclass
class ImportCounts:
    received: int = 0
    indexed: int = 0
    unchanged: int = 0
    replaced: int = 0


@dataclass(frozen=True)
class ServiceStats:
    searches: int
    degraded_searches: int
    degradations_by_stage: dict[str, int]
    started_at: str


# --- the core -------------------------------------------------------------------------------------------


class Retriever:
    def __init__(self, settings: RetrieverSettings, store: GalleryStore, services: ModelServices) -> None:
        self.settings = settings
        self.store = store
        self.services = services
        self.pipeline = QueryPipeline(services, settings)
        self.ingestion = IngestPipeline(services, settings.default_timeout_s, self._serving_instructcir)
        self._degradations: Counter[str] = Counter()
        self._searches = 0
        self._degraded_searches = 0
        self._started_at = datetime.now(UTC).isoformat(timespec="seconds")
        self._limits = ImageLimits(max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
        # Decoded pixels of references and ingested images, summed over every call in flight: many large
        # images at once must not take the process past its memory (callers past it wait, then are refused).
        self._decode_budget = decode_budget(settings, ENV_PREFIX)
        # The captioner and LLM stages are the scarce capacity: a search admitted past what they finish in
        # time makes every search miss its deadline (goodput collapse), so such searches take a turn first.
        self._generative_searches = AdmissionGate(
            settings.max_concurrent_generative_searches,
            settings.max_queued_generative_searches,
            service="the retriever's captioning and LLM stages",
            settings=(
                f"{ENV_PREFIX}MAX_CONCURRENT_GENERATIVE_SEARCHES",
                f"{ENV_PREFIX}MAX_QUEUED_GENERATIVE_SEARCHES",
            ),
            name="generative_search",
        )
        self._encoder_info: tuple[float, EncoderInfo] | None = None
        self._closed = False
        metrics.watch("retriever", self, Retriever.store_figures)

    async def load(self) -> None:
        """Ready when the store answers; model services are reached lazily (they may start later)."""
        await self.check()
        names = await asyncio.to_thread(self.store.names)
        log.info("gallery store (%s): %d collection(s)", self.settings.store_backend, len(names))

    async def check(self) -> None:
        """Raises Unavailable while the gallery store cannot serve (the health probe)."""
        await asyncio.to_thread(self.store.check)

    async def close(self) -> None:
        self._closed = True
        await self.services.close()
        await asyncio.to_thread(self.store.close)

    # -- collections -----------------------------------------------------------------------------------

    def with_defaults(self, settings: CollectionSettings) -> CollectionSettings:
        """Settings with the server's defaults where the caller left a field empty, checked (the choices were
        checked when the CollectionSettings were built)."""
        resolved = replace(
            settings,
            num_captions=settings.num_captions or self.settings.default_num_captions,
            decoding_variant=settings.decoding_variant or self.settings.default_decoding_variant,
            preprocessing=settings.preprocessing or self.settings.default_preprocessing,
        )
        if not 1 <= resolved.num_captions <= MAX_NUM_CAPTIONS:
            raise InvalidArgument(
                f"settings.num_captions = {resolved.num_captions} is outside 1..{MAX_NUM_CAPTIONS}"
            )
        validate_fields(resolved.filterable_fields)
        return resolved

    async def create_collection(self, name: str, settings: CollectionSettings) -> CollectionSettings:
        resolved = self.with_defaults(settings)
        collection = await asyncio.to_thread(self.store.create, name, resolved)
        return (await asyncio.to_thread(collection.manifest)).settings

    async def open(self, name: str) -> Collection:
        return await asyncio.to_thread(self.store.open, name)

    async def delete_images(self, name: str, ids: list[str]) -> tuple[int, list[str]]:
        collection = await self.open(name)
        if not ids:
            raise InvalidArgument("ids is empty: name at least one image id to delete")
        return await asyncio.to_thread(collection.delete, ids)

    async def delete_collection(self, name: str) -> int:
        return await asyncio.to_thread(self.store.drop, name)

    async def list_collections(self) -> list[str]:
        return await asyncio.to_thread(self.store.names)

    async def collection_info(self, name: str) -> CollectionInfo:
        collection = await self.open(name)
        manifest = await asyncio.to_thread(collection.manifest)
        size = await asyncio.to_thread(collection.size)
        available = [
            row.strategy
            for row in await self.strategies()
            if row.available and (row.strategy is not StrategyName.INSTRUCTCIR or manifest.instructcir)
        ]
        return CollectionInfo(manifest, size, available)

    # -- strategies ------------------------------------------------------------------------------------

    async def _encoder_model_info(self, budget: Budget, fresh: bool = False) -> EncoderInfo:
        """What the encoder serves, cached for _ENCODER_INFO_TTL_S; `fresh` asks it again (after a check
        against the cached answer failed: the encoder may have been restarted with other models since)."""
        now = time.monotonic()
        cached = self._encoder_info is not None and now - self._encoder_info[0] < _ENCODER_INFO_TTL_S
        if cached and not fresh and self._encoder_info is not None:
            return self._encoder_info[1]
        try:
            info = await self.services.encoder.model_info(budget)
        except DownstreamError as error:
            raise Unavailable(f"the encoder service is unavailable: {error.details}") from error
        self._encoder_info = (now, info)
        return info

    async def _serving_instructcir(self, budget: Budget, fresh: bool = False) -> InstructCirInfo | None:
        """The InstructCIR checkpoint the encoder serves now (None: none), for ingestion."""
        return (await self._encoder_model_info(budget, fresh)).instructcir

    async def strategies(self) -> list[StrategyAvailability]:
        options = resolve_options(Preset.CIRCO, WeightOverrides(), VariantChoices())
        try:
            info = await self._encoder_model_info(Budget.starting_now(5.0))
        except Unavailable as error:
            info, down = None, error.message
        rows = []
        for strategy in StrategyName:
            why = down if info is None else _unavailable_reason(strategy, info)
            needs = requirements(strategy, options)
            rows.append(
                StrategyAvailability(
                    strategy=strategy,
                    description=DESCRIPTIONS[strategy],
                    available=not why,
                    unavailable_reason=why,
                    uses_captioner=needs.captions,
                    uses_reasoner=needs.edits is not None or needs.objects,
                )
            )
        return rows

    # -- search ----------------------------------------------------------------------------------------

    def budget(self, time_remaining: float | None) -> Budget:
        """A search's time: what the caller's deadline leaves, or the server's default without one."""
        seconds = self.settings.default_timeout_s if time_remaining is None else time_remaining
        return Budget.starting_now(seconds)

    async def search(self, query: SearchQuery, budget: Budget) -> SearchResult:
        strategy = query.strategy or self.settings.default_strategy
        # Every stage this search times (in the tasks it starts too) carries its strategy in the metrics.
        with metrics.strategy_label(strategy.value):
            return await self._search(query, budget)

    async def _search(self, query: SearchQuery, budget: Budget) -> SearchResult:
        text = query.text.strip()
        if not text:
            raise InvalidArgument("modification_text is empty: say how the reference should change")
        if len(text) > self.settings.max_text_chars:
            raise InvalidArgument(
                f"modification_text has {len(text)} characters, over the limit of "
                f"{self.settings.max_text_chars} ({ENV_PREFIX}MAX_TEXT_CHARS): say the change in fewer words"
            )
        strategy = query.strategy or self.settings.default_strategy
        preset = query.preset or self.settings.default_preset
        options = resolve_options(preset, query.weights, query.choices)
        top_k = query.top_k or self.settings.default_top_k
        if top_k > self.settings.max_top_k:
            raise InvalidArgument(
                f"top_k = {top_k} is over the limit of {self.settings.max_top_k} ({ENV_PREFIX}MAX_TOP_K)"
            )
        needs = requirements(strategy, options)
        # Before the store or any model is asked anything: a deadline too short for the essential stages
        # would only spend their capacity on an answer nobody receives.
        self.pipeline.admit(strategy, needs, query.reference_id is None, budget)
        collection = await self.open(query.collection)
        manifest = await asyncio.to_thread(collection.manifest)
        where = validate_filter(query.where, manifest.settings.filterable_fields)
        if not manifest.encoder:
            raise FailedPrecondition(f"collection {manifest.name!r} is empty: ingest images before searching")
        reference = await self._reference(query, collection)
        info = await self._encoder_model_info(budget)
        try:
            _check_encoder(manifest, info, strategy, options, reference)
        except FailedPrecondition:
            # The cached answer may predate a restart of the encoder with other models: ask once more.
            info = await self._encoder_model_info(budget, fresh=True)
            _check_encoder(manifest, info, strategy, options, reference)

        request = QueryRequest(
            reference,
            text,
            strategy,
            options,
            needs,
            manifest.settings,
            # only LDRE's adaptive weights read them: other strategies skip embedding N more captions
            reference_captions=query.return_features and strategy is StrategyName.LDRE,
            edit_template_from_caller=bool(query.choices.edit_template),
            instructcir=info.instructcir,
        )
        if needs.captions or needs.edits is not None or needs.objects:
            async with self._generative_searches.admit(budget.remaining, timed=False, shed=True):
                started = time.monotonic()
                inputs, trace = await self.pipeline.run(request, budget)
                if not trace.degradations:
                    # Only whole runs say how long a search holds its turn: counting the shortened ones
                    # (stages skipped or cut) would make the gate admit more than can finish in time,
                    # which shortens more of them.
                    self._generative_searches.observe(time.monotonic() - started)
        else:
            inputs, trace = await self.pipeline.run(request, budget)
        slots = await asyncio.to_thread(collection.caption_slot_count)
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
        # InstructCIR whose query stage degraded ranks by the reference image alone (the degradation says so).
        q, spec = compose_query(ranked_as(strategy, composed_inputs), composed_inputs, options)
        short = self.pipeline.shortfall(SEARCH_STAGE, budget)
        if short is not None:
            raise DeadlineExceeded(shed_message(short))
        started = time.perf_counter()
        with trace.timer.stage(SEARCH_STAGE):
            hits = await asyncio.to_thread(collection.search, spec, q, top_k, where)
        self.pipeline.observe(SEARCH_STAGE, started)
        size = await asyncio.to_thread(collection.size)
        self._count(trace, strategy)
        return SearchResult(
            hits=hits,
            strategy=strategy,
            preset=preset,
            options=options,
            trace=trace,
            collection_size=size,
            features=inputs if query.return_features else None,
        )

    def _count(self, trace: Trace, strategy: StrategyName) -> None:
        self._searches += 1
        self._degraded_searches += bool(trace.degradations)
        for degradation in trace.degradations:
            self._degradations[degradation.stage] += 1
            metrics.count(metrics.DEGRADATIONS, stage=degradation.stage)
        metrics.count(metrics.SEARCHES, strategy=strategy.value)
        if trace.degradations:
            metrics.count(metrics.DEGRADED_SEARCHES, strategy=strategy.value)

    async def _reference(self, query: SearchQuery, collection: Collection) -> Reference:
        if query.reference_id is not None:
            stored = await asyncio.to_thread(collection.get, query.reference_id)
            if stored is None:
                raise NotFound(
                    f"reference_id {query.reference_id[:128]!r} is not in collection "
                    f"{query.collection[:128]!r}"
                )
            return Reference(stored=stored)
        if query.reference_image:
            # Decoded only to refuse a bad image before any model call; the pixels are dropped at once.
            async with decoded_within(
                self._decode_budget, query.reference_image, self._limits, label="reference_image"
            ):
                pass
            return Reference(image=query.reference_image)
        raise InvalidArgument("give the reference as reference_image.data (image bytes) or reference_id")

    # -- ingestion -------------------------------------------------------------------------------------

    async def _collection_for_ingest(self, name: str) -> Collection:
        if await asyncio.to_thread(self.store.exists, name):
            return await self.open(name)
        # Nothing set, so every choice is the server's default_* (CollectionSettings() holds fixed values).
        unset = CollectionSettings(num_captions=0, decoding_variant=None, preprocessing=None)
        return await asyncio.to_thread(self.store.create, name, self.with_defaults(unset))

    async def _prepare_within_budget(
        self, item: IngestItem, manifest: Manifest
    ) -> PendingImage | ItemOutcome:
        """`_prepare` in a worker thread, its decoded size reserved in the process's decode budget first."""
        label = f"image {item.id[:128]!r}"
        if item.data:
            try:
                header = await asyncio.to_thread(probe_image, item.data, self._limits, label=label)
            except InvalidArgument as error:
                return ItemOutcome.failed(item.id, "INVALID_ARGUMENT", error.message)
            try:
                async with self._decode_budget.reserve(header.decoded_bytes, label=label):
                    return await to_thread_to_completion(self._prepare, item, manifest)
            except (InvalidArgument, ResourceExhausted) as error:
                # Larger than the whole budget, or no room freed in time: this item fails, the stream goes on.
                return ItemOutcome.failed(item.id, error.code.name, error.message)
        return await asyncio.to_thread(self._prepare, item, manifest)

    def _prepare(self, item: IngestItem, manifest: Manifest) -> PendingImage | ItemOutcome:
        """Validates one item (decoding its image) and hashes it. Runs in a worker thread: decoding a
        large image takes long enough to stall every other call on the event loop."""
        if not item.id:
            return ItemOutcome.failed(
                "", "INVALID_ARGUMENT", "image.id is empty: every gallery image needs an id"
            )
        if not item.data:
            return ItemOutcome.failed(
                item.id, "INVALID_ARGUMENT", "image.image.data is empty: send the image bytes"
            )
        try:
            typed_metadata(item.metadata, manifest.settings.filterable_fields)
            decode_image(item.data, self._limits, label=f"image {item.id[:128]!r}")
        except InvalidArgument as error:
            return ItemOutcome.failed(item.id, "INVALID_ARGUMENT", error.message)
        return PendingImage(
            id=item.id, data=item.data, sha256=content_hash(item.data), uri=item.uri, metadata=item.metadata
        )

    async def ingest(self, items: AsyncIterator[IngestItem]) -> AsyncIterator[IngestEvent]:
        """Per-item outcomes and progress after each batch; a stream-level error ends the stream with it."""
        events: asyncio.Queue[IngestEvent | None] = asyncio.Queue()
        reader = asyncio.create_task(self._ingest_stream(items, events))
        try:
            while (event := await events.get()) is not None:
                yield event
            await reader  # re-raises a stream-level error (e.g. an unknown collection name)
        finally:
            reader.cancel()

    async def _ingest_stream(
        self, items: AsyncIterator[IngestItem], events: asyncio.Queue[IngestEvent | None]
    ) -> None:
        progress = IngestProgress()
        slots = asyncio.Semaphore(self.settings.ingest_max_batches_in_flight)
        in_flight: set[asyncio.Task[None]] = set()
        pending_ids: set[str] = set()
        batch: list[PendingImage] = []
        collection: Collection | None = None
        manifest: Manifest | None = None
        name = ""

        def report(outcome: ItemOutcome) -> None:
            setattr(progress, outcome.status.value, getattr(progress, outcome.status.value) + 1)
            metrics.count(metrics.INGESTED_IMAGES, status=outcome.status.value)
            if outcome.status is not ItemStatus.FAILED:
                progress.committed += 1
            events.put_nowait(outcome)

        async def run(pending: list[PendingImage], target: Collection) -> None:
            try:
                for outcome in await self.ingestion.process(target, pending):
                    report(outcome)
            except Exception as error:
                log.exception("ingest batch failed")
                code = error.code.name if isinstance(error, CirError) else "INTERNAL"
                for item in pending:
                    report(ItemOutcome.failed(item.id, code, f"{type(error).__name__}: {error}"))
            finally:
                pending_ids.difference_update(i.id for i in pending)
                events.put_nowait(replace(progress))
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
            async for item in items:
                progress.received += 1
                if collection is None:
                    name = item.collection
                    collection = await self._collection_for_ingest(name)
                    manifest = await asyncio.to_thread(collection.manifest)
                elif item.collection != name:
                    report(
                        ItemOutcome.failed(
                            item.id,
                            "INVALID_ARGUMENT",
                            f"collection {item.collection[:128]!r} differs from this stream's {name!r}",
                        )
                    )
                    continue
                assert manifest is not None
                # Off the event loop (the decode); a bad item becomes its own outcome, not the stream's.
                prepared = await self._prepare_within_budget(item, manifest)
                if isinstance(prepared, ItemOutcome):
                    report(prepared)
                    continue
                if prepared.id in pending_ids:
                    # The same id again before its first copy is committed: keep the order by waiting.
                    await flush()
                    await asyncio.gather(*in_flight)
                pending_ids.add(prepared.id)
                batch.append(prepared)
                if len(batch) >= self.settings.ingest_batch_size:
                    await flush()
            await flush()
            await asyncio.gather(*in_flight)
        finally:
            events.put_nowait(None)

    # -- bulk import of precomputed features -----------------------------------------------------------

    async def import_features(self, batches: AsyncIterator[ImportBatch]) -> ImportCounts:
        """Loads precomputed features batch by batch (each one store transaction); idempotent by content hash.

        The first batch fixes the collection, models and dimension; they must equal what the collection was
        indexed with, and for a collection without vectors yet, the encoder serving now when it answers.
        """
        counts = ImportCounts()
        collection: Collection | None = None
        first: ImportBatch | None = None
        async for batch in batches:
            if first is None:
                first = batch
                if not batch.encoder.get("name") or batch.embedding_dim <= 0:
                    raise InvalidArgument(
                        "the first message must name models.encoder and embedding_dim (the vectors' models)"
                    )
                if batch.instructcir.get("name") and not _instructcir_dim(batch):
                    raise InvalidArgument(
                        "the first message names models.instructcir but carries no image with "
                        "instructcir_target: send images in it (their targets fix the dimension)"
                    )
                if not await asyncio.to_thread(self.store.exists, batch.collection):
                    await self._check_serving_encoder(batch)  # before creating anything
                collection = await self._collection_for_ingest(batch.collection)
                if not (await asyncio.to_thread(collection.manifest)).encoder:
                    await self._check_serving_encoder(batch)
                # Raises FAILED_PRECONDITION when the collection holds another encoder's vectors (or other
                # InstructCIR targets, or none where these carry them).
                await asyncio.to_thread(
                    collection.record_models,
                    batch.encoder,
                    batch.captioner,
                    batch.embedding_dim,
                    batch.instructcir,
                    _instructcir_dim(batch),
                )
            elif batch.collection and batch.collection != first.collection:
                raise InvalidArgument(
                    f"collection {batch.collection[:128]!r} differs from this stream's {first.collection!r}"
                )
            assert collection is not None
            manifest = await asyncio.to_thread(collection.manifest)
            for number, record in enumerate(batch.records, start=counts.received + 1):
                _check_imported(record, number, first.embedding_dim, manifest)
            counts.received += len(batch.records)
            stored = await asyncio.to_thread(collection.content_hashes, [r.id for r in batch.records])
            changed = [r for r in batch.records if stored.get(r.id) != r.content_sha256]
            await asyncio.to_thread(collection.upsert, changed)
            counts.unchanged += len(batch.records) - len(changed)
            counts.replaced += sum(r.id in stored for r in changed)
            counts.indexed += sum(r.id not in stored for r in changed)
        if first is None:
            raise InvalidArgument("the import stream is empty: send the collection, models and images")
        return counts

    async def _check_serving_encoder(self, batch: ImportBatch) -> None:
        """Features for a collection without vectors yet must come from the encoder serving now (when it
        answers: a bulk load may run before the model services are up; searches check again)."""
        try:
            info = await self._encoder_model_info(Budget.starting_now(5.0))
        except Unavailable:
            return
        serving = (info.model.name, info.model.revision, info.embedding_dim)
        imported = (batch.encoder.get("name"), batch.encoder.get("revision"), batch.embedding_dim)
        if serving != imported:
            raise FailedPrecondition(
                f"the features were made by encoder {imported[0]}@{str(imported[1])[:12]} "
                f"(dim {imported[2]}), but the encoder serving is {serving[0]}@{serving[1][:12]} "
                f"(dim {serving[2]}): searches could not compare their vectors; import features of the "
                "serving encoder"
            )

    # -- export and stats ------------------------------------------------------------------------------

    async def export(self, name: str, page_size: int) -> AsyncIterator[FeaturePage]:
        collection = await self.open(name)
        manifest = await asyncio.to_thread(collection.manifest)
        slots = await asyncio.to_thread(collection.caption_slot_count)
        # A page must fit one message: t_v, the caption mean, R caption slots and the InstructCIR target per
        # image, packed float32.
        per_image = (
            4 * (max(manifest.embedding_dim, 1) * (2 + slots) + manifest.instructcir_dim) + _EXPORT_ID_BYTES
        )
        limit = max(1, self.settings.max_message_bytes // per_image)
        if page_size > limit:
            raise InvalidArgument(
                f"page_size = {page_size} is over the limit of {limit} for this collection "
                f"(pages must fit {ENV_PREFIX}MAX_MESSAGE_BYTES = {self.settings.max_message_bytes})"
            )
        pages: Iterator[FeaturePage] = await asyncio.to_thread(
            collection.export, min(page_size or EXPORT_DEFAULT_PAGE_SIZE, limit)
        )
        while (page := await asyncio.to_thread(next, pages, None)) is not None:
            yield page

    def store_figures(self) -> Iterator[Metric]:
        """The gallery store's collection sizes and memory, for the metrics (read on the scrape's thread;
        the stores are thread-safe: the core calls them from worker threads too)."""
        if self._closed:
            return
        names = self.store.names()
        sizes = [((name,), self.store.open(name).size()) for name in names]
        yield metrics.COLLECTION_IMAGES.family(sizes)
        memory = getattr(self.store, "memory_bytes", None)  # the local store's search matrices
        if memory is not None:
            yield metrics.STORE_MEMORY.one(memory())

    def stats(self) -> ServiceStats:
        return ServiceStats(
            searches=self._searches,
            degraded_searches=self._degraded_searches,
            degradations_by_stage=dict(self._degradations),
            started_at=self._started_at,
        )


def _check_encoder(
    manifest: Manifest, info: EncoderInfo, strategy: StrategyName, options: Options, reference: Reference
) -> None:
    """FAILED_PRECONDITION unless the serving encoder made the collection's vectors and can run `strategy`."""
    if (info.model.name, info.model.revision) != (manifest.encoder["name"], manifest.encoder["revision"]):
        raise FailedPrecondition(
            f"collection {manifest.name!r} was indexed with encoder {manifest.encoder['name']}@"
            f"{manifest.encoder['revision'][:12]}, but the encoder serving now is {info.model.name}@"
            f"{info.model.revision[:12]}: the vectors do not compare; re-index or switch the encoder back"
        )
    why = _unavailable_reason(strategy, info)
    if why:
        raise FailedPrecondition(f"strategy {strategy.value} is not available: {why}")
    if strategy is StrategyName.INSTRUCTCIR:
        _check_instructcir(manifest, info, options, reference)


def _unavailable_reason(strategy: StrategyName, info: EncoderInfo) -> str:
    """Why the serving encoder cannot run `strategy` ("" when it can)."""
    if strategy in TEXTUAL_INVERSION and strategy.value not in info.mapping_networks:
        return f"the encoder has no mapping network named {strategy.value!r}"
    if strategy is StrategyName.CVSI and not info.has_default_mapping_network:
        return "the encoder has no default mapping network"
    if strategy is StrategyName.INSTRUCTCIR and info.instructcir is None:
        return (
            "the encoder serves no InstructCIR checkpoint (set its instructcir_checkpoint: "
            "CIR_ENCODER_INSTRUCTCIR_CHECKPOINT)"
        )
    return ""


def _checkpoint(identity: dict[str, str]) -> str:
    return f"{identity.get('name', '?')}@{identity.get('revision', '?')[:12]}"


def _check_instructcir(manifest: Manifest, info: EncoderInfo, options: Options, reference: Reference) -> None:
    """FAILED_PRECONDITION unless the collection keeps the target embeddings of the checkpoint the encoder
    serves (the query and target embeddings of two checkpoints do not compare), and the reference can reach
    the encoder; INVALID_ARGUMENT for the fused variant of a checkpoint trained without fusion."""
    served = info.instructcir
    assert served is not None  # _unavailable_reason refused the search otherwise
    serving = {"name": served.model.name, "revision": served.model.revision}
    if not manifest.instructcir:
        raise FailedPrecondition(
            f"collection {manifest.name!r} has no InstructCIR target embeddings: its images were indexed "
            "while the encoder served no InstructCIR checkpoint; ingest them again into a new collection "
            f"while the encoder serves {_checkpoint(serving)}, or import features with instructcir_target"
        )
    stored = (manifest.instructcir.get("name"), manifest.instructcir.get("revision"))
    if stored != (serving["name"], serving["revision"]):
        raise FailedPrecondition(
            f"collection {manifest.name!r} keeps the InstructCIR targets of checkpoint "
            f"{_checkpoint(manifest.instructcir)}, but the encoder serves {_checkpoint(serving)}: their "
            "embeddings do not compare; serve that checkpoint again (CIR_ENCODER_INSTRUCTCIR_CHECKPOINT) or "
            "re-ingest the images into a new collection"
        )
    if options.instructcir_variant is InstructCirVariant.FUSED and not served.has_fusion:
        raise InvalidArgument(
            f"options.instructcir_variant fused needs a checkpoint trained with the Eq. 3 fusion weight; "
            f"{_checkpoint(serving)} has none: use the plain variant"
        )
    if reference.stored is not None and not reference.stored.uri:
        raise FailedPrecondition(
            f"instructcir embeds the reference image with the text, and image {reference.stored.id[:128]!r} "
            "was stored without a uri the encoder could read it from: send the image as reference_image"
        )


def _instructcir_dim(batch: ImportBatch) -> int:
    """The dimension of the first message's InstructCIR targets (0 without them)."""
    for record in batch.records:
        if record.instructcir_target is not None:
            return int(record.instructcir_target.shape[-1])
    return 0


def _check_imported(record: ImageRecord, number: int, dim: int, manifest: Manifest) -> None:
    """An imported image must carry every stored feature, at the stream's dimension, and valid metadata; an
    InstructCIR target exactly when the collection keeps them, at their dimension."""
    label = f"image {number} ({record.id[:128]!r})"
    target = record.instructcir_target
    if manifest.instructcir and (target is None or target.shape != (manifest.instructcir_dim,)):
        shown = "none" if target is None else f"shape {target.shape}"
        raise InvalidArgument(
            f"{label}: instructcir_target has {shown}; collection {manifest.name!r} keeps InstructCIR "
            f"targets of dimension {manifest.instructcir_dim} for every image"
        )
    if not manifest.instructcir and target is not None:
        raise InvalidArgument(
            f"{label}: carries instructcir_target, but the import names no models.instructcir (the "
            "checkpoint that made it) and the collection keeps no InstructCIR targets"
        )
    if not record.id:
        raise InvalidArgument(f"image {number}: id is empty")
    if len(record.content_sha256) != 64 or any(c not in "0123456789abcdef" for c in record.content_sha256):
        raise InvalidArgument(f"{label}: content_sha256 must be 64 lowercase hex characters")
    for name, vector in (("image_raw", record.image_raw), ("caption_mean", record.caption_mean)):
        if vector.shape != (dim,):
            raise InvalidArgument(f"{label}: {name} has shape {vector.shape}, expected ({dim},)")
    if (
        record.caption_slots.ndim != 2
        or record.caption_slots.shape[1] != dim
        or not len(record.caption_slots)
    ):
        raise InvalidArgument(f"{label}: caption_slots must be 1..R vectors of dimension {dim}")
    typed_metadata(record.metadata, manifest.settings.filterable_fields)
