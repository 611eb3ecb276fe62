"""DescribeDifferences over real gRPC: the transformers backend with the tiny pack's (random) LLM.

The tiny LLM's answers are noise: the tests check the structure (one answer per pair, in order, parsed to
plain words or fallen back to ""), the limits, the cache and the template listing, never the text itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from reasoner_support import SHORT, RunningReasoner, reasoner_settings, sampling, start_reasoner

from cir.reasoner.v1 import reasoner_pb2
from cir_common.cache import MemoryCache
from cir_reasoner.parsing import plain_words

PAIRS = [
    ("a red circle on a white background", "a blue square on a black background"),
    ("a dog sitting on a sofa", "a cat sleeping on a sofa"),
    ("a street in the daytime", "the same street at night with lights"),
]
MAX_PAIRS = 4
PARSED = reasoner_pb2.PARSE_OUTCOME_PARSED
FALLBACK_EMPTY = reasoner_pb2.PARSE_OUTCOME_FALLBACK_EMPTY
# What a parsed difference text may hold: words, in-word ' and -, and , . after a word.
PLAIN = re.compile(r"^[\w'’,.-]+(?: [\w'’,.-]+)*$")


@pytest.fixture(scope="module")
def reasoner(tiny_pack: Path) -> Iterator[RunningReasoner]:
    settings = reasoner_settings(
        tiny_pack,
        port=0,
        backend="transformers",
        device="cpu",
        max_pairs_per_request=MAX_PAIRS,
        max_output_tokens=32,
        max_text_chars=200,
    )
    running = start_reasoner(settings, MemoryCache(16 * 1024 * 1024))
    yield running
    running.stop()


def _request(
    pairs: list[tuple[str, str]] | None = None, **fields: Any
) -> reasoner_pb2.DescribeDifferencesRequest:
    fields.setdefault("sampling", sampling())
    return reasoner_pb2.DescribeDifferencesRequest(
        pairs=[
            reasoner_pb2.CaptionPair(caption_a=a, caption_b=b) for a, b in (PAIRS if pairs is None else pairs)
        ],
        **fields,
    )


def test_one_answer_per_pair_in_order_as_plain_words_or_empty(reasoner: RunningReasoner) -> None:
    batches = reasoner.backend.batches
    response = reasoner.stub.DescribeDifferences(_request())
    assert reasoner.backend.batches == batches + 1  # the pairs go to the model together
    assert (response.template, response.template_version) == ("difference_instructcir", "1")
    assert response.model.name == "llm-tiny" and response.model.revision.startswith("sha256:")
    assert [t.stage for t in response.timings] == ["prompt", "generate"]
    assert [list(d.caption_indices) for d in response.differences] == [[0], [1], [2]]
    for difference in response.differences:
        assert difference.outcome in (PARSED, FALLBACK_EMPTY)
        assert not difference.cache_hit and difference.raw_output
        if difference.outcome == PARSED:
            assert PLAIN.match(difference.text) and difference.text == plain_words(difference.text)
            assert difference.fallback_reason == ""
        else:
            assert difference.text == "" and difference.fallback_reason


def test_a_pair_answers_the_same_alone_as_in_a_batch(reasoner: RunningReasoner) -> None:
    batched = reasoner.stub.DescribeDifferences(_request(bypass_cache=True))
    alone = reasoner.stub.DescribeDifferences(_request(PAIRS[1:2], bypass_cache=True))
    assert alone.differences[0].raw_output == batched.differences[1].raw_output
    assert list(alone.differences[0].caption_indices) == [0]


def test_answers_are_cached_per_pair_and_sampling(reasoner: RunningReasoner) -> None:
    first = reasoner.stub.DescribeDifferences(_request(PAIRS[:2], sampling=sampling(SHORT - 1)))
    batches = reasoner.backend.batches
    second = reasoner.stub.DescribeDifferences(_request(PAIRS[:2], sampling=sampling(SHORT - 1)))
    assert reasoner.backend.batches == batches
    assert all(d.cache_hit for d in second.differences)
    assert [d.raw_output for d in second.differences] == [d.raw_output for d in first.differences]
    # Swapped captions are another question (from B to A), not a cache hit.
    swapped = reasoner.stub.DescribeDifferences(_request([PAIRS[0][::-1]], sampling=sampling(SHORT - 1)))
    assert not swapped.differences[0].cache_hit and reasoner.backend.batches == batches + 1


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (_request(PAIRS + PAIRS), "RESOURCE_EXHAUSTED", "CIR_REASONER_MAX_PAIRS_PER_REQUEST"),
        (_request([]), "INVALID_ARGUMENT", "pairs is empty"),
        (_request([PAIRS[0], ("a dog", " \n ")]), "INVALID_ARGUMENT", "pairs[1].caption_b is empty"),
        (
            _request([PAIRS[0], ("a dog " * 50, "a cat")]),
            "INVALID_ARGUMENT",
            "pairs[1].caption_a has 300 characters, over the limit of 200 (CIR_REASONER_MAX_TEXT_CHARS)",
        ),
        (_request(template="edit_structural"), "INVALID_ARGUMENT", "is a edit template, not difference"),
        (_request(template="difference_x"), "NOT_FOUND", "unknown prompt template 'difference_x'"),
        (_request(sampling=sampling(max_tokens=33)), "INVALID_ARGUMENT", "CIR_REASONER_MAX_OUTPUT_TOKENS"),
    ],
)
def test_bad_requests_are_refused_with_a_message_that_says_what_to_fix(
    reasoner: RunningReasoner, request_: reasoner_pb2.DescribeDifferencesRequest, code: str, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        reasoner.stub.DescribeDifferences(request_)
    assert caught.value.code() == getattr(grpc.StatusCode, code)
    assert message in caught.value.details()


def test_the_template_is_listed_and_the_defaults_reported(reasoner: RunningReasoner) -> None:
    listed = reasoner.stub.ListTemplates(reasoner_pb2.ListTemplatesRequest()).templates
    tasks = {t.name: t.task for t in listed}
    assert tasks["difference_instructcir"] == reasoner_pb2.TEMPLATE_TASK_DIFFERENCE
    info = reasoner.stub.GetModelInfo(reasoner_pb2.GetModelInfoRequest())
    assert (info.default_difference_template, info.max_pairs_per_request) == (
        "difference_instructcir",
        MAX_PAIRS,
    )
