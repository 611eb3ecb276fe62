"""Every conversion between the retriever's protobuf messages and the core's types, in both directions.

The gRPC layer (`service.py`) and the evaluation tooling (a client of the public API) use these; the core
never sees a message. Both directions of the feature messages live here so that what the service sends and
what the evaluation reads back cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

import numpy as np

from cir.common.v1 import common_pb2
from cir.retriever.v1 import retriever_pb2
from cir_common.errors import InvalidArgument
from cir_common.proto_enums import CAPTION_SELECTION_TO_PROTO, EDIT_MODE_TO_PROTO, from_proto, to_proto
from cir_common.vectors import vector_from_proto, vector_to_proto
from cir_retriever.core import (
    CollectionInfo,
    ImportBatch,
    ImportCounts,
    IngestEvent,
    IngestItem,
    IngestProgress,
    SearchQuery,
    SearchResult,
    ServiceStats,
    StrategyAvailability,
)
from cir_retriever.fusion import ScoreFunction
from cir_retriever.gallery.types import (
    AnyOf,
    CollectionSettings,
    Condition,
    Equals,
    FeaturePage,
    FieldType,
    Filter,
    FilterableField,
    GalleryFeatures,
    ImageRecord,
    Range,
)
from cir_retriever.ingest import ItemOutcome, ItemStatus
from cir_retriever.options import VariantChoices, WeightOverrides, resolve_options
from cir_retriever.presets import Preset
from cir_retriever.strategies import InstructCirVariant, Options, QueryInputs, StrategyName, WeiMoCirVariant

PACKED = common_pb2.VECTOR_FORMAT_PACKED_F32

# --- enums ----------------------------------------------------------------------------------------------

# Each choice's proto value (`from_proto` reads them back). The API's edit mode and caption selection are the
# model services' own (cir.common.v1) enums: their tables are the clients'.
STRATEGY_TO_PROTO = to_proto(StrategyName, retriever_pb2.Strategy)
PRESET_TO_PROTO = to_proto(Preset, retriever_pb2.Preset)
SCORE_TO_PROTO = to_proto(ScoreFunction, retriever_pb2.ScoreFunction)
WEIMOCIR_TO_PROTO = to_proto(WeiMoCirVariant, retriever_pb2.WeiMoCirVariant)
INSTRUCTCIR_TO_PROTO = to_proto(InstructCirVariant, retriever_pb2.InstructCirVariant)
FIELD_TYPE_TO_PROTO = to_proto(FieldType, retriever_pb2.FieldType)
ITEM_STATUS_TO_PROTO = to_proto(ItemStatus, retriever_pb2.ItemStatus)


# --- search ---------------------------------------------------------------------------------------------


def weights_from_proto(weights: retriever_pb2.Weights) -> WeightOverrides:
    names = ("alpha", "beta", "gamma", "weimocir_a", "weimocir_b")
    return WeightOverrides(**{n: float(getattr(weights, n)) if weights.HasField(n) else None for n in names})


def choices_from_proto(options: retriever_pb2.StrategyOptions) -> VariantChoices:
    return VariantChoices(
        edit_mode=from_proto(options.edit_mode, EDIT_MODE_TO_PROTO, "options.edit_mode"),
        objects_caption_selection=from_proto(
            options.objects_caption_selection, CAPTION_SELECTION_TO_PROTO, "options.objects_caption_selection"
        ),
        score=from_proto(options.score_function, SCORE_TO_PROTO, "options.score_function"),
        weimocir_variant=from_proto(options.weimocir_variant, WEIMOCIR_TO_PROTO, "options.weimocir_variant"),
        edit_template=options.edit_template,
        instructcir_variant=from_proto(
            options.instructcir_variant, INSTRUCTCIR_TO_PROTO, "options.instructcir_variant"
        ),
    )


def resolve_options_from_proto(
    preset: Preset, weights: retriever_pb2.Weights, options: retriever_pb2.StrategyOptions
) -> Options:
    """`Options` as the service resolves them for these request fields (used by the evaluation client)."""
    return resolve_options(preset, weights_from_proto(weights), choices_from_proto(options))


def _filter_value(value: retriever_pb2.FilterValue, where: str) -> str | bool:
    kind = value.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument(f"{where}: a filter value is empty; set string_value or bool_value")
    return getattr(value, kind)


def filter_from_proto(message: retriever_pb2.SearchFilter) -> Filter:
    conditions = []
    for number, condition in enumerate(message.conditions, start=1):
        where = f"filter condition {number} ({condition.field[:64]!r})"
        test = condition.WhichOneof("test")
        if test == "equals":
            conditions.append(Condition(condition.field, Equals(_filter_value(condition.equals, where))))
        elif test == "any_of":
            values = tuple(_filter_value(v, where) for v in condition.any_of.values)
            conditions.append(Condition(condition.field, AnyOf(values)))
        elif test == "range":
            bounds = condition.range
            conditions.append(
                Condition(
                    condition.field,
                    Range(
                        **{
                            b: getattr(bounds, b) if bounds.HasField(b) else None
                            for b in ("gt", "gte", "lt", "lte")
                        }
                    ),
                )
            )
        else:
            raise InvalidArgument(f"{where}: the condition has no test; set equals, any_of or range")
    return Filter(tuple(conditions))


def search_query_from_proto(request: retriever_pb2.SearchRequest) -> SearchQuery:
    which = request.WhichOneof("reference")
    return SearchQuery(
        collection=request.collection,
        text=request.modification_text,
        reference_image=request.reference_image.data
        if which == "reference_image" and request.reference_image.WhichOneof("source") == "data"
        else None,
        reference_id=request.reference_id if which == "reference_id" else None,
        strategy=from_proto(request.strategy, STRATEGY_TO_PROTO, "strategy"),
        preset=from_proto(request.preset, PRESET_TO_PROTO, "preset"),
        weights=weights_from_proto(request.weights),
        choices=choices_from_proto(request.options),
        top_k=request.top_k,
        where=filter_from_proto(request.filter),
        return_features=request.return_features,
    )


def resolved_to_proto(result: SearchResult) -> retriever_pb2.ResolvedStrategy:
    options = result.options
    return retriever_pb2.ResolvedStrategy(
        strategy=STRATEGY_TO_PROTO[result.strategy],
        preset=PRESET_TO_PROTO[result.preset],
        alpha=options.alpha,
        beta=options.beta,
        gamma=options.gamma,
        weimocir_a=options.weimocir_a,
        weimocir_b=options.weimocir_b,
        edit_mode=EDIT_MODE_TO_PROTO[options.edit_mode],
        objects_caption_selection=CAPTION_SELECTION_TO_PROTO[options.objects_caption_selection],
        score_function=SCORE_TO_PROTO[options.score],
        weimocir_variant=WEIMOCIR_TO_PROTO[options.weimocir_variant],
        edit_template=options.edit_template,
        caption_features_renormalized=options.caption_features_renormalized,
        instructcir_variant=INSTRUCTCIR_TO_PROTO[options.instructcir_variant],
    )


def search_response_to_proto(result: SearchResult, explain: bool) -> retriever_pb2.SearchResponse:
    trace = result.trace
    return retriever_pb2.SearchResponse(
        hits=[
            retriever_pb2.SearchHit(id=hit.id, score=hit.score, uri=hit.uri, metadata=hit.metadata)
            for hit in result.hits
        ],
        resolved=resolved_to_proto(result),
        explanation=retriever_pb2.Explanation(
            captions=trace.captions,
            edited_captions=trace.edited_captions,
            added_objects=trace.added_objects,
            fine_grained_prompt=trace.prompt,
            edit_outcomes=trace.edit_outcomes,
            objects_outcome=trace.objects_outcome,
            details=trace.details,
        )
        if explain
        else None,
        degradations=[
            retriever_pb2.Degradation(stage=d.stage, reason=d.reason, effect=d.effect)
            for d in trace.degradations
        ],
        timings=trace.timer.as_protos(),
        collection_size=result.collection_size,
        features=query_features_to_proto(result.features) if result.features is not None else None,
    )


# --- collections and strategies -------------------------------------------------------------------------


def collection_settings_from_proto(message: retriever_pb2.CollectionSettings) -> CollectionSettings:
    """Empty fields stay empty (the core fills the server's defaults); CollectionSettings parses the choices
    (INVALID_ARGUMENT for an unknown one)."""
    fields = []
    for declared in message.filterable_fields:
        where = f"filterable field {declared.name[:64]!r} type"
        kind = from_proto(declared.type, FIELD_TYPE_TO_PROTO, where)
        if kind is None:
            raise InvalidArgument(
                f"filterable field {declared.name[:64]!r} has no type: string, int, float or bool"
            )
        fields.append(FilterableField(declared.name, kind))
    return CollectionSettings(
        num_captions=message.num_captions,
        decoding_variant=message.decoding_variant,
        preprocessing=message.preprocessing,
        filterable_fields=tuple(fields),
        ann=message.ann,
    )


def collection_settings_to_proto(settings: CollectionSettings) -> retriever_pb2.CollectionSettings:
    return retriever_pb2.CollectionSettings(
        num_captions=settings.num_captions,
        decoding_variant=_choice_text(settings.decoding_variant),
        preprocessing=_choice_text(settings.preprocessing),
        filterable_fields=[
            retriever_pb2.FilterableField(name=f.name, type=FIELD_TYPE_TO_PROTO[f.type])
            for f in settings.filterable_fields
        ],
        ann=settings.ann.value,
    )


def _choice_text(choice: StrEnum | None) -> str:
    """A choice in a proto string field ("" = none: the server's default)."""
    return "" if choice is None else choice.value


def collection_info_to_proto(info: CollectionInfo) -> retriever_pb2.GetCollectionInfoResponse:
    manifest = info.manifest
    return retriever_pb2.GetCollectionInfoResponse(
        collection=manifest.name,
        size=info.size,
        embedding_dim=manifest.embedding_dim,
        settings=collection_settings_to_proto(manifest.settings),
        models=retriever_pb2.ModelsUsed(
            encoder=common_pb2.ModelIdentity(**manifest.encoder),
            captioner=common_pb2.ModelIdentity(**manifest.captioner),
            instructcir=common_pb2.ModelIdentity(**manifest.instructcir) if manifest.instructcir else None,
        ),
        strategies_available=[STRATEGY_TO_PROTO[s] for s in info.strategies_available],
        created_at=manifest.created_at,
        updated_at=manifest.updated_at,
    )


def strategies_to_proto(rows: list[StrategyAvailability]) -> retriever_pb2.ListStrategiesResponse:
    presets = [PRESET_TO_PROTO[p] for p in Preset]
    return retriever_pb2.ListStrategiesResponse(
        strategies=[
            retriever_pb2.StrategyInfo(
                strategy=STRATEGY_TO_PROTO[row.strategy],
                name=row.strategy.value,
                description=row.description,
                available=row.available,
                unavailable_reason=row.unavailable_reason,
                presets=presets,
                uses_captioner=row.uses_captioner,
                uses_reasoner=row.uses_reasoner,
            )
            for row in rows
        ]
    )


def stats_to_proto(stats: ServiceStats) -> retriever_pb2.GetServiceStatsResponse:
    return retriever_pb2.GetServiceStatsResponse(
        searches=stats.searches,
        degraded_searches=stats.degraded_searches,
        degradations_by_stage=stats.degradations_by_stage,
        started_at=stats.started_at,
    )


# --- ingestion ------------------------------------------------------------------------------------------


def ingest_item_from_proto(request: retriever_pb2.IngestImagesRequest) -> IngestItem:
    image = request.image
    return IngestItem(
        collection=request.collection,
        id=image.id,
        data=image.image.data if image.image.WhichOneof("source") == "data" else None,
        uri=image.uri,
        metadata=dict(image.metadata),
    )


def ingest_event_to_proto(event: IngestEvent) -> retriever_pb2.IngestImagesResponse:
    if isinstance(event, ItemOutcome):
        return retriever_pb2.IngestImagesResponse(
            item=retriever_pb2.IngestItemResult(
                id=event.id,
                status=ITEM_STATUS_TO_PROTO[event.status],
                error_code=event.error_code,
                error_message=event.error_message,
            )
        )
    assert isinstance(event, IngestProgress)
    return retriever_pb2.IngestImagesResponse(
        progress=retriever_pb2.IngestProgress(
            received=event.received,
            indexed=event.indexed,
            unchanged=event.unchanged,
            replaced=event.replaced,
            failed=event.failed,
            committed=event.committed,
        )
    )


def _one(vec: np.ndarray | None) -> common_pb2.Vector | None:
    return None if vec is None else vector_to_proto(vec, PACKED)


def _rows(mat: np.ndarray | None) -> list[common_pb2.Vector]:
    return [] if mat is None else [vector_to_proto(row, PACKED) for row in mat]


def _read_one(msg: object, name: str) -> np.ndarray | None:
    return vector_from_proto(getattr(msg, name)) if msg.HasField(name) else None  # type: ignore[attr-defined]


def _read_rows(vectors: Sequence[common_pb2.Vector]) -> np.ndarray | None:
    return np.stack([vector_from_proto(v) for v in vectors]) if vectors else None


def query_features_to_proto(inputs: QueryInputs) -> retriever_pb2.QueryFeatures:
    return retriever_pb2.QueryFeatures(
        reference_image=_one(inputs.image),
        modification_text=_one(inputs.text),
        captioning_text=_one(inputs.captioning_text),
        pseudo_token_prompt=_one(inputs.pseudo_prompt),
        edited_captions=_rows(inputs.edits),
        reference_caption_slots=_rows(inputs.caption_slots),
        reference_captions=_rows(inputs.reference_captions),
        instructcir_query=_one(inputs.instructcir_query),
    )


def query_features_from_proto(msg: retriever_pb2.QueryFeatures) -> QueryInputs:
    image = _read_one(msg, "reference_image")
    if image is None:
        raise ValueError("QueryFeatures.reference_image is missing: was return_features set on the request?")
    return QueryInputs(
        image=image,
        text=_read_one(msg, "modification_text"),
        captioning_text=_read_one(msg, "captioning_text"),
        pseudo_prompt=_read_one(msg, "pseudo_token_prompt"),
        edits=_read_rows(msg.edited_captions),
        caption_slots=_read_rows(msg.reference_caption_slots),
        reference_captions=_read_rows(msg.reference_captions),
        instructcir_query=_read_one(msg, "instructcir_query"),
    )


def gallery_page_to_proto(page: FeaturePage) -> retriever_pb2.ExportGalleryFeaturesResponse:
    features = page.features
    targets = features.instructcir_target
    return retriever_pb2.ExportGalleryFeaturesResponse(
        images=[
            retriever_pb2.GalleryImageFeatures(
                id=page.ids[r],
                uri=page.uris[r],
                image=vector_to_proto(features.t_v[r], PACKED),
                caption_mean=vector_to_proto(features.caption_mean[r], PACKED),
                caption_slots=_rows(features.caption_slots[r]),
                image_raw=_one(page.image_raw[r]) if page.image_raw is not None else None,
                captions=page.captions[r] if page.captions else [],
                content_sha256=page.content_sha256[r] if page.content_sha256 else "",
                metadata=page.metadata[r] if page.metadata else {},
                instructcir_target=_one(targets[r]) if targets is not None else None,
            )
            for r in range(len(page.ids))
        ],
        total=page.total,
    )


def gallery_images_from_proto(
    images: Sequence[retriever_pb2.GalleryImageFeatures],
) -> tuple[list[str], GalleryFeatures]:
    """Ids and the GalleryFeatures matrices of exported images (in the order given); the InstructCIR targets
    when every image carries one."""
    if not images:
        raise ValueError("no gallery images to read")
    with_targets = all(m.HasField("instructcir_target") for m in images)
    return [m.id for m in images], GalleryFeatures(
        t_v=np.stack([vector_from_proto(m.image) for m in images]),
        caption_mean=np.stack([vector_from_proto(m.caption_mean) for m in images]),
        caption_slots=np.stack([np.stack([vector_from_proto(v) for v in m.caption_slots]) for m in images]),
        instructcir_target=np.stack([vector_from_proto(m.instructcir_target) for m in images])
        if with_targets
        else None,
    )


# --- bulk import ----------------------------------------------------------------------------------------


def _identity(model: common_pb2.ModelIdentity) -> dict[str, str]:
    return {"name": model.name, "revision": model.revision, "family": model.family}


def import_batch_from_proto(request: retriever_pb2.ImportGalleryFeaturesRequest) -> ImportBatch:
    records = []
    for number, image in enumerate(request.images, start=1):
        label = f"images[{number - 1}] ({image.id[:128]!r})"
        if not image.HasField("image_raw") or not image.HasField("caption_mean") or not image.caption_slots:
            raise InvalidArgument(f"{label}: image_raw, caption_mean and caption_slots are required")
        records.append(
            ImageRecord(
                id=image.id,
                uri=image.uri,
                metadata=dict(image.metadata),
                content_sha256=image.content_sha256,
                captions=list(image.captions),
                image_raw=vector_from_proto(image.image_raw, label=f"{label}.image_raw"),
                caption_mean=vector_from_proto(image.caption_mean, label=f"{label}.caption_mean"),
                caption_slots=np.stack(
                    [vector_from_proto(v, label=f"{label}.caption_slots") for v in image.caption_slots]
                ),
                instructcir_target=vector_from_proto(
                    image.instructcir_target, label=f"{label}.instructcir_target"
                )
                if image.HasField("instructcir_target")
                else None,
            )
        )
    return ImportBatch(
        collection=request.collection,
        encoder=_identity(request.models.encoder),
        captioner=_identity(request.models.captioner),
        embedding_dim=request.embedding_dim,
        records=records,
        instructcir=_identity(request.models.instructcir) if request.models.instructcir.name else {},
    )


def import_counts_to_proto(counts: ImportCounts) -> retriever_pb2.ImportGalleryFeaturesResponse:
    return retriever_pb2.ImportGalleryFeaturesResponse(
        received=counts.received, indexed=counts.indexed, unchanged=counts.unchanged, replaced=counts.replaced
    )
