"""Typed clients of the three model services: numpy and dataclasses in, numpy and dataclasses out.

Every call gets a deadline from the request's `Budget` (optionally capped by a stage budget), carries the
request id, sends and reads packed float32 vectors, and turns a downstream failure into one
`DownstreamError` here, in one place, for the query pipeline and ingestion alike. Nothing above this
module sees a stub or a generated message of the model services.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from cir.captioner.v1 import captioner_pb2, captioner_pb2_grpc
from cir.common.v1 import common_pb2
from cir.encoder.v1 import encoder_pb2, encoder_pb2_grpc
from cir.reasoner.v1 import reasoner_pb2, reasoner_pb2_grpc
from cir_common.channels import call_downstream, open_channel
from cir_common.errors import CirError, DeadlineExceeded
from cir_common.proto_enums import (
    CAPTION_SELECTION_TO_PROTO,
    DECODING_TO_PROTO,
    EDIT_MODE_TO_PROTO,
    PREPROCESSING_TO_PROTO,
)
from cir_common.request_context import RETRY_AFTER_HEADER
from cir_common.tls import TlsFiles
from cir_common.vectors import vector_from_proto, vector_to_proto
from cir_common.vocabulary import (
    SERVICES,
    CaptionSelection,
    DecodingVariant,
    EditMode,
    Preprocessing,
    Service,
)

PACKED = common_pb2.VECTOR_FORMAT_PACKED_F32


@dataclass(frozen=True)
class Budget:
    """The time left for one request, from the caller's deadline (or the server's default)."""

    deadline: float  # time.monotonic() value

    @classmethod
    def starting_now(cls, seconds: float) -> Budget:
        return cls(time.monotonic() + seconds)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def timeout(self, stage_budget_s: float | None = None) -> float:
        """Seconds for a downstream call; raises DEADLINE_EXCEEDED when nothing is left."""
        left = self.remaining()
        if left <= 0:
            raise DeadlineExceeded("the request's deadline passed before all stages ran")
        return left if stage_budget_s is None else min(left, stage_budget_s)


class DownstreamError(CirError):
    """A model service's call failed. `code` is what the retriever's caller sees; `downstream_code` is the
    model service's own status name (an ingestion item failure reports it)."""

    def __init__(
        self,
        service: Service,
        downstream: grpc.StatusCode,
        details: str,
        budget_spent: bool,
        retry_after_ms: int | None = None,
    ) -> None:
        self.service = service
        self.downstream_code = downstream.name
        self.details = details
        if budget_spent or downstream == grpc.StatusCode.DEADLINE_EXCEEDED:
            code, message = grpc.StatusCode.DEADLINE_EXCEEDED, f"the {service} did not answer in time"
        elif downstream == grpc.StatusCode.UNAVAILABLE:
            code, message = downstream, f"the {service} service is unavailable: {details}"
        elif downstream == grpc.StatusCode.RESOURCE_EXHAUSTED:
            code, message = downstream, f"the {service} is overloaded: {details}"
        else:
            # Anything else is a request the retriever itself built: not the caller's fault.
            code = grpc.StatusCode.INTERNAL
            message = f"the {service} refused a request of the retriever ({downstream.name}): {details}"
        super().__init__(message)
        self.code = code
        # A busy model service's retry hint reaches the retriever's caller unchanged.
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            self.retry_after_ms = retry_after_ms

    @property
    def refused_input(self) -> bool:
        """The model service found an input invalid (e.g. an image it cannot decode)."""
        return self.downstream_code == "INVALID_ARGUMENT"


@dataclass(frozen=True)
class ModelIdentity:
    name: str
    revision: str
    family: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "revision": self.revision, "family": self.family}


def _identity(model: common_pb2.ModelIdentity) -> ModelIdentity:
    return ModelIdentity(model.name, model.revision, model.family)


@dataclass(frozen=True)
class ImageEmbeddings:
    vectors: np.ndarray  # (n, d) raw
    model: ModelIdentity


@dataclass(frozen=True)
class InstructCirInfo:
    """The InstructCIR checkpoint an encoder serves."""

    model: ModelIdentity
    embedding_dim: int
    has_fusion: bool  # the checkpoint holds the Eq. 3 weight: queries may ask for the fused variant
    fusion_weight: float


@dataclass(frozen=True)
class EncoderInfo:
    model: ModelIdentity
    embedding_dim: int
    mapping_networks: tuple[str, ...]
    has_default_mapping_network: bool
    instructcir: InstructCirInfo | None = None  # None: the encoder serves no InstructCIR checkpoint


