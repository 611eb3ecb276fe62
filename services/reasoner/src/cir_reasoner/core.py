"""The reasoner's core: limits, templates, prompt budgets, caching and parsing around the LLM. No protos.

`Reasoner` is what the gRPC layer (`service.py`) calls after converting a request; it takes plain Python
values, returns dataclasses and raises `cir_common.errors` types, which the server maps to status codes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cir_common import metrics
from cir_common.cache import Cache, cache_from_settings, cache_key, pack_json, unpack_json
from cir_common.errors import ConfigError, InvalidArgument, NotFound, Unavailable
from cir_common.images import content_hash
from cir_common.memo import get_or_compute
from cir_common.service_kit import StageTimer, require_items
from cir_common.vocabulary import CaptionSelection, EditMode
from cir_reasoner import prompts
from cir_reasoner.backends import start_backend
from cir_reasoner.generation import (
    DEFAULT_STOP,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
    BackendModel,
    EngineCounters,
    LLMBackend,
    Sampling,
)
from cir_reasoner.parsing import Outcome, parse_answer
from cir_reasoner.settings import ENV_PREFIX, PromptFormat, ReasonerSettings
from cir_reasoner.templates import (
    OBJECTS_ADDED_TEMPLATE,
    PromptTemplate,
    TemplateRegistry,
    TemplateTask,
)

if TYPE_CHECKING:
    from prometheus_client.core import Metric

log = logging.getLogger(__name__)

_MAX_STOP_SEQUENCES = 4
_MAX_TEMPERATURE = 2.0
# Generation stops this much before the caller's deadline (at most _DEADLINE_MARGIN_S), so that the
# answer, with fallbacks for what did not finish, still reaches the caller in time.
_DEADLINE_MARGIN_SHARE = 0.1
_DEADLINE_MARGIN_S = 0.5


# --- what the core takes and returns (and the vocabulary's EditMode, CaptionSelection) ------------------

# A request's prompts from a template: (template, prepare, budget) -> plan, with the request's texts bound.
PlanPrompts = Callable[[PromptTemplate, prompts.Prepare, prompts.Budget], prompts.PromptPlan]


@dataclass(frozen=True)
class SamplingRequest:
    """The caller's sampling parameters; None (or no stop strings) means the server's default."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class Inputs:
    """Captions and instruction, checked against the limits and cleaned to one line each."""

    captions: list[str]
    instruction: str


@dataclass(frozen=True)
class Query:
    """What both tasks take besides their own choice (edit mode, caption selection)."""

    inputs: Inputs
    template: str  # "" = the task's default template
    sampling: SamplingRequest
    bypass_cache: bool
    time_remaining_s: float | None  # None: the caller set no deadline


@dataclass(frozen=True)
class DifferenceQuery:
    """Caption pairs for DescribeDifferences, checked and cleaned, with the request's options."""

    pairs: list[prompts.CaptionPair]
    template: str  # "" = settings.default_difference_template
    sampling: SamplingRequest
    bypass_cache: bool
    time_remaining_s: float | None


@dataclass(frozen=True)
class ReasonedAnswer:
    text: str
    outcome: Outcome
    fallback_reason: str
    raw_output: str
    caption_indices: tuple[int, ...]  # the captions this answer was made from
    cache_hit: bool


@dataclass(frozen=True)
class Reasoning:
    """The answers of one request, with the template, the captions that fit, the model and the timings."""

    answers: list[ReasonedAnswer]
    template: PromptTemplate
    captions_used: int
    captions_truncated: bool
    model: BackendModel
    timer: StageTimer


@dataclass(frozen=True)
class EditedCaptions:
    reasoning: Reasoning  # one edit per caption, or one for all captions joined
    mode: EditMode


@dataclass(frozen=True)
class AddedObjects:
    reasoning: Reasoning  # exactly one answer
    selection: CaptionSelection

    @property
    def objects(self) -> ReasonedAnswer:
        (objects,) = self.reasoning.answers
        return objects


@dataclass(frozen=True)
class ModelInfo:
    model: BackendModel
    backend: str
    default_sampling: Sampling
    chat_template: bool
    max_captions_per_request: int
    max_prompt_tokens: int
    max_output_tokens: int
    default_edit_template: str
    default_difference_template: str
    max_pairs_per_request: int
    engine: EngineCounters | None  # None: the backend keeps no engine figures


# --- the core -------------------------------------------------------------------------------------------


