"""The query side of a search: the stages a strategy needs, run as concurrently as their inputs allow.

Stage graph (each arrow waits only for what it needs):
  reference image embedding ─┬─────────────────────────────> pseudo-token prompt (textual inversion)
  captions ─┬─> edited captions ─> their text embeddings      │
            ├─> added objects ─────────────────────────────> fine-grained prompt F_G (CVSI)
            ├─> captioning text embedding
            └─> first-R caption embeddings (WeiMoCIR)
  modification text embedding
A reference given by id reuses its stored embedding and captions: no captioning at query time.
Non-essential stages (captioner, reasoner) degrade to the documented fallbacks and say so;
the encoder is essential.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import numpy as np

from cir.captioner.v1 import captioner_pb2
from cir.common.v1 import common_pb2
from cir.encoder.v1 import encoder_pb2
from cir.reasoner.v1 import reasoner_pb2
from cir_common.errors import CirError, DeadlineExceeded, ResourceExhausted, Unavailable
from cir_common.request_context import outgoing_metadata
from cir_common.service_kit import StageTimer
from cir_common.vectors import vector_from_proto, vector_to_proto
from cir_retriever import fusion
from cir_retriever.downstream import Budget, ModelServices
from cir_retriever.gallery.types import CollectionSettings, ImageRecord
from cir_retriever.options import PREPROCESSING_TO_PROTO, VARIANT_TO_PROTO
from cir_retriever.presets import WEIMOCIR_SLOTS
from cir_retriever.settings import RetrieverSettings
from cir_retriever.strategies import (
    CaptionSelection,
    EditMode,
    Options,
    QueryInputs,
    Requirements,
    StrategyName,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

PACKED = common_pb2.VECTOR_FORMAT_PACKED_F32
_EDIT_MODE = {
    EditMode.PER_CAPTION: common_pb2.EDIT_MODE_PER_CAPTION,
    EditMode.JOINED: common_pb2.EDIT_MODE_JOINED,
}
_SELECTION = {
    CaptionSelection.FIRST: common_pb2.CAPTION_SELECTION_FIRST,
    CaptionSelection.ALL_JOINED: common_pb2.CAPTION_SELECTION_ALL_JOINED,
}


@dataclass(frozen=True)
class Degradation:
    stage: str
    reason: str
    effect: str


@dataclass
class Trace:
    """What was computed on the way, for `explain`, and what degraded."""

    captions: list[str] = field(default_factory=list)
    edited_captions: list[str] = field(default_factory=list)
    edit_outcomes: list[str] = field(default_factory=list)
    added_objects: str = ""
    objects_outcome: str = ""
    prompt: str = ""
    degradations: list[Degradation] = field(default_factory=list)
    timer: StageTimer = field(default_factory=StageTimer)


@dataclass(frozen=True)
class Reference:
    image: common_pb2.Image | None = None  # given as bytes: embed and caption it now
    stored: ImageRecord | None = None  # an id in the collection: reuse what was stored


@dataclass(frozen=True)
class QueryRequest:
    reference: Reference
    text: str
    strategy: StrategyName
    options: Options
    needs: Requirements
    collection: CollectionSettings
    # Also embed every caption of the reference (returned to the caller for LDRE's adaptive weights, not
    # used for the ranking).
    reference_captions: bool = False


# CLIP reads 77 tokens (a few hundred characters of ordinary text) and cuts the rest; LLM output can
# run to thousands of characters. Clipping here keeps requests inside the encoder's text limit.
ENCODER_TEXT_CHARS = 2000


def _fit(text: str) -> str:
    return text[:ENCODER_TEXT_CHARS]


def _outcome(item: reasoner_pb2.ReasonedText) -> str:
    if item.outcome == reasoner_pb2.PARSE_OUTCOME_PARSED:
        return "parsed"
    return f"fallback: {item.fallback_reason or reasoner_pb2.ParseOutcome.Name(item.outcome)}"


class QueryPipeline:
    def __init__(self, services: ModelServices, settings: RetrieverSettings) -> None:
        self._services = services
        self._settings = settings

    async def run(self, request: QueryRequest, budget: Budget) -> tuple[QueryInputs, Trace]:
        trace = Trace()
        run = _StageRunner(self._services, self._settings, request, budget, trace)
        return await run.all(), trace


class _Tasks:
    """The stage tasks of one query; in sequential mode each stage finishes before the next starts."""

    def __init__(self, sequential: bool) -> None:
        self._sequential = sequential
        self._tasks: dict[str, asyncio.Task[Any]] = {}

    async def start(self, name: str, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.create_task(work)
        self._tasks[name] = task
        if self._sequential:
            await asyncio.wait({task})
        return task

    def all(self) -> list[asyncio.Task[Any]]:
        return list(self._tasks.values())

    def cancel_all(self) -> None:
        for task in self._tasks.values():
            task.cancel()

    def results(self) -> dict[str, Any]:
        return {name: task.result() for name, task in self._tasks.items()}


class _StageRunner:
    """One query's stages; each stage is a task started at once and awaited by the stages that need it."""

    def __init__(
        self,
        services: ModelServices,
        settings: RetrieverSettings,
        request: QueryRequest,
        budget: Budget,
        trace: Trace,
    ) -> None:
        self.s = services
        self.settings = settings
        self.r = request
        self.budget = budget
        self.trace = trace

    # -- plumbing --------------------------------------------------------------------------------------

    async def _timed(self, name: str, work: Awaitable[T]) -> T:
        with self.trace.timer.stage(name):
            return await work

    def _essential_error(self, service: str, error: grpc.aio.AioRpcError) -> Exception:
        if self.budget.remaining() <= 0 or error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return DeadlineExceeded(f"the {service} did not answer before the request's deadline")
        if error.code() == grpc.StatusCode.UNAVAILABLE:
            return Unavailable(f"the {service} service is unavailable: {error.details()}")
        if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return ResourceExhausted(f"the {service} is overloaded: {error.details()}")
        # Anything else is a request the retriever itself built: not the caller's fault.
        return CirError(
            f"the {service} refused a request of the retriever ({error.code().name}): {error.details()}"
        )

    async def _optional(
        self, stage: str, call: Callable[[], Awaitable[T]], fallback: T, effect: str, budget_s: float
    ) -> tuple[T, bool]:
        """Runs a non-essential stage; on failure or past its budget returns `fallback` and records why."""
        try:
            return await asyncio.wait_for(call(), timeout=self.budget.timeout(budget_s)), True
        except (TimeoutError, grpc.aio.AioRpcError) as error:
            if self.budget.remaining() <= 0:
                raise DeadlineExceeded(f"the request's deadline passed during {stage}") from error
            reason = (
                f"{error.code().name}: {error.details()}"
                if isinstance(error, grpc.aio.AioRpcError)
                else f"over its {budget_s:g} s budget"
            )
            log.warning("%s degraded: %s", stage, reason)
            self.trace.degradations.append(Degradation(stage, reason, effect))
            return fallback, False

    async def _embed_texts(self, stage: str, texts: list[str]) -> np.ndarray:
        request = encoder_pb2.EmbedTextsRequest(texts=[_fit(t) for t in texts], vector_format=PACKED)
        try:
            response = await self._timed(
                stage,
                self.s.encoder.EmbedTexts(
                    request, timeout=self.budget.timeout(), metadata=outgoing_metadata()
                ),
            )
        except grpc.aio.AioRpcError as error:
            raise self._essential_error("encoder", error) from error
        return np.stack([vector_from_proto(e.embedding) for e in response.embeddings])

    # -- stages ----------------------------------------------------------------------------------------

    async def image_embedding(self) -> np.ndarray:
        if self.r.reference.stored is not None:
            return self.r.reference.stored.image_raw
        request = encoder_pb2.EmbedImagesRequest(
            images=[self.r.reference.image],
            preprocessing=PREPROCESSING_TO_PROTO[self.r.collection.preprocessing],
            vector_format=PACKED,
        )
        try:
            response = await self._timed(
                "embed_reference_image",
                self.s.encoder.EmbedImages(
                    request, timeout=self.budget.timeout(), metadata=outgoing_metadata()
                ),
            )
        except grpc.aio.AioRpcError as error:
            raise self._essential_error("encoder", error) from error
        return vector_from_proto(response.embeddings[0])

    async def captions(self) -> list[str]:
        if self.r.reference.stored is not None:
            self.trace.captions = list(self.r.reference.stored.captions)
            return self.trace.captions
        request = captioner_pb2.GenerateCaptionsRequest(
            images=[self.r.reference.image],
            num_captions=self.r.collection.num_captions,
            decoding=captioner_pb2.DecodingParameters(
                variant=VARIANT_TO_PROTO[self.r.collection.decoding_variant]
            ),
        )

        async def call() -> list[str]:
            response = await self._timed(
                "captions",
                self.s.captioner.GenerateCaptions(
                    request, timeout=self.budget.timeout(), metadata=outgoing_metadata()
                ),
            )
            return list(response.results[0].captions)

        captions, _ = await self._optional(
            "captions",
            call,
            [],
            "no caption features for the reference: edits fall back to the modification text",
            self.settings.captioner_budget_s,
        )
        self.trace.captions = captions
        return captions

    async def edits(self, captions_task: asyncio.Task[list[str]]) -> np.ndarray:
        captions = await captions_task
        if self.r.needs.edit_first_caption_only:
            captions = captions[:1]
        fallback = [self.r.text]
        if not captions:
            texts, outcomes = fallback, ["fallback: no captions"]
        else:
            request = reasoner_pb2.EditCaptionsRequest(
                captions=captions,
                instruction=self.r.text,
                mode=_EDIT_MODE[self.r.needs.edits or EditMode.PER_CAPTION],
                template=self.r.options.edit_template,
            )

            async def call() -> list[reasoner_pb2.ReasonedText]:
                response = await self._timed(
                    "edit_captions",
                    self.s.reasoner.EditCaptions(
                        request, timeout=self.budget.timeout(), metadata=outgoing_metadata()
                    ),
                )
                return list(response.edits)

            edits, ok = await self._optional(
                "edit_captions",
                call,
                [],
                "edited captions replaced by the modification text",
                self.settings.reasoner_budget_s,
            )
            if ok and edits:
                texts, outcomes = [e.text for e in edits], [_outcome(e) for e in edits]
            else:
                texts, outcomes = fallback, ["fallback: reasoner unavailable"]
        self.trace.edited_captions, self.trace.edit_outcomes = texts, outcomes
        return await self._embed_texts("embed_edited_captions", texts)

    async def objects(self, captions_task: asyncio.Task[list[str]]) -> str:
        captions = await captions_task
        if not captions:
            self.trace.objects_outcome = "fallback: no captions"
            return ""
        request = reasoner_pb2.InferAddedObjectsRequest(
            captions=captions,
            instruction=self.r.text,
            caption_selection=_SELECTION[self.r.options.objects_caption_selection],
        )

        async def call() -> reasoner_pb2.ReasonedText:
            response = await self._timed(
                "added_objects",
                self.s.reasoner.InferAddedObjects(
                    request, timeout=self.budget.timeout(), metadata=outgoing_metadata()
                ),
            )
            return response.objects

        result, ok = await self._optional(
            "added_objects",
            call,
            None,
            "no added objects in the fine-grained prompt",
            self.settings.reasoner_budget_s,
        )
        if not ok or result is None:
            self.trace.objects_outcome = "fallback: reasoner unavailable"
            return ""
        self.trace.added_objects, self.trace.objects_outcome = result.text, _outcome(result)
        return result.text

    async def pseudo_prompt(
        self, image_task: asyncio.Task[np.ndarray], objects_task: asyncio.Task[str] | None
    ) -> np.ndarray:
        if objects_task is not None:
            prompt = fusion.fine_grained_prompt(self.r.text, await objects_task)
        else:
            prompt = fusion.textual_inversion_prompt(self.r.text)
        self.trace.prompt = prompt
        image = await image_task
        request = encoder_pb2.EmbedComposedPromptsRequest(
            prompts=[
                encoder_pb2.ComposedPrompt(
                    text=_fit(prompt), reference_embedding=vector_to_proto(image, PACKED)
                )
            ],
            mapping_network=self.r.needs.pseudo_prompt or "",
            vector_format=PACKED,
        )
        try:
            response = await self._timed(
                "embed_pseudo_token_prompt",
                self.s.encoder.EmbedComposedPrompts(
                    request, timeout=self.budget.timeout(), metadata=outgoing_metadata()
                ),
            )
        except grpc.aio.AioRpcError as error:
            raise self._essential_error("encoder", error) from error
        return vector_from_proto(response.embeddings[0].embedding)

    async def captioning_text(self, captions_task: asyncio.Task[list[str]]) -> np.ndarray:
        captions = await captions_task
        text = fusion.captioning_text(captions[0], self.r.text) if captions else self.r.text
        self.trace.prompt = text
        return (await self._embed_texts("embed_captioning_text", [text]))[0]

    async def caption_slots(self, captions_task: asyncio.Task[list[str]]) -> np.ndarray | None:
        if self.r.reference.stored is not None:
            return self.r.reference.stored.caption_slots
        captions = await captions_task
        if not captions:
            return None
        return await self._embed_texts("embed_reference_captions", captions[:WEIMOCIR_SLOTS])

    async def reference_captions(self, captions_task: asyncio.Task[list[str]]) -> np.ndarray | None:
        captions = await captions_task
        if not captions:
            return None
        return await self._embed_texts("embed_reference_captions_all", captions)

    # -- the graph -------------------------------------------------------------------------------------

    async def all(self) -> QueryInputs:
        needs = self.r.needs
        tasks = _Tasks(sequential=self.settings.sequential_stages)
        try:
            image_task = await tasks.start("image", self.image_embedding())
            captions_task = await tasks.start("captions", self.captions()) if needs.captions else None
            if needs.text_embedding:
                await tasks.start("text", self._embed_texts("embed_modification_text", [self.r.text]))
            objects_task = None
            if needs.objects and captions_task is not None:
                objects_task = await tasks.start("objects", self.objects(captions_task))
            if needs.edits is not None and captions_task is not None:
                await tasks.start("edits", self.edits(captions_task))
            if needs.pseudo_prompt is not None:
                await tasks.start("pseudo", self.pseudo_prompt(image_task, objects_task))
            if needs.captioning_text and captions_task is not None:
                await tasks.start("captioning", self.captioning_text(captions_task))
            if self.r.strategy is StrategyName.WEIMOCIR and captions_task is not None:
                await tasks.start("slots", self.caption_slots(captions_task))
            if self.r.reference_captions and captions_task is not None:
                await tasks.start("all_captions", self.reference_captions(captions_task))
            await asyncio.gather(*tasks.all())
        finally:
            # One stage failed (or the caller went away): leave no work running behind the answer.
            tasks.cancel_all()
        results = tasks.results()
        text = results.get("text")
        return QueryInputs(
            image=results["image"],
            text=text[0] if text is not None else None,
            captioning_text=results.get("captioning"),
            pseudo_prompt=results.get("pseudo"),
            edits=results.get("edits"),
            caption_slots=results.get("slots"),
            reference_captions=results.get("all_captions"),
        )