@dataclass(frozen=True)
class InstructCirQueryEmbedding:
    vector: np.ndarray  # (d_i,) as the encoder returned it (raw, or fused by Eq. 3)
    model: ModelIdentity  # the checkpoint
    fused: bool


@dataclass(frozen=True)
class Captions:
    per_image: list[list[str]]
    model: ModelIdentity


@dataclass(frozen=True)
class ReasonedText:
    text: str
    parsed: bool
    fallback_reason: str  # why the reasoner fell back ("" when parsed)

    @property
    def outcome(self) -> str:
        return "parsed" if self.parsed else f"fallback: {self.fallback_reason}"


def _reasoned(item: reasoner_pb2.ReasonedText) -> ReasonedText:
    parsed = item.outcome == reasoner_pb2.PARSE_OUTCOME_PARSED
    reason = "" if parsed else item.fallback_reason or reasoner_pb2.ParseOutcome.Name(item.outcome)
    return ReasonedText(item.text, parsed, reason)


def _retry_after_ms(error: grpc.aio.AioRpcError) -> int | None:
    for key, value in error.trailing_metadata() or ():
        if key == RETRY_AFTER_HEADER:
            try:
                return max(0, int(value))
            except ValueError:
                return None
    return None


class _Service:
    def __init__(self, name: Service, channel: grpc.aio.Channel, stub: object) -> None:
        self.name = name
        self._channel = channel
        self._stub = stub
        self._grpc_name = SERVICES[name].grpc_name

    async def _call(
        self, method: str, request: Any, budget: Budget, stage_budget_s: float | None = None
    ) -> Any:
        """`method` of the service's stub with `request`, within the budget (capped by `stage_budget_s`)."""
        rpc = getattr(self._stub, method)
        try:
            full_method = f"/{self._grpc_name}/{method}"
            return await call_downstream(full_method, rpc, request, budget.timeout(stage_budget_s))
        except grpc.aio.AioRpcError as error:
            raise DownstreamError(
                self.name,
                error.code(),
                error.details() or "",
                budget.remaining() <= 0,
                _retry_after_ms(error),
            ) from error


class EncoderClient(_Service):
    def __init__(self, channel: grpc.aio.Channel) -> None:
        super().__init__(Service.ENCODER, channel, encoder_pb2_grpc.EncoderServiceStub(channel))

    async def embed_images(
        self, images: Sequence[bytes], preprocessing: Preprocessing, budget: Budget
    ) -> ImageEmbeddings:
        request = encoder_pb2.EmbedImagesRequest(
            images=[common_pb2.Image(data=data) for data in images],
            preprocessing=PREPROCESSING_TO_PROTO[preprocessing],
            vector_format=PACKED,
        )
        response = await self._call("EmbedImages", request, budget)
        vectors = np.stack([vector_from_proto(e) for e in response.embeddings])
        return ImageEmbeddings(vectors, _identity(response.model))

    async def embed_texts(self, texts: Sequence[str], budget: Budget) -> np.ndarray:
        request = encoder_pb2.EmbedTextsRequest(texts=list(texts), vector_format=PACKED)
        response = await self._call("EmbedTexts", request, budget)
        return np.stack([vector_from_proto(e.embedding) for e in response.embeddings])

    async def embed_composed_prompt(
        self, prompt: str, reference: np.ndarray, mapping_network: str, budget: Budget
    ) -> np.ndarray:
        """One prompt with `$` replaced by the mapping network's token for the raw `reference` embedding."""
        request = encoder_pb2.EmbedComposedPromptsRequest(
            prompts=[
                encoder_pb2.ComposedPrompt(
                    text=prompt, reference_embedding=vector_to_proto(reference, PACKED)
                )
            ],
            mapping_network=mapping_network,
            vector_format=PACKED,
        )
        response = await self._call("EmbedComposedPrompts", request, budget)
        return vector_from_proto(response.embeddings[0].embedding)

    async def embed_instructcir_query(
        self,
        reference: bytes | str,
        text: str,
        fused: bool,
        preprocessing: Preprocessing,
        budget: Budget,
        stage_budget_s: float | None = None,
    ) -> InstructCirQueryEmbedding:
        """One (reference image, text) query; `reference` is the image's bytes, or (str) a file URI the
        encoder reads under its image_uri_roots."""
        image = (
            common_pb2.Image(data=reference)
            if isinstance(reference, bytes)
            else common_pb2.Image(uri=reference)
        )
        request = encoder_pb2.EmbedInstructCirQueriesRequest(
            queries=[encoder_pb2.InstructCirQuery(reference_image=image, text=text)],
            fused=fused,
            preprocessing=PREPROCESSING_TO_PROTO[preprocessing],
            vector_format=PACKED,
        )
        response = await self._call("EmbedInstructCirQueries", request, budget, stage_budget_s)
        return InstructCirQueryEmbedding(
            vector_from_proto(response.embeddings[0]), _identity(response.model), response.fused
        )

    async def embed_instructcir_targets(
        self, images: Sequence[bytes], preprocessing: Preprocessing, budget: Budget
    ) -> ImageEmbeddings:
        """Gallery images through the checkpoint's target encoder, L2-normalised (what a collection keeps)."""
        request = encoder_pb2.EmbedInstructCirTargetsRequest(
            images=[common_pb2.Image(data=data) for data in images],
            preprocessing=PREPROCESSING_TO_PROTO[preprocessing],
            normalize=True,
            vector_format=PACKED,
        )
        response = await self._call("EmbedInstructCirTargets", request, budget)
        vectors = np.stack([vector_from_proto(e) for e in response.embeddings])
        return ImageEmbeddings(vectors, _identity(response.model))

    async def model_info(self, budget: Budget) -> EncoderInfo:
        info = await self._call("GetModelInfo", encoder_pb2.GetModelInfoRequest(), budget)
        instructcir = None
        if info.HasField("instructcir") and info.instructcir.model.name:
            instructcir = InstructCirInfo(
                model=_identity(info.instructcir.model),
                embedding_dim=info.instructcir.embedding_dim,
                has_fusion=info.instructcir.has_fusion,
                fusion_weight=info.instructcir.fusion_weight,
            )
        return EncoderInfo(
            model=_identity(info.model),
            embedding_dim=info.embedding_dim,
            mapping_networks=tuple(n.name for n in info.mapping_networks),
            has_default_mapping_network=any(n.is_default for n in info.mapping_networks),
            instructcir=instructcir,
        )