class _StoreOnlyAnswers:
    """The cache as `get_or_compute` sees it: a failed generation is never stored, so a later call retries."""

    def __init__(self, cache: Cache, failed: set[str]) -> None:
        self._cache = cache
        self._failed = failed

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return await self._cache.get_many(keys)

    async def set_many(
        self, items: Mapping[str, bytes], ttl_s: int | None = None, *, wait: bool = True
    ) -> None:
        kept = {k: v for k, v in items.items() if k not in self._failed}
        await self._cache.set_many(kept, ttl_s, wait=wait)

    async def get(self, key: str) -> bytes | None:
        return await self._cache.get(key)

    async def set(self, key: str, value: bytes, ttl_s: int | None = None) -> None:
        await self.set_many({key: value}, ttl_s)

    async def flush(self) -> None:
        await self._cache.flush()

    async def close(self) -> None:
        await self._cache.close()

    def describe(self) -> str:
        return self._cache.describe()


class Reasoner:
    def __init__(
        self, settings: ReasonerSettings, cache: Cache | None = None, backend: LLMBackend | None = None
    ) -> None:
        self.settings = settings
        self.templates = TemplateRegistry.load(settings.template_paths)
        for name, task, setting in (
            (settings.default_edit_template, TemplateTask.EDIT, "DEFAULT_EDIT_TEMPLATE"),
            (OBJECTS_ADDED_TEMPLATE, TemplateTask.OBJECTS_ADDED, "TEMPLATE_PATHS"),
            (settings.default_difference_template, TemplateTask.DIFFERENCE, "DEFAULT_DIFFERENCE_TEMPLATE"),
        ):
            try:
                self.templates.get(name, task)
            except (NotFound, InvalidArgument) as error:
                raise ConfigError(f"{ENV_PREFIX}{setting}: {error.message}") from error
        self.cache = cache or cache_from_settings(settings)
        self._backend = backend
        # Prompts are rendered and tokenized here, off the event loop (see _plan). One thread: requests
        # queue for it as futures instead of piling up threads that would wait on the tokenizer's lock,
        # and one core's worth of tokenizing leaves the others to the loop and the engine.
        self._prompt_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reasoner-prompts")
        metrics.watch("reasoner", self, Reasoner.engine_figures)

    async def load(self) -> None:
        backend = self._backend or await start_backend(self.settings)
        context = backend.max_context
        if context is not None and self.settings.max_output_tokens >= context:
            raise ConfigError(
                f"{ENV_PREFIX}MAX_OUTPUT_TOKENS={self.settings.max_output_tokens} leaves no room for a "
                f"prompt in the model's context of {context} tokens"
            )
        self._backend = backend
        log.info(
            "reasoner ready: %s backend, %s (%s prompts); templates: %s",
            backend.name,
            backend.model.identity,
            backend.prompt_format,
            ", ".join(self.templates.names()),
        )

    async def close(self) -> None:
        self._prompt_worker.shutdown(wait=False, cancel_futures=True)
        if self._backend is not None:
            await self._backend.close()
        await self.cache.close()  # its Redis connections and the breaker's probe task

    @property
    def backend(self) -> LLMBackend:
        if self._backend is None:
            raise Unavailable("the reasoner's LLM is not loaded yet")
        return self._backend

    # -- requests --------------------------------------------------------------------------------------

    def check_inputs(self, captions: Sequence[str], instruction: str) -> Inputs:
        """The request's captions and instruction, checked and cleaned: the first check of every call."""
        require_items(
            captions,
            "captions",
            self.settings.max_captions_per_request,
            f"{ENV_PREFIX}MAX_CAPTIONS_PER_REQUEST",
        )
        # Lengths first, on the raw text: before anything else touches it (cleaning, rendering, tokenizing
        # all cost time in proportion to it).
        for index, caption in enumerate(captions):
            self._check_length(caption, f"captions[{index}]")
        self._check_length(instruction, "instruction")
        cleaned = [_clean(c) for c in captions]
        for index, caption in enumerate(cleaned):
            if not caption:
                raise InvalidArgument(f"captions[{index}] is empty; send the captions of the reference image")
        instruction = _clean(instruction)
        if not instruction:
            raise InvalidArgument("instruction is empty; send the modification text T")
        return Inputs(cleaned, instruction)

    def check_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[prompts.CaptionPair]:
        """DescribeDifferences' caption pairs, checked against the limits and cleaned to one line each."""
        require_items(
            pairs, "pairs", self.settings.max_pairs_per_request, f"{ENV_PREFIX}MAX_PAIRS_PER_REQUEST"
        )
        for index, (caption_a, caption_b) in enumerate(pairs):
            self._check_length(caption_a, f"pairs[{index}].caption_a")
            self._check_length(caption_b, f"pairs[{index}].caption_b")
        checked = []
        for index, (caption_a, caption_b) in enumerate(pairs):
            pair = prompts.CaptionPair(_clean(caption_a), _clean(caption_b))
            for side, text in (("caption_a", pair.caption_a), ("caption_b", pair.caption_b)):
                if not text:
                    raise InvalidArgument(f"pairs[{index}].{side} is empty; send both images' captions")
            checked.append(pair)
        return checked

    async def edit_captions(self, query: Query, mode: EditMode | None) -> EditedCaptions:
        """Edited captions (per caption unless `mode` says joined); an edit that falls back is the
        instruction itself (CIReVL's choice)."""
        mode = mode or EditMode.PER_CAPTION
        build = prompts.joined if mode is EditMode.JOINED else prompts.per_caption
        default = self.settings.default_edit_template
        reasoning = await self._reason(
            "reasoner_edit",
            TemplateTask.EDIT,
            query.template or default,
            _with_inputs(build, query.inputs),
            query,
            instruction=query.inputs.instruction,
            fallback=query.inputs.instruction,
        )
        return EditedCaptions(reasoning, mode)

    async def infer_added_objects(self, query: Query, selection: CaptionSelection | None) -> AddedObjects:
        """The objects most likely added, one answer (all captions joined unless `selection` says the
        first); when it falls back it is "" (CVSI's choice)."""
        selection = selection or CaptionSelection.ALL_JOINED
        build = prompts.first_caption if selection is CaptionSelection.FIRST else prompts.joined
        reasoning = await self._reason(
            "reasoner_objects",
            TemplateTask.OBJECTS_ADDED,
            query.template or OBJECTS_ADDED_TEMPLATE,
            _with_inputs(build, query.inputs),
            query,
            instruction=query.inputs.instruction,
            fallback="",
        )
        return AddedObjects(reasoning, selection)

    async def describe_differences(self, query: DifferenceQuery) -> Reasoning:
        """The reformulation text from image A to image B, one answer per pair in order (InstructCIR);
        an answer that falls back is "" (the caller skips that pair)."""
        pairs = query.pairs

        def plan(
            template: PromptTemplate, prepare: prompts.Prepare, budget: prompts.Budget
        ) -> prompts.PromptPlan:
            return prompts.caption_pairs(template, pairs, prepare, budget)

        return await self._reason(
            "reasoner_difference",
            TemplateTask.DIFFERENCE,
            query.template or self.settings.default_difference_template,
            plan,
            query,
            instruction="",
            fallback="",
        )

    def list_templates(self) -> list[PromptTemplate]:
        return self.templates.all()

    def model_info(self) -> ModelInfo:
        backend = self.backend
        settings = self.settings
        return ModelInfo(
            model=backend.model,
            backend=backend.name,
            default_sampling=Sampling(
                temperature=DEFAULT_TEMPERATURE,
                max_tokens=settings.max_output_tokens,
                stop=DEFAULT_STOP,
                top_p=DEFAULT_TOP_P,
            ),
            chat_template=backend.prompt_format == PromptFormat.CHAT,
            max_captions_per_request=settings.max_captions_per_request,
            max_prompt_tokens=settings.max_prompt_tokens,
            max_output_tokens=settings.max_output_tokens,
            default_edit_template=settings.default_edit_template,
            default_difference_template=settings.default_difference_template,
            max_pairs_per_request=settings.max_pairs_per_request,
            engine=backend.engine_counters(),
        )

    def engine_figures(self) -> Iterator[Metric]:
        """The engine's figures for the metrics where the backend keeps them (read on the scrape's thread)."""
        counters = None if self._backend is None else self._backend.engine_counters()
        if counters is None:
            return
        yield metrics.REASONER_UNFINISHED.one(counters.in_flight)
        yield metrics.REASONER_ABORTED.one(counters.aborted)
        for figure, value in (
            (metrics.REASONER_RUNNING, counters.running),
            (metrics.REASONER_WAITING, counters.waiting),
            (metrics.REASONER_PREFIX_QUERIES, counters.prefix_cache_queries),
            (metrics.REASONER_PREFIX_HITS, counters.prefix_cache_hits),
        ):
            if value is not None:
                yield figure.one(value)

    # -- the work --------------------------------------------------------------------------------------

    async def _reason(
        self,
        kind: str,
        task: TemplateTask,
        template_name: str,
        plan_prompts: PlanPrompts,
        query: Query | DifferenceQuery,
        *,
        instruction: str,
        fallback: str,
    ) -> Reasoning:
        """One task's request: template, sampling, prompts (within the budget), then cached or generated
        answers parsed into outcomes. `instruction` goes into the cache keys beside each prompt's captions."""
        deadline = generation_deadline(query.time_remaining_s)
        template = self.templates.get(template_name, task)
        sampling = self._benchmark_length(self._sampling(query.sampling), task)
        timer = StageTimer()
        with timer.stage("prompt"):
            plan = await self._plan(plan_prompts, template, sampling)
        answers = await self._answer(
            kind,
            template,
            plan,
            instruction,
            fallback,
            sampling,
            query.bypass_cache,
            deadline,
            timer,
        )
        return Reasoning(answers, template, plan.captions_used, plan.truncated, self.backend.model, timer)

    def _check_length(self, text: str, field: str) -> None:
        limit = self.settings.max_text_chars
        if len(text) > limit:
            raise InvalidArgument(
                f"{field} has {len(text)} characters, over the limit of {limit} ({ENV_PREFIX}MAX_TEXT_CHARS)"
            )

    def _sampling(self, request: SamplingRequest) -> Sampling:
        limit = self.settings.max_output_tokens
        max_tokens = limit if request.max_tokens is None else request.max_tokens
        if not 1 <= max_tokens <= limit:
            raise InvalidArgument(
                f"sampling.max_tokens {max_tokens} is outside 1..{limit} ({ENV_PREFIX}MAX_OUTPUT_TOKENS)"
            )
        temperature = DEFAULT_TEMPERATURE if request.temperature is None else request.temperature
        if not 0.0 <= temperature <= _MAX_TEMPERATURE:
            raise InvalidArgument(f"sampling.temperature {temperature:g} is outside 0..{_MAX_TEMPERATURE:g}")
        top_p = DEFAULT_TOP_P if request.top_p is None else request.top_p
        if not 0.0 < top_p <= 1.0:
            raise InvalidArgument(f"sampling.top_p {top_p:g} is outside (0, 1]")
        stop = tuple(request.stop) or DEFAULT_STOP
        if len(stop) > _MAX_STOP_SEQUENCES or not all(stop):
            raise InvalidArgument(f"sampling.stop takes 1 to {_MAX_STOP_SEQUENCES} non-empty strings")
        # Stop strings are matched against the output at every generated token (and the transformers
        # backend precomputes tables over the vocabulary for each): bounded like any other caller text.
        for index, text in enumerate(stop):
            self._check_length(text, f"sampling.stop[{index}]")
        return Sampling(
            temperature=temperature, max_tokens=max_tokens, stop=stop, top_p=top_p, seed=request.seed
        )

    def _benchmark_length(self, sampling: Sampling, task: TemplateTask) -> Sampling:
        """The fixed answer length of benchmarks with random weights (settings.benchmark_*_tokens), if set."""
        tokens = {
            TemplateTask.EDIT: self.settings.benchmark_edit_tokens,
            TemplateTask.OBJECTS_ADDED: self.settings.benchmark_objects_tokens,
        }.get(task, 0)  # the difference task has no benchmark length
        return dataclasses.replace(sampling, max_tokens=tokens, min_tokens=tokens) if tokens else sampling

    def _budget(self, sampling: Sampling) -> prompts.Budget:
        budget = prompts.Budget(self.settings.max_prompt_tokens, f"{ENV_PREFIX}MAX_PROMPT_TOKENS")
        context = self.backend.max_context
        if context is not None and context - sampling.max_tokens < budget.tokens:
            budget = prompts.Budget(
                context - sampling.max_tokens,
                f"the model's context of {context} minus max_tokens {sampling.max_tokens}",
            )
        return budget

    async def _plan(
        self, plan_prompts: PlanPrompts, template: PromptTemplate, sampling: Sampling
    ) -> prompts.PromptPlan:
        """The request's prompts, rendered and tokenized on the prompt worker thread, not the event loop.

        The largest request the limits allow (64 captions and an instruction of 4096 characters, joined:
        the budget search tokenizes the prompt up to 8 times) holds a CPU for about half a second with the
        tiny pack's tokenizer; on the loop, every other call would wait that long, health checks included
        (bench/reasoner_health_bench.py). The tokenizer releases the GIL while it encodes, so the loop runs.
        """
        budget = self._budget(sampling)
        work = functools.partial(plan_prompts, template, self.backend.prepare, budget)
        return await asyncio.get_running_loop().run_in_executor(self._prompt_worker, work)

    async def _answer(
        self,
        kind: str,
        template: PromptTemplate,
        plan: prompts.PromptPlan,
        instruction: str,
        fallback: str,
        sampling: Sampling,
        bypass_cache: bool,
        deadline: float | None,
        timer: StageTimer,
    ) -> list[ReasonedAnswer]:
        backend = self.backend
        params = {
            "template": template.name,
            "template_version": template.version,
            "template_sha256": template.sha256,
            "prompt_format": backend.prompt_format,
            "sampling": sampling.cache_params(),
        }
        keys = [
            cache_key(kind, backend.model.identity, params, _inputs_hash(item.captions, instruction))
            for item in plan.items
        ]
        failed: set[str] = set()

        async def compute(indices: list[int]) -> list[bytes]:
            with timer.stage("generate"):
                completions = await backend.generate(
                    [plan.items[i].prompt for i in indices], sampling, deadline
                )
            failures = sum(completion.text is None for completion in completions)
            metrics.count(metrics.GENERATIONS, len(completions) - failures, result="completed")
            metrics.count(metrics.GENERATIONS, failures, result="failed")
            metrics.count(metrics.GENERATED_TOKENS, sum(c.generated_tokens for c in completions))
            values = []
            for index, completion in zip(indices, completions, strict=True):
                if completion.text is None:
                    failed.add(keys[index])
                    values.append(pack_json({"error": completion.error}))
                else:
                    values.append(
                        pack_json({"raw": completion.text, "finish_reason": completion.finish_reason})
                    )
            return values

        # Sampled answers without a seed are meant to differ from call to call: never served from the cache.
        bypass = bypass_cache or not sampling.deterministic
        memo = await get_or_compute(_StoreOnlyAnswers(self.cache, failed), keys, compute, bypass=bypass)
        answers = []
        for item, value, hit in zip(plan.items, memo.values, memo.hits, strict=True):
            stored = unpack_json(value)
            parsed = parse_answer(
                stored.get("raw"),
                fallback,
                labels=[template.answer_label],
                error=stored.get("error", ""),
                plain=template.task is TemplateTask.DIFFERENCE,
            )
            answers.append(
                ReasonedAnswer(
                    text=parsed.text,
                    outcome=parsed.outcome,
                    fallback_reason=parsed.reason,
                    raw_output=stored.get("raw") or "",
                    caption_indices=item.caption_indices,
                    cache_hit=hit,
                )
            )
        fallbacks = [a.fallback_reason for a in answers if a.outcome is not Outcome.PARSED]
        if fallbacks:
            log.info("%s: %d of %d answers fell back (%s)", kind, len(fallbacks), len(answers), fallbacks[0])
        return answers


def generation_deadline(time_remaining_s: float | None) -> float | None:
    """When generation must stop, as a time.monotonic() value; None when the caller set no deadline."""
    if time_remaining_s is None:
        return None
    margin = min(_DEADLINE_MARGIN_S, time_remaining_s * _DEADLINE_MARGIN_SHARE)
    return time.monotonic() + time_remaining_s - margin


def _with_inputs(build: prompts.Build, inputs: Inputs) -> PlanPrompts:
    """`build` with the request's captions and instruction bound."""

    def plan(
        template: PromptTemplate, prepare: prompts.Prepare, budget: prompts.Budget
    ) -> prompts.PromptPlan:
        return build(template, inputs.captions, inputs.instruction, prepare, budget)

    return plan


def _clean(text: str) -> str:
    # One line per caption and instruction: a newline inside either would break the prompt's line format.
    return " ".join(text.split())


def _inputs_hash(captions: Sequence[str], instruction: str) -> str:
    canonical = json.dumps({"captions": list(captions), "instruction": instruction}, ensure_ascii=False)
    return content_hash(canonical.encode("utf-8"))
