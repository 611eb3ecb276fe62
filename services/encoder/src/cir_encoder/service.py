"""EncoderService: converts each request for the core (`Encoder`) and its answer back; nothing else.

Errors raised by the core are `cir_common.errors` types; the server's interceptor maps them to status codes.
"""

from __future__ import annotations

import numpy as np

from cir.common.v1 import common_pb2
from cir.encoder.v1 import encoder_pb2, encoder_pb2_grpc
from cir_common.cache import Cache
from cir_common.proto_enums import PREPROCESSING_TO_PROTO
from cir_common.service_kit import image_reader
from cir_common.vectors import vector_from_proto, vector_to_proto
from cir_encoder.core import (
    ComposedPrompt,
    Encoder,
    InstructCirInfo,
    InstructCirQuery,
    ModelIdentity,
    ReadEmbedding,
)
from cir_encoder.settings import EncoderSettings

_PREPROCESSING_FROM_PROTO = {value: name for name, value in PREPROCESSING_TO_PROTO.items()}


def _preprocessing_from_proto(value: int) -> str | None:
    # An unknown number passes through as text, for the core to refuse by name with its own message.
    if value == encoder_pb2.PREPROCESSING_UNSPECIFIED:
        return None
    return _PREPROCESSING_FROM_PROTO.get(value, str(value))


def _identity_to_proto(identity: ModelIdentity) -> common_pb2.ModelIdentity:
    return common_pb2.ModelIdentity(
        name=identity.name, revision=identity.revision, family=identity.family, details=identity.details
    )


def _vectors_to_proto(matrix: np.ndarray, fmt: int) -> list[common_pb2.Vector]:
    return [vector_to_proto(row, fmt) for row in matrix]


def _embedding_reader(vector: common_pb2.Vector) -> ReadEmbedding:
    return lambda dim, label: vector_from_proto(vector, expected_dim=dim, label=label)


def _instructcir_info_to_proto(info: InstructCirInfo | None) -> encoder_pb2.InstructCirInfo | None:
    if info is None:
        return None
    return encoder_pb2.InstructCirInfo(
        model=_identity_to_proto(info.model),
        embedding_dim=info.embedding_dim,
        has_fusion=info.has_fusion,
        fusion_weight=info.fusion_weight or 0.0,
    )


