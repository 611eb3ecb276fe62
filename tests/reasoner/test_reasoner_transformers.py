"""ReasonerService over real gRPC with the transformers backend and the tiny LLM of the tiny pack."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from reasoner_support import (
    CAPTIONS,
    INSTRUCTION,
    PARSED_OR_EMPTY,
    RunningReasoner,
    edit_request,
    encode_threads,
    loop_thread,
    reasoner_settings,
    sampling,
    start_reasoner,
)

from cir.common.v1 import common_pb2
from cir.reasoner.v1 import reasoner_pb2
from cir_common.cache import MemoryCache
from cir_reasoner.generation import PromptEncoder, Sampling
from cir_reasoner.parsing import extract_answer

PER_CAPTION = common_pb2.EDIT_MODE_PER_CAPTION
JOINED = common_pb2.EDIT_MODE_JOINED
USER_TEMPLATE = """
name = "short_edit"
version = "7"
task = "edit"
description = "A user's edit prompt."

[[blocks]]
text = "Describe the photo after the change, in a few words."
"""


@pytest.fixture(scope="module")
def reasoner(tiny_pack: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningReasoner]:
    user = tmp_path_factory.mktemp("templates") / "short_edit.toml"
    user.write_text(USER_TEMPLATE, encoding="utf-8")
    settings = reasoner_settings(
        tiny_pack,
        port=0,
        backend="transformers",
        device="cpu",
        template_paths=[str(user)],
        max_captions_per_request=16,
        max_output_tokens=32,
    )
    running = start_reasoner(settings, MemoryCache(16 * 1024 * 1024))
    yield running
    running.stop()


def test_health_turns_serving_only_after_the_model_loaded(reasoner: RunningReasoner) -> None:
    assert reasoner.health_transitions == (
        health_pb2.HealthCheckResponse.NOT_SERVING,
        health_pb2.HealthCheckResponse.SERVING,
    )


def test_model_info(reasoner: RunningReasoner, tiny_pack: Path) -> None:
    info = reasoner.stub.GetModelInfo(reasoner_pb2.GetModelInfoRequest())
    assert info.backend == "transformers"
    assert info.model.name == "llm-tiny" and info.model.family == "llama"
    assert info.model.revision.startswith("sha256:") and len(info.model.revision) == 7 + 64
    assert info.chat_template  # the tiny LLM ships a chat template: prompts go out as chat turns
    assert (info.default_sampling.temperature, info.default_sampling.max_tokens) == (0.0, 32)
    assert list(info.default_sampling.stop) == ["\n\n"] and info.default_sampling.top_p == 1.0
    assert (info.max_captions_per_request, info.max_output_tokens) == (16, 32)
    # this backend keeps no engine-side counters: they stay unset, not a misleading 0
    assert not info.HasField("generations_in_flight") and not info.HasField("generations_aborted")
    assert info.default_edit_template == "edit_structural"


def test_per_caption_edits_go_to_the_model_in_one_batch(reasoner: RunningReasoner) -> None:
    before = reasoner.backend.batches
    response = reasoner.stub.EditCaptions(edit_request(mode=PER_CAPTION, bypass_cache=True))
    assert reasoner.backend.batches == before + 1
    assert response.mode == PER_CAPTION and response.template == "edit_structural"
    assert (response.captions_used, response.captions_truncated) == (15, False)
    assert [list(e.caption_indices) for e in response.edits] == [[i] for i in range(15)]
    for edit in response.edits:
        assert edit.outcome in PARSED_OR_EMPTY and not edit.cache_hit
        assert edit.text == (extract_answer(edit.raw_output) or INSTRUCTION)
    assert [t.stage for t in response.timings] == ["prompt", "generate"]


def test_a_batched_edit_equals_the_same_edit_alone(reasoner: RunningReasoner) -> None:
    batch = reasoner.stub.EditCaptions(edit_request(CAPTIONS[:4], bypass_cache=True))
    alone = reasoner.stub.EditCaptions(edit_request(CAPTIONS[2:3], bypass_cache=True))
    assert batch.edits[2].raw_output == alone.edits[0].raw_output


def test_joined_mode_makes_one_edit_from_all_captions(reasoner: RunningReasoner) -> None:
    response = reasoner.stub.EditCaptions(edit_request(mode=JOINED, template="edit_contextual"))
    assert response.mode == JOINED and response.template == "edit_contextual"
    (edit,) = response.edits
    assert list(edit.caption_indices) == list(range(15)) and response.captions_used == 15
    assert edit.outcome in PARSED_OR_EMPTY


def test_added_objects_from_the_first_caption_or_all_joined(reasoner: RunningReasoner) -> None:
    def infer(selection: int) -> reasoner_pb2.InferAddedObjectsResponse:
        return reasoner.stub.InferAddedObjects(
            reasoner_pb2.InferAddedObjectsRequest(
                captions=CAPTIONS, instruction=INSTRUCTION, caption_selection=selection, sampling=sampling()
            )
        )

    default = infer(common_pb2.CAPTION_SELECTION_UNSPECIFIED)
    assert default.caption_selection == common_pb2.CAPTION_SELECTION_ALL_JOINED
    assert list(default.objects.caption_indices) == list(range(15)) and default.captions_used == 15
    assert default.template == "objects_added" and default.template_version == "1"
    first = infer(common_pb2.CAPTION_SELECTION_FIRST)
    assert first.caption_selection == common_pb2.CAPTION_SELECTION_FIRST
    assert list(first.objects.caption_indices) == [0] and first.captions_used == 1
    for objects in (default.objects, first.objects):
        assert objects.outcome in PARSED_OR_EMPTY
        assert objects.text == extract_answer(objects.raw_output)  # fallback for objects: ""


def test_cache_hits_skip_the_model(reasoner: RunningReasoner) -> None:
    request = edit_request(CAPTIONS[:5])
    first = reasoner.stub.EditCaptions(request)
    batches = reasoner.backend.batches
    second = reasoner.stub.EditCaptions(request)
    assert reasoner.backend.batches == batches
    assert all(e.cache_hit for e in second.edits)
    assert [e.raw_output for e in second.edits] == [e.raw_output for e in first.edits]
    assert [t.stage for t in second.timings] == ["prompt"]
    # Other sampling parameters are another cache entry; bypass_cache always reaches the model.
    reasoner.stub.EditCaptions(edit_request(CAPTIONS[:5], sampling=sampling(max_tokens=7)))
    assert reasoner.backend.batches == batches + 1
    reasoner.stub.EditCaptions(edit_request(CAPTIONS[:5], bypass_cache=True))
    assert reasoner.backend.batches == batches + 2


def test_the_prompt_budget_drops_captions_and_says_so(
    reasoner: RunningReasoner, monkeypatch: pytest.MonkeyPatch
) -> None:
    template = reasoner.servicer.core.templates.get("edit_structural", "edit")
    budget = reasoner.backend.prepare(template.render(", ".join(CAPTIONS[:6]), INSTRUCTION)).token_count
    monkeypatch.setattr(reasoner.servicer.core.settings, "max_prompt_tokens", budget)
    joined = reasoner.stub.EditCaptions(edit_request(mode=JOINED))
    assert (joined.captions_used, joined.captions_truncated) == (6, True)
    assert list(joined.edits[0].caption_indices) == list(range(6))
    long_caption = "a surfer " + "riding a very long wave " * 60
    per_caption = reasoner.stub.EditCaptions(edit_request([CAPTIONS[0], long_caption, CAPTIONS[1]]))
    assert (per_caption.captions_used, per_caption.captions_truncated) == (2, True)
    assert [list(e.caption_indices) for e in per_caption.edits] == [[0], [2]]
    with pytest.raises(grpc.RpcError) as caught:
        reasoner.stub.EditCaptions(edit_request([long_caption]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"over the budget of {budget} (CIR_REASONER_MAX_PROMPT_TOKENS)" in caught.value.details()


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (
            edit_request([f"caption {i}" for i in range(17)]),
            "RESOURCE_EXHAUSTED",
            "CIR_REASONER_MAX_CAPTIONS_PER_REQUEST",
        ),
        (edit_request([]), "INVALID_ARGUMENT", "captions is empty"),
        (edit_request(["a dog", "  \n "]), "INVALID_ARGUMENT", "captions[1] is empty"),
        (
            reasoner_pb2.EditCaptionsRequest(captions=["a dog"], instruction=" "),
            "INVALID_ARGUMENT",
            "instruction is empty",
        ),
        (
            edit_request(sampling=sampling(max_tokens=33)),
            "INVALID_ARGUMENT",
            "outside 1..32 (CIR_REASONER_MAX_OUTPUT_TOKENS)",
        ),
        (edit_request(sampling=sampling(temperature=3.0)), "INVALID_ARGUMENT", "temperature 3 is outside"),
        (edit_request(sampling=sampling(top_p=0.0)), "INVALID_ARGUMENT", "top_p 0 is outside"),
        (
            edit_request(sampling=sampling(stop=["a", "b", "c", "d", "e"])),
            "INVALID_ARGUMENT",
            "sampling.stop takes",
        ),
        (
            edit_request(template="edit_cirr"),
            "NOT_FOUND",
            "known: difference_instructcir, edit_contextual, edit_structural",
        ),
        (edit_request(template="objects_added"), "INVALID_ARGUMENT", "is a objects_added template, not edit"),
        (edit_request(mode=7), "INVALID_ARGUMENT", "unknown mode value 7"),
    ],
)
def test_bad_requests_are_refused_with_a_message_that_says_what_to_fix(
    reasoner: RunningReasoner, request_: reasoner_pb2.EditCaptionsRequest, code: str, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        reasoner.stub.EditCaptions(request_)
    assert caught.value.code() == getattr(grpc.StatusCode, code)
    assert message in caught.value.details()


def test_prompts_are_tokenized_off_the_event_loop(
    reasoner: RunningReasoner, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = encode_threads(reasoner, monkeypatch)
    reasoner.stub.EditCaptions(edit_request(CAPTIONS[:3], bypass_cache=True))
    reasoner.stub.EditCaptions(edit_request(mode=JOINED, bypass_cache=True))
    reasoner.stub.InferAddedObjects(
        reasoner_pb2.InferAddedObjectsRequest(
            captions=CAPTIONS[:2], instruction=INSTRUCTION, sampling=sampling(), bypass_cache=True
        )
    )
    assert len(threads) >= 3 + 1 + 1
    # Tokenizing on the loop would hold every other call of the process meanwhile, health checks included.
    assert loop_thread(reasoner) not in threads


LIMIT = 4096  # CIR_REASONER_MAX_TEXT_CHARS's default, which the fixture keeps


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (edit_request(["a dog", "x" * (LIMIT + 1)]), f"captions[1] has {LIMIT + 1} characters"),
        (edit_request(["a dog", " " * (LIMIT + 1)]), f"captions[1] has {LIMIT + 1} characters"),
        (edit_request(instruction="make it red " * 100_000), "instruction has 1200000 characters"),
        (edit_request(sampling=sampling(stop=["\n\n", "y" * 5000])), "sampling.stop[1] has 5000 characters"),
    ],
    ids=["caption", "blank-caption", "megabyte-instruction", "stop-string"],
)
def test_texts_over_the_length_limit_are_refused_before_any_tokenizing(
    reasoner: RunningReasoner,
    monkeypatch: pytest.MonkeyPatch,
    request_: reasoner_pb2.EditCaptionsRequest,
    message: str,
) -> None:
    threads = encode_threads(reasoner, monkeypatch)
    with pytest.raises(grpc.RpcError) as caught:
        reasoner.stub.EditCaptions(request_)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{message}, over the limit of {LIMIT} (CIR_REASONER_MAX_TEXT_CHARS)" in caught.value.details()
    assert threads == []


def test_texts_at_the_length_limit_are_answered(reasoner: RunningReasoner) -> None:
    words = itertools.cycle(INSTRUCTION.split())
    text = ""
    while len(text) < LIMIT:
        text += next(words) + " "
    caption, instruction = text[:LIMIT], text[:LIMIT]
    response = reasoner.stub.EditCaptions(
        edit_request([caption, CAPTIONS[0]], instruction=instruction, bypass_cache=True)
    )
    assert (response.captions_used, len(response.edits)) == (2, 2)


def test_an_unknown_template_name_is_echoed_cut(reasoner: RunningReasoner) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        reasoner.stub.EditCaptions(edit_request(template="t" * 100_000))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert f"unknown prompt template '{'t' * 80}...'" in caught.value.details()
    assert len(caught.value.details()) < 1000


def test_templates_over_grpc_builtins_and_a_user_file(reasoner: RunningReasoner) -> None:
    listed = reasoner.stub.ListTemplates(reasoner_pb2.ListTemplatesRequest()).templates
    assert [(t.name, t.builtin) for t in listed] == [
        ("difference_instructcir", True),
        ("edit_contextual", True),
        ("edit_structural", True),
        ("edit_structural_fashion", True),
        ("objects_added", True),
        ("short_edit", False),
    ]
    tasks = {t.name: t.task for t in listed}
    assert tasks["objects_added"] == reasoner_pb2.TEMPLATE_TASK_OBJECTS_ADDED
    assert tasks["short_edit"] == reasoner_pb2.TEMPLATE_TASK_EDIT
    response = reasoner.stub.EditCaptions(edit_request(CAPTIONS[:2], template="short_edit"))
    assert (response.template, response.template_version, len(response.edits)) == ("short_edit", "7", 2)
    with pytest.raises(grpc.RpcError) as caught:
        reasoner.stub.InferAddedObjects(
            reasoner_pb2.InferAddedObjectsRequest(
                captions=["a dog"], instruction="add a hat", template="objects"
            )
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    known = "known: difference_instructcir, edit_contextual"
    assert f"unknown prompt template 'objects'; {known}" in caught.value.details()
    assert "short_edit" in caught.value.details()


def test_a_past_deadline_stops_generation_and_reports_every_prompt(reasoner: RunningReasoner) -> None:
    backend = reasoner.backend
    prompts = [backend.prepare(f"Image Content: {c}\nInstruction: {INSTRUCTION}") for c in CAPTIONS[:3]]
    completions = reasoner.server.call(backend.generate(prompts, Sampling(max_tokens=32), time.monotonic()))
    assert [c.text for c in completions] == [None] * 3
    assert all("deadline" in c.error for c in completions)


def test_chat_models_get_their_chat_template_and_base_models_plain_text(reasoner: RunningReasoner) -> None:
    tokenizer = reasoner.backend.lm.tokenizer
    chat = PromptEncoder(tokenizer, "chat").encode("Instruction: make it red")
    plain = PromptEncoder(tokenizer, "completion").encode("Instruction: make it red")
    assert tokenizer.decode(chat) == "<s><|user|>\nInstruction: make it red</s>\n<|assistant|>\n"
    assert tokenizer.decode(plain) == "<s>Instruction: make it red"
    assert reasoner.backend.prompt_format == "chat"  # auto: the tiny LLM ships a chat template
