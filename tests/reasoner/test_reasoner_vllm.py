"""ReasonerService on vLLM: the in-process CPU engine, and the openai backend against vLLM's own server.

Slow: both engines start once for the module (~45 s each on 2 cores, side by side) and are stopped at the
end. Batching and aborts are checked on the engine's side through the per-step scheduler stats that the
vllm backend records (`EngineRounds`), not only on ours.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from reasoner_support import (
    CAPTIONS,
    INSTRUCTION,
    PARSED_OR_EMPTY,
    SERVED_MODEL_NAME,
    SHORT,
    OpenAIServer,
    RunningReasoner,
    edit_request,
    encode_threads,
    loop_thread,
    reasoner_settings,
    sampling,
    start_reasoner,
    wait_until,
)

from cir.common.v1 import common_pb2
from cir.reasoner.v1 import reasoner_pb2
from cir_common.cache import MemoryCache
from cir_reasoner.openai_backend import OpenAIBackend
from cir_reasoner.parsing import extract_answer
from cir_reasoner.templates import TemplateRegistry, TemplateTask

pytestmark = pytest.mark.slow

FALLBACK_ERROR = reasoner_pb2.PARSE_OUTCOME_FALLBACK_ERROR


@pytest.fixture(scope="module")
def openai_server(
    tiny_profile: dict[str, Any], vllm_cpu_env: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OpenAIServer]:
    """Started first and not waited for: it boots while the in-process engine boots and its tests run."""
    reasoner = tiny_profile["reasoner"]
    log_path = tmp_path_factory.mktemp("vllm-server") / "server.log"
    server = OpenAIServer(reasoner["model"], reasoner["max_model_len"], log_path)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tiny_profile(tiny_pack: Path) -> dict[str, Any]:
    import tomllib

    with tiny_pack.open("rb") as handle:
        return tomllib.load(handle)


@pytest.fixture(scope="module")
def cache() -> MemoryCache:
    return MemoryCache(16 * 1024 * 1024)


@pytest.fixture(scope="module")
def engine_reasoner(
    tiny_pack: Path, openai_server: OpenAIServer, cache: MemoryCache
) -> Iterator[RunningReasoner]:
    settings = reasoner_settings(tiny_pack, port=0)
    # The tiny pack's own profile starts vLLM eager: torch.compile would take minutes on a loaded CPU.
    assert settings.backend == "vllm" and settings.enforce_eager
    running = start_reasoner(settings, cache)
    yield running
    running.stop()
    assert running.servicer.core._backend is not None and running.servicer.core._backend.engine is None


# A stop string the model never writes: its requests finish by length or EOS, both of which the engine
# core decides. A stop string the engine's output side matches ends its request with an abort that is
# awaited before the step's stats are recorded, so the caller may see its answer before those stats.
NEVER = "<no such stop string>"


def _rounds(reasoner: RunningReasoner) -> Any:
    return reasoner.backend.stats


def _drain(reasoner: RunningReasoner) -> None:
    """One short generation through the engine: once it is answered, all earlier steps are counted.

    The engine hands over outputs and their step's stats in step order, and this request ends without a
    stop-string abort, so its answer comes after the stats of every step before it (and of its own). A
    state reached by construction, where a sleep would only guess how late stats may arrive.
    """
    probe = edit_request(CAPTIONS[:1], bypass_cache=True, sampling=sampling(2, stop=[NEVER]))
    reasoner.stub.EditCaptions(probe, timeout=300)


def _quiet(reasoner: RunningReasoner) -> None:
    """Waits until no generation of an earlier test runs and all their steps are counted."""
    backend = reasoner.backend
    wait_until(lambda: backend.unfinished_requests() == 0, 300, "earlier generations to finish")
    _drain(reasoner)


def test_a_per_caption_request_of_15_captions_is_one_engine_round(engine_reasoner: RunningReasoner) -> None:
    _quiet(engine_reasoner)
    stats = _rounds(engine_reasoner)
    rounds, steps, queries, hits = (
        stats.rounds,
        stats.steps,
        stats.prefix_cache_queries,
        stats.prefix_cache_hits,
    )
    # NEVER: each request's last step is counted by the time the answer is back.
    request = edit_request(bypass_cache=True, sampling=sampling(SHORT, stop=[NEVER]))
    response = engine_reasoner.stub.EditCaptions(request)
    assert [list(e.caption_indices) for e in response.edits] == [[i] for i in range(15)]
    for edit in response.edits:
        assert edit.outcome in PARSED_OR_EMPTY
        assert edit.text == (extract_answer(edit.raw_output) or INSTRUCTION)
    # One backend round, 15 requests added before any output was awaited, all 15 in the engine at once...
    assert stats.rounds == rounds + 1
    assert (stats.last_round_size, stats.last_in_flight) == (15, 15)
    # ...and on the engine's side: its scheduler held all 15 in the same step, and the whole round took
    # about as many steps as one answer has tokens. One after another would need at least 15 * SHORT.
    assert stats.round_max_scheduled == 15
    assert stats.steps - steps == stats.round_steps
    assert SHORT <= stats.round_steps < 3 * SHORT
    # The 15 prompts share the template's few-shot preamble: prefix caching serves most of their tokens.
    assert stats.prefix_cache_hits - hits > 0.5 * (stats.prefix_cache_queries - queries)
    assert engine_reasoner.backend.unfinished_requests() == 0


def test_model_info_reports_the_engine(
    engine_reasoner: RunningReasoner, tiny_profile: dict[str, Any]
) -> None:
    info = engine_reasoner.stub.GetModelInfo(reasoner_pb2.GetModelInfoRequest())
    assert info.backend == "vllm" and info.chat_template
    assert info.model.name == Path(tiny_profile["reasoner"]["model"]).name
    assert info.model.revision.startswith("sha256:") and info.model.family == "llama"
    assert engine_reasoner.backend.max_context == tiny_profile["reasoner"]["max_model_len"]
    assert info.HasField("generations_in_flight") and info.generations_in_flight == 0
    assert info.generations_aborted == engine_reasoner.backend.stats.aborted


def test_real_length_prompts_fit_the_tiny_models_context(engine_reasoner: RunningReasoner) -> None:
    backend = engine_reasoner.backend
    settings = engine_reasoner.servicer.core.settings
    for template in TemplateRegistry.load().all():
        prompt = backend.prepare(template.render(", ".join(CAPTIONS), INSTRUCTION))
        # Counted with the tiny LLM's own tokenizer, chat template included.
        assert prompt.token_ids is not None and len(prompt.token_ids) == prompt.token_count
        # A difference prompt holds two captions, not 15: it is shorter, and must fit all the same.
        shortest = 200 if template.task is TemplateTask.DIFFERENCE else 300
        assert shortest < prompt.token_count <= settings.max_prompt_tokens
        assert prompt.token_count + settings.max_output_tokens <= backend.max_context
    joined = engine_reasoner.stub.EditCaptions(
        edit_request(mode=common_pb2.EDIT_MODE_JOINED, template="edit_contextual", sampling=sampling(700))
    )
    assert (joined.captions_used, joined.captions_truncated) == (15, False)


def test_prompts_reach_the_engine_as_token_ids_tokenized_off_the_event_loop(
    engine_reasoner: RunningReasoner, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = engine_reasoner.backend
    threads = encode_threads(engine_reasoner, monkeypatch)
    added: list[Any] = []
    add_request = backend.engine.add_request

    async def recording_add_request(request_id: str, prompt: Any, *args: Any, **kwargs: Any) -> Any:
        added.append(prompt)
        return await add_request(request_id, prompt, *args, **kwargs)

    monkeypatch.setattr(backend.engine, "add_request", recording_add_request)
    response = engine_reasoner.stub.EditCaptions(edit_request(CAPTIONS[:3], bypass_cache=True))
    assert len(response.edits) == 3 and len(threads) == 3
    # Tokenized once, on the service's prompt thread: the event loop (health checks) never waits for it...
    assert loop_thread(engine_reasoner) not in threads
    # ...and the engine gets token ids, which it does not tokenize again (on the loop, in add_request).
    template = engine_reasoner.servicer.core.templates.get("edit_structural", "edit")
    expected = [backend.prepare(template.render(c, INSTRUCTION)).token_ids for c in CAPTIONS[:3]]
    assert [set(p) for p in added] == [{"prompt_token_ids"}] * 3
    assert [tuple(p["prompt_token_ids"]) for p in added] == expected


def test_joined_edit_and_added_objects(engine_reasoner: RunningReasoner) -> None:
    joined = engine_reasoner.stub.EditCaptions(edit_request(mode=common_pb2.EDIT_MODE_JOINED))
    (edit,) = joined.edits
    assert list(edit.caption_indices) == list(range(15)) and edit.outcome in PARSED_OR_EMPTY
    objects = engine_reasoner.stub.InferAddedObjects(
        reasoner_pb2.InferAddedObjectsRequest(
            captions=CAPTIONS,
            instruction=INSTRUCTION,
            caption_selection=common_pb2.CAPTION_SELECTION_FIRST,
            sampling=sampling(),
        )
    )
    assert list(objects.objects.caption_indices) == [0] and objects.objects.outcome in PARSED_OR_EMPTY
    assert objects.objects.text == extract_answer(objects.objects.raw_output)


def test_cache_hits_skip_the_engine(engine_reasoner: RunningReasoner) -> None:
    stats = _rounds(engine_reasoner)
    request = edit_request(CAPTIONS[:4], instruction="has two surfers instead of one")
    first = engine_reasoner.stub.EditCaptions(request)
    _drain(engine_reasoner)  # the stats of the first call's last step may arrive just after its answer
    rounds, requests, steps = stats.rounds, stats.requests, stats.steps
    second = engine_reasoner.stub.EditCaptions(request)
    assert all(e.cache_hit for e in second.edits) and not any(e.cache_hit for e in first.edits)
    assert [e.text for e in second.edits] == [e.text for e in first.edits]
    # The second call added nothing to the engine; and on the engine's side, every step counted since
    # was one of the drain's own (a step run for the second call would be counted by now too).
    _drain(engine_reasoner)
    assert (stats.rounds, stats.requests) == (rounds + 1, requests + 1)
    assert stats.steps == steps + stats.round_steps


def test_a_cancelled_call_aborts_its_requests(engine_reasoner: RunningReasoner) -> None:
    _quiet(engine_reasoner)
    backend = engine_reasoner.backend
    stats = backend.stats
    aborted = stats.aborted
    # Full-length answers (700 tokens, ~8 s here): the call is still generating when it is cancelled.
    call = engine_reasoner.stub.EditCaptions.future(edit_request(bypass_cache=True, sampling=None))
    wait_until(lambda: backend.unfinished_requests() == 15, 30, "the 15 requests to reach the engine")
    call.cancel()
    wait_until(lambda: stats.aborted == aborted + 15, 10, "the server to abort the cancelled requests")
    assert backend.unfinished_requests() == 0
    with pytest.raises(grpc.FutureCancelledError):
        call.result()
    # The engine core dropped them too: while a probe runs, its scheduler holds the probe alone. The drain
    # first: the steps the core ran before it took the abort in are counted before the probe's round.
    _drain(engine_reasoner)
    probe = edit_request(CAPTIONS[:1], bypass_cache=True, sampling=sampling(4, stop=[NEVER]))
    engine_reasoner.stub.EditCaptions(probe)
    assert stats.round_max_scheduled == 1


def test_the_deadline_aborts_generation_and_the_answer_reports_fallbacks(
    engine_reasoner: RunningReasoner, cache: MemoryCache
) -> None:
    backend = engine_reasoner.backend
    # Long answers: sampled (a greedy random model soon writes the blank line that stops it), a stop string
    # it never writes, 700 tokens each for 15 captions (~1.3 s of CPU engine steps here). Seeded, so that the
    # finished answers are cacheable. Shorter deadlines first; a new instruction each time (no cache hits).
    long_answers = sampling(700, temperature=1.0, seed=11, stop=["<no such stop string>"])
    for attempt, deadline_s in enumerate((0.6, 1.0, 1.4)):
        instruction = f"is at night under a full moon ({attempt})"
        aborted, entries = backend.stats.aborted, cache.stats()["entries"]
        request = edit_request(instruction=instruction, sampling=long_answers)
        # An answer, not DEADLINE_EXCEEDED: the server stopped generating in time to send it.
        response = engine_reasoner.stub.EditCaptions(request, timeout=deadline_s)
        failed = [e for e in response.edits if e.outcome == FALLBACK_ERROR]
        if failed:
            break
    else:
        pytest.fail("every answer finished within each deadline: the engine outran 700 tokens in 1.4 s")
    for edit in failed:
        assert edit.text == instruction and edit.raw_output == ""
        assert (
            edit.fallback_reason
            == "the LLM call failed: no answer before the caller's deadline (generation aborted)"
        )
    assert backend.stats.aborted == aborted + len(failed)
    assert backend.unfinished_requests() == 0
    # Only finished answers were cached: a failure is retried by the next call.
    assert cache.stats()["entries"] == entries + len(response.edits) - len(failed)


# --- openai backend, against vLLM's OpenAI-compatible server -------------------------------------------


class _Recorder(httpx.AsyncBaseTransport):
    """Forwards to the real server, after answering the first `failures` POSTs itself with `status`."""

    def __init__(self, failures: int = 0, status: int = 503, forward: bool = True) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.failures = failures
        self.status = status
        self.forward = forward
        self.posts = 0
        self.paths: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            self.posts += 1
            self.paths.append(request.url.path)
            if self.posts <= self.failures or not self.forward:
                return httpx.Response(self.status, headers={"Retry-After": "0"}, text="busy, try again")
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.01)  # keeps overlapping calls overlapping on a fast server
            return await self.inner.handle_async_request(request)
        finally:
            self.in_flight -= 1

    async def aclose(self) -> None:
        await self.inner.aclose()


def _openai_reasoner(
    tiny_pack: Path, server: OpenAIServer, transport: httpx.AsyncBaseTransport | None = None, **overrides: Any
) -> RunningReasoner:
    server.wait_ready()
    settings = reasoner_settings(
        tiny_pack,
        port=0,
        backend="openai",
        openai_base_url=server.base_url,
        openai_model=SERVED_MODEL_NAME,
        tokenizer=reasoner_settings(tiny_pack).model,
        **overrides,
    )
    backend = None
    if transport is not None:
        backend = OpenAIBackend(
            base_url=settings.openai_base_url,
            model_name=settings.openai_model,
            api_key=None,
            prompt_format=settings.prompt_format if settings.prompt_format != "auto" else "chat",
            max_concurrency=settings.openai_max_concurrency,
            max_retries=settings.openai_max_retries,
            timeout_s=settings.openai_timeout_s,
            transport=transport,
        )
    return start_reasoner(settings, MemoryCache(1024 * 1024), backend=backend)


@pytest.fixture(scope="module")
def openai_reasoner(tiny_pack: Path, openai_server: OpenAIServer) -> Iterator[RunningReasoner]:
    running = _openai_reasoner(tiny_pack, openai_server)
    yield running
    running.stop()


def test_openai_backend_against_a_vllm_server(
    openai_reasoner: RunningReasoner, tiny_profile: dict[str, Any]
) -> None:
    info = openai_reasoner.stub.GetModelInfo(reasoner_pb2.GetModelInfoRequest())
    assert (info.backend, info.model.name, info.model.family) == (
        "openai",
        SERVED_MODEL_NAME,
        "openai-compatible",
    )
    assert info.chat_template
    # The server reports its context; prompts are counted with the tokenizer named in the settings.
    assert openai_reasoner.backend.max_context == tiny_profile["reasoner"]["max_model_len"]
    response = openai_reasoner.stub.EditCaptions(edit_request(bypass_cache=True))
    assert [list(e.caption_indices) for e in response.edits] == [[i] for i in range(15)]
    for edit in response.edits:
        assert edit.outcome in PARSED_OR_EMPTY
        assert edit.text == (extract_answer(edit.raw_output) or INSTRUCTION)
    assert any(e.raw_output for e in response.edits)  # the server's model did answer
    objects = openai_reasoner.stub.InferAddedObjects(
        reasoner_pb2.InferAddedObjectsRequest(captions=CAPTIONS, instruction=INSTRUCTION, sampling=sampling())
    )
    assert list(objects.objects.caption_indices) == list(range(15))
    assert objects.objects.outcome in PARSED_OR_EMPTY


def test_openai_backend_sends_plain_completions_for_base_models(
    tiny_pack: Path, openai_server: OpenAIServer
) -> None:
    transport = _Recorder()
    running = _openai_reasoner(tiny_pack, openai_server, transport, prompt_format="completion")
    try:
        response = running.stub.EditCaptions(edit_request(CAPTIONS[:2], bypass_cache=True), timeout=60)
    finally:
        running.stop()
    assert all(e.outcome in PARSED_OR_EMPTY for e in response.edits)
    assert transport.paths == ["/v1/completions"] * 2


def test_openai_retries_5xx_then_answers_with_bounded_concurrency(
    tiny_pack: Path, openai_server: OpenAIServer
) -> None:
    transport = _Recorder(failures=2)
    running = _openai_reasoner(tiny_pack, openai_server, transport, openai_max_concurrency=3)
    try:
        response = running.stub.EditCaptions(edit_request(CAPTIONS[:8], bypass_cache=True), timeout=60)
    finally:
        running.stop()
    assert all(e.outcome in PARSED_OR_EMPTY for e in response.edits)
    assert transport.posts == 8 + 2  # two prompts answered 503 once each, then retried
    assert set(transport.paths) == {"/v1/chat/completions"}
    assert transport.max_in_flight == 3


@pytest.mark.parametrize(
    ("status", "posts", "reason"),
    [
        (429, None, "HTTP 429"),  # retried until the deadline would pass
        (400, 1, "HTTP 400"),  # a bad request is not sent again
    ],
)
def test_openai_failures_fall_back_within_the_deadline(
    tiny_pack: Path, openai_server: OpenAIServer, status: int, posts: int | None, reason: str
) -> None:
    transport = _Recorder(status=status, forward=False)
    running = _openai_reasoner(tiny_pack, openai_server, transport, openai_max_retries=50)
    try:
        # An answer, not DEADLINE_EXCEEDED: the retries stopped in time to send the fallback.
        response = running.stub.EditCaptions(edit_request(CAPTIONS[:1], bypass_cache=True), timeout=3.0)
    finally:
        running.stop()
    (edit,) = response.edits
    assert (edit.text, edit.outcome) == (INSTRUCTION, FALLBACK_ERROR)
    assert reason in edit.fallback_reason
    if posts is None:
        assert transport.posts > 2
    else:
        assert transport.posts == posts