class EncoderServicer(encoder_pb2_grpc.EncoderServiceServicer):
    def __init__(self, settings: EncoderSettings, cache: Cache | None = None) -> None:
        self.core = Encoder(settings, cache)

    async def load(self) -> None:
        await self.core.load()

    async def close(self) -> None:
        await self.core.close()

    def _prompt(self, prompt: encoder_pb2.ComposedPrompt) -> ComposedPrompt:
        reference = prompt.WhichOneof("reference")
        if reference == "reference_embedding":
            return ComposedPrompt(
                prompt.text, reference_embedding=_embedding_reader(prompt.reference_embedding)
            )
        if reference == "reference_image":
            reader = image_reader(prompt.reference_image, self.core.settings)
            return ComposedPrompt(prompt.text, reference_image=reader)
        return ComposedPrompt(prompt.text)

    async def EmbedImages(
        self, request: encoder_pb2.EmbedImagesRequest, context: object
    ) -> encoder_pb2.EmbedImagesResponse:
        result = await self.core.embed_images(
            [image_reader(image, self.core.settings) for image in request.images],
            _preprocessing_from_proto(request.preprocessing),
            normalize=request.normalize,
            bypass_cache=request.bypass_cache,
        )
        return encoder_pb2.EmbedImagesResponse(
            embeddings=_vectors_to_proto(result.vectors, request.vector_format),
            model=_identity_to_proto(result.model),
            preprocessing=PREPROCESSING_TO_PROTO[result.preprocessing],
            normalized=result.normalized,
            cache_hits=result.cache_hits,
            timings=result.timer.as_protos(),
        )

    async def EmbedTexts(
        self, request: encoder_pb2.EmbedTextsRequest, context: object
    ) -> encoder_pb2.EmbedTextsResponse:
        result = await self.core.embed_texts(
            list(request.texts), normalize=request.normalize, bypass_cache=request.bypass_cache
        )
        return encoder_pb2.EmbedTextsResponse(
            embeddings=[
                encoder_pb2.TextEmbedding(
                    embedding=vector_to_proto(vector, request.vector_format),
                    truncated=truncated,
                    token_count=count,
                    cache_hit=hit,
                )
                for vector, truncated, count, hit in zip(
                    result.vectors, result.truncated, result.token_counts, result.cache_hits, strict=True
                )
            ],
            model=_identity_to_proto(result.model),
            normalized=result.normalized,
            timings=result.timer.as_protos(),
        )

    async def EmbedComposedPrompts(
        self, request: encoder_pb2.EmbedComposedPromptsRequest, context: object
    ) -> encoder_pb2.EmbedComposedPromptsResponse:
        result = await self.core.embed_composed_prompts(
            [self._prompt(prompt) for prompt in request.prompts],
            request.mapping_network,
            _preprocessing_from_proto(request.preprocessing),
            normalize=request.normalize,
        )
        fmt = request.vector_format
        return encoder_pb2.EmbedComposedPromptsResponse(
            embeddings=[
                encoder_pb2.TextEmbedding(embedding=vector_to_proto(v, fmt), truncated=t, token_count=c)
                for v, t, c in zip(result.vectors, result.truncated, result.token_counts, strict=True)
            ],
            pseudo_tokens=_vectors_to_proto(result.pseudo_tokens, fmt)
            if request.return_pseudo_tokens
            else [],
            model=_identity_to_proto(result.model),
            mapping_network=_identity_to_proto(result.mapping_network),
            normalized=result.normalized,
            timings=result.timer.as_protos(),
        )

    def _instructcir_query(self, query: encoder_pb2.InstructCirQuery) -> InstructCirQuery:
        reader = (
            image_reader(query.reference_image, self.core.settings)
            if query.HasField("reference_image")
            else None
        )
        return InstructCirQuery(query.text, reference_image=reader)

    async def EmbedInstructCirQueries(
        self, request: encoder_pb2.EmbedInstructCirQueriesRequest, context: object
    ) -> encoder_pb2.EmbedInstructCirQueriesResponse:
        result = await self.core.embed_instructcir_queries(
            [self._instructcir_query(query) for query in request.queries],
            _preprocessing_from_proto(request.preprocessing),
            fused=request.fused,
            normalize=request.normalize,
        )
        return encoder_pb2.EmbedInstructCirQueriesResponse(
            embeddings=_vectors_to_proto(result.vectors, request.vector_format),
            model=_identity_to_proto(result.model),
            normalized=result.normalized,
            fused=result.fused,
            truncated=result.truncated,
            timings=result.timer.as_protos(),
        )

    async def EmbedInstructCirTargets(
        self, request: encoder_pb2.EmbedInstructCirTargetsRequest, context: object
    ) -> encoder_pb2.EmbedInstructCirTargetsResponse:
        result = await self.core.embed_instructcir_targets(
            [image_reader(image, self.core.settings) for image in request.images],
            _preprocessing_from_proto(request.preprocessing),
            normalize=request.normalize,
            bypass_cache=request.bypass_cache,
        )
        return encoder_pb2.EmbedInstructCirTargetsResponse(
            embeddings=_vectors_to_proto(result.vectors, request.vector_format),
            model=_identity_to_proto(result.model),
            normalized=result.normalized,
            cache_hits=result.cache_hits,
            timings=result.timer.as_protos(),
        )

    async def GetModelInfo(
        self, request: encoder_pb2.GetModelInfoRequest, context: object
    ) -> encoder_pb2.GetModelInfoResponse:
        info = self.core.model_info()
        return encoder_pb2.GetModelInfoResponse(
            model=_identity_to_proto(info.model),
            embedding_dim=info.embedding_dim,
            text_width=info.text_width,
            context_length=info.context_length,
            placeholder_token_id=info.placeholder_token_id,
            default_preprocessing=PREPROCESSING_TO_PROTO[info.default_preprocessing],
            target_pad_ratio=info.target_pad_ratio,
            image_size=info.image_size,
            mapping_networks=[
                encoder_pb2.MappingNetworkInfo(
                    name=network.name,
                    model=_identity_to_proto(network.model),
                    input_dim=network.input_dim,
                    output_dim=network.output_dim,
                    is_default=network.is_default,
                )
                for network in info.mapping_networks
            ],
            device=info.device,
            dtype=info.dtype,
            max_batch_items=info.max_batch_items,
            normalized_by_default=info.normalized_by_default,
            instructcir=_instructcir_info_to_proto(info.instructcir),
        )