class CaptionerClient(_Service):
    def __init__(self, channel: grpc.aio.Channel) -> None:
        super().__init__(Service.CAPTIONER, channel, captioner_pb2_grpc.CaptionerServiceStub(channel))

    async def captions(
        self,
        images: Sequence[bytes],
        num_captions: int,
        decoding_variant: DecodingVariant,
        budget: Budget,
        stage_budget_s: float | None = None,
    ) -> Captions:
        request = captioner_pb2.GenerateCaptionsRequest(
            images=[common_pb2.Image(data=data) for data in images],
            num_captions=num_captions,
            decoding=captioner_pb2.DecodingParameters(variant=DECODING_TO_PROTO[decoding_variant]),
        )
        response = await self._call("GenerateCaptions", request, budget, stage_budget_s)
        return Captions([list(r.captions) for r in response.results], _identity(response.model))


class ReasonerClient(_Service):
    def __init__(self, channel: grpc.aio.Channel) -> None:
        super().__init__(Service.REASONER, channel, reasoner_pb2_grpc.ReasonerServiceStub(channel))

    async def edit_captions(
        self,
        captions: Sequence[str],
        instruction: str,
        mode: EditMode,
        template: str,
        budget: Budget,
        stage_budget_s: float | None = None,
    ) -> list[ReasonedText]:
        request = reasoner_pb2.EditCaptionsRequest(
            captions=list(captions), instruction=instruction, mode=EDIT_MODE_TO_PROTO[mode], template=template
        )
        return [
            _reasoned(e) for e in (await self._call("EditCaptions", request, budget, stage_budget_s)).edits
        ]

    async def added_objects(
        self,
        captions: Sequence[str],
        instruction: str,
        caption_selection: CaptionSelection,
        budget: Budget,
        stage_budget_s: float | None = None,
    ) -> ReasonedText:
        request = reasoner_pb2.InferAddedObjectsRequest(
            captions=list(captions),
            instruction=instruction,
            caption_selection=CAPTION_SELECTION_TO_PROTO[caption_selection],
        )
        return _reasoned((await self._call("InferAddedObjects", request, budget, stage_budget_s)).objects)


class ModelServices:
    """The three clients, on channels kept for the life of the retriever."""

    def __init__(
        self,
        encoder: str,
        captioner: str,
        reasoner: str,
        max_message_bytes: int,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        tls: TlsFiles | None = None,
    ) -> None:
        # `interceptors` see every model call (tracing, or a test counting what a search called). `tls`: the
        # channels run TLS (mTLS with a certificate), following the files when they change.
        self._channels = [
            open_channel(a, max_message_bytes, interceptors, tls) for a in (encoder, captioner, reasoner)
        ]
        self.encoder = EncoderClient(self._channels[0])
        self.captioner = CaptionerClient(self._channels[1])
        self.reasoner = ReasonerClient(self._channels[2])

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
