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

import numpy as np

from cir_common.errors import DeadlineExceeded, InvalidArgument
from cir_common.service_kit import StageTimer
from cir_retriever import fusion
from cir_retriever.clients import Budget, DownstreamError, ModelServices, ReasonedText
from cir_retriever.gallery.types import CollectionSettings, ImageRecord
from cir_retriever.presets import WEIMOCIR_SLOTS
from cir_retriever.settings import RetrieverSettings
from cir_retriever.strategies import EditMode, Options, QueryInputs, Requirements, StrategyName

log = logging.getLogger(__name__)
T = TypeVar("T")


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
    image: bytes | None = None  # given as bytes: embed and caption it now
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
    # options.edit_template was the caller's choice (not the preset's): the reasoner refusing it is the
    # caller's error (INVALID_ARGUMENT), not a degradation.
    edit_template_from_caller: bool = False


# CLIP reads 77 tokens (a few hundred characters of ordinary text) and cuts the rest; LLM output can
# run to thousands of characters. Clipping here keeps requests inside the encoder's text limit.
ENCODER_TEXT_CHARS = 2000


def _fit(text: str) -> str:
    return text[:ENCODER_TEXT_CHARS]


def _template_refused(error: DownstreamError) -> bool:
    """The reasoner refused the prompt template: it does not know the name (NOT_FOUND, only a template
    lookup answers it) or the template is not an edit template (INVALID_ARGUMENT naming the template)."""
    return error.downstream_code == "NOT_FOUND" or (
        error.downstream_code == "INVALID_ARGUMENT" and "template" in error.details
    )


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

    async def _optional(
        self, stage: str, call: Callable[[], Awaitable[T]], fallback: T, effect: str, budget_s: float
    ) -> tuple[T, bool]:
        """Runs a non-essential stage; on failure or past its budget returns `fallback` and records why."""
        try:
            return await asyncio.wait_for(call(), timeout=self.budget.timeout(budget_s)), True
        except (TimeoutError, DownstreamError) as error:
            if self.budget.remaining() <= 0:
                raise DeadlineExceeded(f"the request's deadline passed during {stage}") from error
            reason = (
                f"{error.downstream_code}: {error.details}"
                if isinstance(error, DownstreamError)
                else f"over its {budget_s:g} s budget"
            )
            log.warning("%s degraded: %s", stage, reason)
            self.trace.degradations.append(Degradation(stage, reason, effect))
            return fallback, False

    async def _embed_texts(self, stage: str, texts: list[str]) -> np.ndarray:
        return await self._timed(stage, self.s.encoder.embed_texts([_fit(t) for t in texts], self.budget))

    # -- stages ----------------------------------------------------------------------------------------

    async def image_embedding(self) -> np.ndarray:
        if self.r.reference.stored is not None:
            return self.r.reference.stored.image_raw
        assert self.r.reference.image is not None
        embedded = await self._timed(
            "embed_reference_image",
            self.s.encoder.embed_images(
                [self.r.reference.image], self.r.collection.preprocessing, self.budget
            ),
        )
        return embedded.vectors[0]

    async def captions(self) -> list[str]:
        if self.r.reference.stored is not None:
            self.trace.captions = list(self.r.reference.stored.captions)
            return self.trace.captions
        assert self.r.reference.image is not None
        image = self.r.reference.image
        settings = self.r.collection

        async def call() -> list[str]:
            generated = await self._timed(
                "captions",
                self.s.captioner.captions(
                    [image],
                    settings.num_captions,
                    settings.decoding_variant,
                    self.budget,
                    self.settings.captioner_budget_s,
                ),
            )
            return generated.per_image[0]

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
            mode = self.r.needs.edits or EditMode.PER_CAPTION

            async def call() -> list[ReasonedText]:
                try:
                    return await self._timed(
                        "edit_captions",
                        self.s.reasoner.edit_captions(
                            captions,
                            self.r.text,
                            mode.value,
                            self.r.options.edit_template,
                            self.budget,
                            self.settings.reasoner_budget_s,
                        ),
                    )
                except DownstreamError as error:
                    if self.r.edit_template_from_caller and _template_refused(error):
                        raise InvalidArgument(
                            f"options.edit_template {self.r.options.edit_template[:128]!r} was refused by "
                            f"the reasoner ({error.details[:512]}); name an edit template the reasoner knows "
                            "(its ListTemplates RPC lists them) or leave it empty for the preset's"
                        ) from error
                    raise

            edits, ok = await self._optional(
                "edit_captions",
                call,
                [],
                "edited captions replaced by the modification text",
                self.settings.reasoner_budget_s,
            )
            if ok and edits:
                texts, outcomes = [e.text for e in edits], [e.outcome for e in edits]
            else:
                texts, outcomes = fallback, ["fallback: reasoner unavailable"]
        self.trace.edited_captions, self.trace.edit_outcomes = texts, outcomes
        return await self._embed_texts("embed_edited_captions", texts)

    async def objects(self, captions_task: asyncio.Task[list[str]]) -> str:
        captions = await captions_task
        if not captions:
            self.trace.objects_outcome = "fallback: no captions"
            return ""

        async def call() -> ReasonedText:
            return await self._timed(
                "added_objects",
                self.s.reasoner.added_objects(
                    captions,
                    self.r.text,
                    self.r.options.objects_caption_selection.value,
                    self.budget,
                    self.settings.reasoner_budget_s,
                ),
            )

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
        self.trace.added_objects, self.trace.objects_outcome = result.text, result.outcome
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
        return await self._timed(
            "embed_pseudo_token_prompt",
            self.s.encoder.embed_composed_prompt(
                _fit(prompt), image, self.r.needs.pseudo_prompt or "", self.budget
            ),
        )

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
