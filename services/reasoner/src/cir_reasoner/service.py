"""ReasonerService: converts each request for the core (`Reasoner`) and its answer back; nothing else.

Errors raised by the core are `cir_common.errors` types; the server's interceptor maps them to status codes.
"""

from __future__ import annotations

from typing import Any, TypeVar

from cir.common.v1 import common_pb2
from cir.reasoner.v1 import reasoner_pb2, reasoner_pb2_grpc
from cir_common.cache import Cache
from cir_common.proto_enums import CAPTION_SELECTION_TO_PROTO, EDIT_MODE_TO_PROTO, from_proto, to_proto
from cir_reasoner.core import (
    DifferenceQuery,
    Query,
    ReasonedAnswer,
    Reasoner,
    Reasoning,
    SamplingRequest,
)
from cir_reasoner.generation import BackendModel, LLMBackend
from cir_reasoner.parsing import Outcome
from cir_reasoner.settings import ReasonerSettings
from cir_reasoner.templates import TemplateTask

_T = TypeVar("_T")

_OUTCOMES = {
    Outcome.PARSED: reasoner_pb2.PARSE_OUTCOME_PARSED,
    Outcome.FALLBACK_EMPTY: reasoner_pb2.PARSE_OUTCOME_FALLBACK_EMPTY,
    Outcome.FALLBACK_ERROR: reasoner_pb2.PARSE_OUTCOME_FALLBACK_ERROR,
}
_TASKS = to_proto(TemplateTask, reasoner_pb2.TemplateTask)


class ReasonerServicer(reasoner_pb2_grpc.ReasonerServiceServicer):
    def __init__(
        self, settings: ReasonerSettings, cache: Cache | None = None, backend: LLMBackend | None = None
    ) -> None:
        self.core = Reasoner(settings, cache, backend)

    async def load(self) -> None:
        await self.core.load()

    async def close(self) -> None:
        await self.core.close()

    def _query(
        self, request: reasoner_pb2.EditCaptionsRequest | reasoner_pb2.InferAddedObjectsRequest, context: Any
    ) -> Query:
        # The captions and instruction are checked here, before the caller converts its enum: a request
        # wrong in both is told about its captions or instruction first.
        return Query(
            inputs=self.core.check_inputs(request.captions, request.instruction),
            template=request.template,
            sampling=_sampling(request.sampling),
            bypass_cache=request.bypass_cache,
            time_remaining_s=_time_remaining(context),
        )

    async def EditCaptions(
        self, request: reasoner_pb2.EditCaptionsRequest, context: Any
    ) -> reasoner_pb2.EditCaptionsResponse:
        query = self._query(request, context)
        result = await self.core.edit_captions(query, from_proto(request.mode, EDIT_MODE_TO_PROTO, "mode"))
        return reasoner_pb2.EditCaptionsResponse(
            edits=[_reasoned_text(edit) for edit in result.reasoning.answers],
            mode=EDIT_MODE_TO_PROTO[result.mode],
            **_shared_fields(result.reasoning),
        )

    async def InferAddedObjects(
        self, request: reasoner_pb2.InferAddedObjectsRequest, context: Any
    ) -> reasoner_pb2.InferAddedObjectsResponse:
        query = self._query(request, context)
        selection = from_proto(request.caption_selection, CAPTION_SELECTION_TO_PROTO, "caption_selection")
        result = await self.core.infer_added_objects(query, selection)
        return reasoner_pb2.InferAddedObjectsResponse(
            objects=_reasoned_text(result.objects),
            caption_selection=CAPTION_SELECTION_TO_PROTO[result.selection],
            **_shared_fields(result.reasoning),
        )

    async def DescribeDifferences(
        self, request: reasoner_pb2.DescribeDifferencesRequest, context: Any
    ) -> reasoner_pb2.DescribeDifferencesResponse:
        query = DifferenceQuery(
            pairs=self.core.check_pairs([(pair.caption_a, pair.caption_b) for pair in request.pairs]),
            template=request.template,
            sampling=_sampling(request.sampling),
            bypass_cache=request.bypass_cache,
            time_remaining_s=_time_remaining(context),
        )
        reasoning = await self.core.describe_differences(query)
        return reasoner_pb2.DescribeDifferencesResponse(
            differences=[_reasoned_text(answer) for answer in reasoning.answers],
            template=reasoning.template.name,
            template_version=reasoning.template.version,
            model=_model_identity(reasoning.model),
            timings=reasoning.timer.as_protos(),
        )

    async def ListTemplates(
        self, request: reasoner_pb2.ListTemplatesRequest, context: Any
    ) -> reasoner_pb2.ListTemplatesResponse:
        return reasoner_pb2.ListTemplatesResponse(
            templates=[
                reasoner_pb2.TemplateInfo(
                    name=t.name,
                    version=t.version,
                    task=_TASKS[t.task],
                    description=t.description,
                    builtin=t.builtin,
                )
                for t in self.core.list_templates()
            ]
        )

    async def GetModelInfo(
        self, request: reasoner_pb2.GetModelInfoRequest, context: Any
    ) -> reasoner_pb2.GetModelInfoResponse:
        info = self.core.model_info()
        sampling = info.default_sampling
        return reasoner_pb2.GetModelInfoResponse(
            model=_model_identity(info.model),
            backend=info.backend,
            default_sampling=reasoner_pb2.SamplingParameters(
                temperature=sampling.temperature,
                max_tokens=sampling.max_tokens,
                stop=list(sampling.stop),
                top_p=sampling.top_p,
            ),
            chat_template=info.chat_template,
            max_captions_per_request=info.max_captions_per_request,
            max_prompt_tokens=info.max_prompt_tokens,
            max_output_tokens=info.max_output_tokens,
            default_edit_template=info.default_edit_template,
            default_difference_template=info.default_difference_template,
            max_pairs_per_request=info.max_pairs_per_request,
            generations_in_flight=info.engine.in_flight if info.engine else None,
            generations_aborted=info.engine.aborted if info.engine else None,
        )


def _time_remaining(context: Any) -> float | None:
    return context.time_remaining() if hasattr(context, "time_remaining") else None


def _sampling(proto: reasoner_pb2.SamplingParameters) -> SamplingRequest:
    def optional(name: str) -> Any:
        return getattr(proto, name) if proto.HasField(name) else None

    return SamplingRequest(
        max_tokens=optional("max_tokens"),
        temperature=optional("temperature"),
        top_p=optional("top_p"),
        stop=tuple(proto.stop),
        seed=optional("seed"),
    )


def _reasoned_text(answer: ReasonedAnswer) -> reasoner_pb2.ReasonedText:
    return reasoner_pb2.ReasonedText(
        text=answer.text,
        outcome=_OUTCOMES[answer.outcome],
        fallback_reason=answer.fallback_reason,
        raw_output=answer.raw_output,
        caption_indices=answer.caption_indices,
        cache_hit=answer.cache_hit,
    )


def _shared_fields(result: Reasoning) -> dict[str, Any]:
    """The response fields EditCaptions and InferAddedObjects have in common."""
    return {
        "template": result.template.name,
        "template_version": result.template.version,
        "captions_used": result.captions_used,
        "captions_truncated": result.captions_truncated,
        "model": _model_identity(result.model),
        "timings": result.timer.as_protos(),
    }


def _model_identity(model: BackendModel) -> common_pb2.ModelIdentity:
    return common_pb2.ModelIdentity(
        name=model.name, revision=model.revision, family=model.family, details=model.details
    )
