"""The vLLM backend: the in-process async engine (`AsyncLLM`), every prompt of a request added at once.

Prompts are tokenized here (chat template applied once) and handed to the engine as token ids, so the
token count that was checked against the prompt budget is exactly what the engine runs. All requests of
one call are added before any output is awaited, so the scheduler batches them in the same steps; when
the deadline passes or the caller cancels, the unfinished ones are aborted in the engine (no orphan work).

vLLM is imported only when this backend starts: the openai and transformers backends run without it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cir_common.errors import Unavailable
from cir_reasoner.generation import (
    BackendModel,
    Completion,
    EngineCounters,
    PreparedPrompt,
    PromptEncoder,
    Sampling,
    deadline_error,
    resolve_prompt_format,
    seconds_left,
)
from cir_reasoner.model_identity import describe_model
from cir_reasoner.model_loading import vllm_engine_args
from cir_reasoner.settings import Backend, ReasonerSettings

if TYPE_CHECKING:
    from vllm.v1.engine.async_llm import AsyncLLM
    from vllm.v1.engine.output_processor import RequestOutputCollector

log = logging.getLogger(__name__)


@dataclass
class EngineRounds:
    """What the backend submitted and what the engine's scheduler reported, step by step.

    `rounds` counts `generate` calls (one per request, whatever its number of prompts); `last_round_size`
    and `last_in_flight` say how many requests that call added and how many the engine held right after.
    The step fields come from vLLM's per-step scheduler stats: they show batching and aborts from the
    engine's side rather than from our own bookkeeping. A step's stats are recorded right after its
    outputs reach the callers' queues, except when a stop string finished a request (vLLM awaits that
    request's abort in between): a caller may see its answer just before its last step is counted.
    """

    rounds: int = 0
    requests: int = 0
    last_round_size: int = 0
    last_in_flight: int = 0
    aborted: int = 0
    steps: int = 0
    # Steps since the latest round began, and the most requests the scheduler held (running + waiting)
    # in one of them.
    round_steps: int = 0
    round_max_scheduled: int = 0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    # The scheduler's requests at its latest report (its idle pass included: 0 and 0 once all are done).
    running: int = 0
    waiting: int = 0

    def start_round(self, size: int) -> None:
        self.rounds += 1
        self.requests += size
        self.round_steps = 0
        self.round_max_scheduled = 0

    def record_step(self, running: int, waiting: int, cache_queries: int, cache_hits: int) -> None:
        self.steps += 1
        self.round_steps += 1
        self.round_max_scheduled = max(self.round_max_scheduled, running + waiting)
        self.prefix_cache_queries += cache_queries
        self.prefix_cache_hits += cache_hits


def _stat_logger_factory(rounds: EngineRounds) -> Any:
    """A vLLM per-engine stat logger factory feeding `rounds` (StatLoggerBase is vLLM's, imported late)."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class _RoundsLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            self.engine_index = engine_index

        def record(
            self,
            scheduler_stats: Any,
            iteration_stats: Any,
            mm_cache_stats: Any = None,
            engine_idx: int = 0,
        ) -> None:
            if scheduler_stats is None:
                return
            running = scheduler_stats.num_running_reqs
            waiting = scheduler_stats.num_waiting_reqs + scheduler_stats.num_skipped_waiting_reqs
            rounds.running, rounds.waiting = running, waiting
            if iteration_stats is None and running + waiting == 0:
                # The core's pass after the last requests finished: it ran nothing, and its report comes
                # after their answers (so counting it would make the step counts race with the callers).
                return
            cache = scheduler_stats.prefix_cache_stats
            rounds.record_step(running, waiting, cache.queries, cache.hits)

        def log_engine_initialized(self) -> None:
            pass

    return _RoundsLogger


class VllmBackend:
    name = Backend.VLLM

    def __init__(
        self,
        engine: AsyncLLM,
        encoder: PromptEncoder,
        model: BackendModel,
        max_context: int,
        stats: EngineRounds | None = None,
    ) -> None:
        self.engine: AsyncLLM | None = engine
        self.encoder = encoder
        self.prompt_format = encoder.prompt_format
        self.model = model
        self.max_context = max_context
        self.stats = stats or EngineRounds()

    @classmethod
    def start(cls, settings: ReasonerSettings) -> VllmBackend:
        """Start the engine (its core runs in a spawned process: the program needs a `__main__` guard)."""
        from transformers import AutoTokenizer
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = vllm_engine_args(
            settings.model,
            settings.max_model_len,
            dtype=settings.dtype,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            enforce_eager=settings.enforce_eager or None,
        )
        # Prefix caching shares the template's long few-shot preamble between the prompts of a query.
        # Stats on: the per-step scheduler stats are how batching and aborts are observed.
        args.update(enable_prefix_caching=True, disable_log_stats=False)
        tokenizer = AutoTokenizer.from_pretrained(args["tokenizer"])
        has_chat_template = bool(getattr(tokenizer, "chat_template", None))
        prompt_format = resolve_prompt_format(settings.prompt_format, has_chat_template)
        stats = EngineRounds()
        model = describe_model(settings.model, Backend.VLLM)
        # No local variable holds the engine: this call's frame outlives it (start-up code in vLLM keeps a
        # reference to it), and only the backend's own reference may keep the engine alive after close().
        backend = cls(
            AsyncLLM.from_engine_args(AsyncEngineArgs(**args), stat_loggers=[_stat_logger_factory(stats)]),
            PromptEncoder(tokenizer, prompt_format),
            model,
            settings.max_model_len,
            stats,
        )
        log.info(
            "vLLM engine up: %s (%s prompts, max_model_len %d)",
            model.identity,
            prompt_format,
            settings.max_model_len,
        )
        return backend

    def prepare(self, prompt: str) -> PreparedPrompt:
        return self.encoder.prepare(prompt)

    async def generate(
        self, prompts: Sequence[PreparedPrompt], sampling: Sampling, deadline: float | None
    ) -> list[Completion]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(
            n=1,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            stop=list(sampling.stop),
            seed=sampling.seed,
            # Benchmarks' fixed lengths: vLLM checks neither EOS nor stop strings before min_tokens.
            min_tokens=sampling.min_tokens,
            ignore_eos=sampling.min_tokens > 0,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        engine = self._running_engine()
        self.stats.start_round(len(prompts))
        ids = [f"cir-{uuid.uuid4().hex}" for _ in prompts]
        tasks: list[asyncio.Task[Completion]] = []
        try:
            # Added back to back, no output awaited in between: the scheduler takes them up together and
            # runs them in the same steps (EngineRounds records what it actually did).
            for request_id, prompt in zip(ids, prompts, strict=True):
                assert prompt.token_ids is not None
                queue = await engine.add_request(
                    request_id, TokensPrompt(prompt_token_ids=list(prompt.token_ids)), params
                )
                tasks.append(asyncio.create_task(_final_output(queue)))
            self.stats.last_round_size = len(tasks)
            self.stats.last_in_flight = engine.get_num_unfinished_requests()
            timeout = seconds_left(deadline)
            if tasks:
                await asyncio.wait(tasks, timeout=None if timeout is None else max(timeout, 0.0))
        finally:
            await self._abort_unfinished(engine, ids, tasks)
        return [_completion(task) for task in tasks]

    async def _abort_unfinished(
        self, engine: AsyncLLM, ids: list[str], tasks: list[asyncio.Task[Completion]]
    ) -> None:
        # Requests added but not finished: past the deadline, cancelled by the caller, or interrupted while
        # being added (ids beyond len(tasks) may have reached the engine before the interruption).
        unfinished = [rid for index, rid in enumerate(ids) if index >= len(tasks) or not tasks[index].done()]
        for task in tasks:
            if not task.done():
                task.cancel()
        if not unfinished:
            return
        self.stats.aborted += len(unfinished)
        # Shielded: a second cancellation of the caller must not interrupt the abort itself.
        await asyncio.shield(engine.abort(unfinished))
        log.info("aborted %d unfinished generation(s)", len(unfinished))

    def _running_engine(self) -> AsyncLLM:
        if self.engine is None:
            raise Unavailable("the vLLM engine was shut down")
        return self.engine

    def engine_counters(self) -> EngineCounters:
        stats = self.stats
        return EngineCounters(
            in_flight=self.unfinished_requests(),
            aborted=stats.aborted,
            running=stats.running,
            waiting=stats.waiting,
            prefix_cache_queries=stats.prefix_cache_queries,
            prefix_cache_hits=stats.prefix_cache_hits,
        )

    def unfinished_requests(self) -> int:
        """Requests the engine still tracks: 0 once every call has finished or been aborted."""
        return 0 if self.engine is None else self.engine.get_num_unfinished_requests()

    async def close(self) -> None:
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.shutdown()
            # AsyncLLM sits in reference cycles and its __del__ shuts down again: collected now, that is
            # harmless; left to interpreter exit, it fails on torn-down modules.
            del engine
            gc.collect()


async def _final_output(queue: RequestOutputCollector) -> Completion:
    while True:
        output = queue.get_nowait() or await queue.get()
        if output.finished:
            completion = output.outputs[0]
            return Completion(
                text=completion.text,
                finish_reason=str(completion.finish_reason or ""),
                generated_tokens=len(completion.token_ids),
            )


def _completion(task: asyncio.Task[Completion]) -> Completion:
    if not task.done() or task.cancelled():
        return Completion(text=None, error=deadline_error())
    error = task.exception()
    if error is not None:
        return Completion(text=None, error=f"vLLM engine error: {type(error).__name__}: {error}")
    return task.result()
