"""The query side of a search: the stages a strategy needs, run as concurrently as their inputs allow.

Stage graph (each arrow waits only for what it needs):
  reference image embedding ─┬─────────────────────────────> pseudo-token prompt (textual inversion)
  captions ─┬─> edited captions ─> their text embeddings      │
            ├─> added objects ─────────────────────────────> fine-grained prompt F_G (CVSI)
            ├─> captioning text embedding
            └─> first-R caption embeddings (WeiMoCIR)
  modification text embedding
  InstructCIR query embedding of (reference image, text) (instructcir; the reference image embedding runs
  beside it as the fallback's query)
A reference given by id reuses its stored embedding and captions: no captioning at query time.
Non-essential stages (captioner, reasoner, the InstructCIR query) degrade to the documented fallbacks and say
so, also when the reasoner answers in time but with some of its items fallen back; the encoder's CLIP
embeddings are essential.

Every stage is weighed against the request's deadline before it starts, by this process's recent durations
of it (`latency.StageEstimates`): work the time left cannot cover is not started. An essential stage that
cannot fit fails the search with DEADLINE_EXCEEDED at once; a non-essential one is skipped and listed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from cir_common.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument
from cir_common.service_kit import StageTimer
from cir_common.vocabulary import EditMode
from cir_retriever import fusion
from cir_retriever.clients import (
    Budget,
    DownstreamError,
    InstructCirInfo,
    InstructCirQueryEmbedding,
    ModelServices,
    ReasonedText,
)
from cir_retriever.gallery.types import CollectionSettings, ImageRecord
from cir_retriever.latency import Shortfall, StageEstimates
from cir_retriever.presets import WEIMOCIR_SLOTS
from cir_retriever.settings import RetrieverSettings
from cir_retriever.strategies import InstructCirVariant, Options, QueryInputs, Requirements, StrategyName

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
    # Other computed values by name (Explanation.details), e.g. the InstructCIR variant and checkpoint.
    details: dict[str, str] = field(default_factory=dict)
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
    # The InstructCIR checkpoint the encoder serves (instructcir only): explain names it even when the
    # stage degrades.
    instructcir: InstructCirInfo | None = None


# CLIP reads 77 tokens (a few hundred characters of ordinary text) and cuts the rest; LLM output can
# run to thousands of characters. Clipping here keeps requests inside the encoder's text limit.
ENCODER_TEXT_CHARS = 2000


def _fit(text: str) -> str:
    return text[:ENCODER_TEXT_CHARS]


SEARCH_STAGE = "search"  # the store search, run by the core after the pipeline: always last
# What must still run after a stage before the search can answer; counted with the stage's own estimate
# when deciding whether it can start (an LLM answer that arrives with no time left to embed it is wasted).
_AFTER: dict[str, tuple[str, ...]] = {
    "edit_captions": ("embed_edited_captions", SEARCH_STAGE),
    "added_objects": ("embed_pseudo_token_prompt", SEARCH_STAGE),
    SEARCH_STAGE: (),
}
# At most this many distinct fallback reasons are quoted in a degradation (the rest are counted).
_REASONS_QUOTED = 2


def stages_after(stage: str) -> tuple[str, ...]:
    return _AFTER.get(stage, (SEARCH_STAGE,))


def shed_message(short: Shortfall) -> str:
    """DEADLINE_EXCEEDED text for an essential stage not started: which one, and the estimate."""
    return (
        f"{short.stage} was not started: the request's deadline cannot cover it ({short.describe()}, "
        "by this retriever's recent durations); give the search a longer deadline"
    )


def essential_chains(needs: Requirements, reference_by_bytes: bool) -> list[tuple[str, ...]]:
    """The essential (encoder) stages a strategy runs whatever degrades, as chains that run one after
    another; the chains themselves run concurrently. Stages that only run when captions exist are left out:
    this is the least a search costs."""
    image = ("embed_reference_image",) if reference_by_bytes else ()
    chains = [image]
    if needs.pseudo_prompt is not None:
        chains.append((*image, "embed_pseudo_token_prompt"))
    if needs.text_embedding:
        chains.append(("embed_modification_text",))
    if needs.captions and needs.edits is not None:
        chains.append(("embed_edited_captions",))  # the fallback text is embedded when the edits degrade
    if needs.captions and needs.captioning_text:
        chains.append(("embed_captioning_text",))
    return chains


def fallback_summary(reasons: Sequence[str]) -> str:
    """The distinct reasons of several fallbacks, most frequent first, each with its count when mixed."""
    counted = Counter(reason or "no reason given" for reason in reasons).most_common()
    if len(counted) == 1:
        return counted[0][0]
    parts = [f"{count} x {reason}" for reason, count in counted[:_REASONS_QUOTED]]
    rest = sum(count for _, count in counted[_REASONS_QUOTED:])
    if rest:
        parts.append(f"{rest} for other reasons")
    return "; ".join(parts)


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
        # One per process: every search's stage durations teach the next searches what fits their deadline.
        self.estimates = StageEstimates(settings.stage_estimate_window, settings.stage_estimate_quantile)

    def admit(
        self, strategy: StrategyName, needs: Requirements, reference_by_bytes: bool, budget: Budget
    ) -> None:
        """Raises DEADLINE_EXCEEDED, before any model call, when the deadline cannot cover even the
        strategy's essential stages and the store search (by their estimates; unknown ones count 0)."""
        if not self._settings.shed_by_estimate:
            return
        chains = [c for c in essential_chains(needs, reference_by_bytes) if c]
        if self._settings.sequential_stages:
            chains = [tuple(dict.fromkeys(stage for chain in chains for stage in chain))]
        estimate = self.estimates.total_ms
        longest = max(chains, key=estimate, default=())
        needed_ms = estimate(longest) + estimate([SEARCH_STAGE])
        left_ms = budget.remaining() * 1000.0
        if needed_ms > 0 and needed_ms > left_ms:
            path = " -> ".join((*longest, SEARCH_STAGE))
            raise DeadlineExceeded(
                f"strategy {strategy.value} was not started: its essential stages ({path}) are estimated "
                f"at {needed_ms:.0f} ms by this retriever's recent durations, and the request's deadline "
                f"leaves {max(left_ms, 0.0):.0f} ms; give the search a longer deadline"
            )

    def shortfall(self, stage: str, budget: Budget) -> Shortfall | None:
        """Why `stage` cannot start within the time left (None: it may), when shedding is on."""
        if not self._settings.shed_by_estimate:
            return None
        return self.estimates.shortfall(stage, stages_after(stage), budget.remaining())

    def observe(self, stage: str, started: float) -> None:
        """Records a stage's duration from its `time.perf_counter()` start."""
        self.estimates.observe(stage, (time.perf_counter() - started) * 1000.0)

    async def run(self, request: QueryRequest, budget: Budget) -> tuple[QueryInputs, Trace]:
        trace = Trace()
        run = _StageRunner(self._services, self._settings, self, request, budget, trace)
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
        pipeline: QueryPipeline,
        request: QueryRequest,
        budget: Budget,
        trace: Trace,
    ) -> None:
        self.s = services
        self.settings = settings
        self.pipeline = pipeline
        self.r = request
        self.budget = budget
        self.trace = trace

    # -- plumbing --------------------------------------------------------------------------------------

    async def _timed(self, name: str, work: Awaitable[T]) -> T:
        started = time.perf_counter()
        with self.trace.timer.stage(name):
            try:
                result = await work
            except asyncio.CancelledError:
                # Cut short (another stage failed, or its budget ran out: `_optional` records that one):
                # how long it ran says nothing of how long it takes.
                raise
            except BaseException:
                self.pipeline.observe(name, started)  # a failure costs its time too
                raise
        self.pipeline.observe(name, started)
        return result

    async def _essential(self, name: str, call: Callable[[], Awaitable[T]]) -> T:
        """An essential stage: not started when the time left cannot cover it (the search would fail at
        the deadline anyway, after spending the model services' capacity on work thrown away)."""
        short = self.pipeline.shortfall(name, self.budget)
        if short is not None:
            raise DeadlineExceeded(shed_message(short))
        return await self._timed(name, call())

    def _degrade(self, stage: str, reason: str, effect: str) -> None:
        log.warning("%s degraded: %s", stage, reason)
        self.trace.degradations.append(Degradation(stage, reason, effect))

    async def _optional(
        self, stage: str, call: Callable[[], Awaitable[T]], fallback: T, effect: str, budget_s: float
    ) -> tuple[T, str]:
        """Runs a non-essential stage; when it cannot fit the time left, fails or runs past its budget,
        returns `fallback` and records why. The second value is that reason ("" when the stage ran)."""
        short = self.pipeline.shortfall(stage, self.budget)
        if short is not None:
            reason = f"skipped: {short.describe()}"
            self._degrade(stage, reason, effect)
            return fallback, reason
        started = time.perf_counter()
        try:
            return await asyncio.wait_for(call(), timeout=self.budget.timeout(budget_s)), ""
        except (TimeoutError, DownstreamError) as error:
            if isinstance(error, TimeoutError):
                # Cut at its budget: it takes at least this long, which is what later searches must plan for.
                self.pipeline.observe(stage, started)
            if self.budget.remaining() <= 0:
                raise DeadlineExceeded(f"the request's deadline passed during {stage}") from error
            reason = (
                f"{error.downstream_code}: {error.details}"
                if isinstance(error, DownstreamError)
                else f"over its {budget_s:g} s budget"
            )
            self._degrade(stage, reason, effect)
            return fallback, reason

    def _reference_source(self) -> bytes | str:
        """The reference image as a model service reads it: the bytes given, or the stored image's URI."""
        if self.r.reference.stored is not None:
            return self.r.reference.stored.uri
        assert self.r.reference.image is not None
        return self.r.reference.image

    def _without_captions(self, stage: str, effect: str) -> None:
        """A stage that needs captions, with none: listed unless the captions stage already said so."""
        if not any(d.stage == "captions" for d in self.trace.degradations):
            self._degrade(stage, "the reference has no captions", effect)

    async def _embed_texts(self, stage: str, texts: list[str]) -> np.ndarray:
        return await self._essential(
            stage, lambda: self.s.encoder.embed_texts([_fit(t) for t in texts], self.budget)
        )

    # -- stages ----------------------------------------------------------------------------------------

    async def image_embedding(self) -> np.ndarray:
        if self.r.reference.stored is not None:
            return self.r.reference.stored.image_raw
        image = self.r.reference.image
        assert image is not None
        embedded = await self._essential(
            "embed_reference_image",
            lambda: self.s.encoder.embed_images([image], self.r.collection.preprocessing, self.budget),
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
        effect = "edited captions replaced by the modification text"
        if not captions:
            texts, outcomes = fallback, ["fallback: no captions"]
            self._without_captions("edit_captions", effect)
        else:
            mode = self.r.needs.edits or EditMode.PER_CAPTION

            async def call() -> list[ReasonedText]:
                try:
                    return await self._timed(
                        "edit_captions",
                        self.s.reasoner.edit_captions(
                            captions,
                            self.r.text,
                            mode,
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

            edits, why = await self._optional(
                "edit_captions", call, [], effect, self.settings.reasoner_budget_s
            )
            if not why and not edits:
                why = "the reasoner answered no edited captions"
                self._degrade("edit_captions", why, effect)
            if why:
                texts, outcomes = fallback, [f"fallback: {why}"]
            else:
                texts, outcomes = [e.text for e in edits], [e.outcome for e in edits]
                self._list_edit_fallbacks(edits)
        self.trace.edited_captions, self.trace.edit_outcomes = texts, outcomes
        return await self._embed_texts("embed_edited_captions", texts)

    def _list_edit_fallbacks(self, edits: list[ReasonedText]) -> None:
        """The reasoner answered in time, but items it could not generate or parse fell back to the
        instruction text (its deadline cut the generation, the LLM call failed, or nothing parseable was
        left). Each such item changes the query, so the search says how many. An empty answer
        ("fallback_empty") counts as well: it is replaced by the same instruction text as a failed call."""
        reasons = [e.fallback_reason for e in edits if not e.parsed]
        if reasons:
            self._degrade(
                "edit_captions",
                f"{len(reasons)} of {len(edits)} edited captions fell back: {fallback_summary(reasons)}",
                f"{len(reasons)} of {len(edits)} edited captions replaced by the modification text",
            )

    async def objects(self, captions_task: asyncio.Task[list[str]]) -> str:
        captions = await captions_task
        effect = "no added objects in the fine-grained prompt"
        if not captions:
            self.trace.objects_outcome = "fallback: no captions"
            self._without_captions("added_objects", effect)
            return ""

        async def call() -> ReasonedText:
            return await self._timed(
                "added_objects",
                self.s.reasoner.added_objects(
                    captions,
                    self.r.text,
                    self.r.options.objects_caption_selection,
                    self.budget,
                    self.settings.reasoner_budget_s,
                ),
            )

        result, why = await self._optional(
            "added_objects", call, None, effect, self.settings.reasoner_budget_s
        )
        if result is None:
            self.trace.objects_outcome = f"fallback: {why}"
            return ""
        if not result.parsed:
            # As for the edits: a failed, cut or empty answer leaves the prompt without objects.
            self._degrade("added_objects", f"the added objects fell back: {result.fallback_reason}", effect)
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
        return await self._essential(
            "embed_pseudo_token_prompt",
            lambda: self.s.encoder.embed_composed_prompt(
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

    async def instructcir_query(self) -> np.ndarray | None:
        """The encoder's InstructCIR query embedding; None (and a degradation) when the call fails or runs
        past its budget: the search then ranks by the reference image alone."""
        variant = self.r.needs.instructcir or InstructCirVariant.PLAIN
        reference = self._reference_source()
        self.trace.details["instructcir_variant"] = variant.value
        if self.r.instructcir is not None:
            self._describe_checkpoint(self.r.instructcir.model.name, self.r.instructcir.model.revision)

        async def call() -> InstructCirQueryEmbedding:
            try:
                return await self._timed(
                    "instructcir_query",
                    self.s.encoder.embed_instructcir_query(
                        reference,
                        _fit(self.r.text),
                        variant is InstructCirVariant.FUSED,
                        self.r.collection.preprocessing,
                        self.budget,
                        self.settings.instructcir_budget_s,
                    ),
                )
            except DownstreamError as error:
                if isinstance(reference, str) and error.refused_input:
                    # Not a passing failure: every search of this reference would fall back the same way.
                    raise FailedPrecondition(
                        f"instructcir embeds the reference image with the text, and a reference given by id "
                        f"is read from its stored uri {reference[:256]!r}, which the encoder refused "
                        f"({error.details[:512]}); send the image as reference_image, or let the encoder "
                        "read that folder (its image_uri_roots)"
                    ) from error
                raise

        result, _ = await self._optional(
            "instructcir_query",
            call,
            None,
            "ranked by the reference image alone (image_only)",
            self.settings.instructcir_budget_s,
        )
        if result is None:
            return None
        expected = self.r.instructcir
        if expected is not None and result.model.revision != expected.model.revision:
            # The encoder was restarted with another checkpoint after the collection's targets were checked
            # against it: this query would be compared with targets of another model.
            raise FailedPrecondition(
                f"the encoder answered with InstructCIR checkpoint {result.model.name}@"
                f"{result.model.revision[:12]}, not {expected.model.name}@{expected.model.revision[:12]} "
                "whose targets this collection keeps: it was restarted with another checkpoint; retry, and "
                "serve the collection's checkpoint or re-ingest"
            )
        self._describe_checkpoint(result.model.name, result.model.revision)
        if variant is InstructCirVariant.FUSED and self.r.instructcir is not None:
            self.trace.details["instructcir_fusion_weight"] = f"{self.r.instructcir.fusion_weight:.6g}"
        return result.vector

    def _describe_checkpoint(self, name: str, revision: str) -> None:
        self.trace.details["instructcir_checkpoint"] = f"{name}@{revision}"

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
            if needs.instructcir is not None:
                await tasks.start("instructcir", self.instructcir_query())
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
            instructcir_query=results.get("instructcir"),
        )
