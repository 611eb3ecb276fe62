"""What a search's answer must say when it degrades, and the work its deadline cannot cover left unstarted.

The model services run as their own processes (tiny pack, vLLM CPU engine, real Redis); the retriever runs in
this process on loopback (`retriever_support`), so that a test can prime its stage estimates with known
durations and see every call it made to a model service. The reasoner may answer with up to 4000 tokens: the
random tiny LLM rarely stops by itself, so a generation cannot finish inside a few seconds' budget and the
reasoner answers in time with its fallbacks.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from PIL import Image, ImageDraw
from retriever.retriever_support import RunningRetriever, start_retriever

from cir.retriever.v1 import retriever_pb2
from cir_client.retriever import index_folder, search_request
from cir_retriever.core import Retriever
from cir_retriever.settings import RetrieverSettings
from cir_tools.local_suite import LocalSuite

pytestmark = pytest.mark.slow

COLLECTION = "shapes"
# The retriever's reasoner budget in the fallback test: generation stops 0.5 s before it (the reasoner's
# margin), far short of what 4000 tokens take, so the reasoner answers OK with items fallen back.
LLM_BUDGET_S = 5.0
COUNTED = re.compile(r"^(\d+) of (\d+) edited captions fell back: (.+)$")
TEN_MINUTES_MS = 600_000.0


@pytest.fixture(scope="module")
def models(tiny_pack, tmp_path_factory) -> Iterator[LocalSuite]:
    suite = LocalSuite(
        profile=tiny_pack,
        workdir=tmp_path_factory.mktemp("degradations"),
        extra_env={"CIR_REASONER_MAX_OUTPUT_TOKENS": "4000"},
    )
    suite.start(timeout_s=400, names=("encoder", "captioner", "reasoner"))
    yield suite
    suite.stop()


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gallery")
    colours = [(214, 39, 40), (44, 160, 44), (31, 119, 180)]
    for index, colour in enumerate(colours):
        for shape in ("square", "circle"):
            image = Image.new("RGB", (96, 96), (245, 245, 240))
            pen = ImageDraw.Draw(image)
            (pen.rectangle if shape == "square" else pen.ellipse)((24, 24, 72, 72), fill=colour)
            image.save(folder / f"{shape}-{index}.png")
    return folder


@pytest.fixture(scope="module")
def store(models, gallery, tmp_path_factory) -> Path:
    """A gallery store with the collection indexed; each test opens it with a retriever of its own."""
    store_dir = tmp_path_factory.mktemp("collections")
    indexing = start_retriever(_settings(models, store_dir))
    try:
        assert index_folder(indexing.stub, COLLECTION, gallery).counts == {"indexed": 6}
    finally:
        indexing.stop()
    return store_dir


@pytest.fixture
def start(models, store) -> Iterator[Callable[..., RunningRetriever]]:
    """`start(**settings)`: a fresh retriever (no stage estimates, zero counters) on the indexed store."""
    started: list[RunningRetriever] = []

    def run(**overrides: object) -> RunningRetriever:
        retriever = start_retriever(_settings(models, store, **overrides))
        started.append(retriever)
        return retriever

    yield run
    for retriever in started:
        retriever.stop()


def _settings(models: LocalSuite, store_dir: Path, **overrides: object) -> RetrieverSettings:
    settings = RetrieverSettings(
        encoder_address=f"127.0.0.1:{models.ports['encoder']}",
        captioner_address=f"127.0.0.1:{models.ports['captioner']}",
        reasoner_address=f"127.0.0.1:{models.ports['reasoner']}",
        store_dir=str(store_dir),
    )
    for name, value in overrides.items():
        assert hasattr(settings, name), name
        setattr(settings, name, value)
    return settings


def _prime(retriever: RunningRetriever, durations_ms: dict[str, float]) -> None:
    """Gives the retriever's estimator known durations, as if earlier searches had observed them."""

    def observe(core: Retriever) -> None:
        for stage, milliseconds in durations_ms.items():
            core.pipeline.estimates.observe(stage, milliseconds)

    retriever.on_loop(observe)


def _assert_stats_count(retriever: RunningRetriever, responses: list[retriever_pb2.SearchResponse]) -> None:
    """GetServiceStats counts exactly the searches answered and the degradations they listed."""
    stats = retriever.stats()
    assert stats.searches == len(responses)
    assert stats.degraded_searches == sum(1 for r in responses if r.degradations)
    listed = Counter(d.stage for r in responses for d in r.degradations)
    assert dict(stats.degradations_by_stage) == dict(listed)


def test_llm_items_that_fell_back_in_an_ok_answer_are_listed_with_their_count(start):
    """The reasoner's generation cannot finish in its budget: it answers OK with its items fallen back, and
    the search lists how many of its edited captions (and whether the added objects) fell back."""
    retriever = start(reasoner_budget_s=LLM_BUDGET_S)
    responses = []
    # A loaded machine may make the reasoner overshoot its own margin: that attempt degrades as a reasoner
    # timeout instead (also listed), and another instruction (nothing cached) is tried; a bound, not a timing.
    for attempt in range(4):
        request = search_request(
            COLLECTION, f"now it is at night, take {attempt}", reference_id="square-1", explain=True
        )
        response = retriever.stub.Search(request, timeout=300)
        responses.append(response)
        counted = [d for d in response.degradations if d.stage == "edit_captions" and COUNTED.match(d.reason)]
        if counted:
            break
    else:
        pytest.fail(
            f"no degradation counted the edited captions that fell back: {responses[-1].degradations}"
        )

    (listed,) = counted
    fell, total, why = COUNTED.match(listed.reason).groups()  # type: ignore[union-attr]
    outcomes = list(response.explanation.edit_outcomes)
    fell_back = [o.removeprefix("fallback: ") for o in outcomes if o.startswith("fallback: ")]
    assert int(total) == len(outcomes) == 15
    assert int(fell) == len(fell_back) >= 1
    assert Counter(fell_back).most_common(1)[0][0] in why
    assert listed.effect == f"{fell} of {total} edited captions replaced by the modification text"
    # Added objects: listed exactly when they fell back (an empty answer leaves the prompt without them too).
    objects = [d for d in response.degradations if d.stage == "added_objects"]
    objects_outcome = response.explanation.objects_outcome
    if objects_outcome.startswith("fallback: "):
        assert [d.reason for d in objects] == [
            f"the added objects fell back: {objects_outcome.removeprefix('fallback: ')}"
        ]
        assert response.explanation.fine_grained_prompt.endswith("And the photo should have .")
    else:
        assert objects == []
    assert len(response.hits) == response.collection_size == 6
    _assert_stats_count(retriever, responses)


def test_a_deadline_shorter_than_the_essential_stages_is_refused_before_any_model_call(start, gallery):
    retriever = start()
    _prime(
        retriever,
        {"embed_reference_image": 40_000.0, "embed_pseudo_token_prompt": 30_000.0, "search": 5.0},
    )
    by_bytes = search_request(COLLECTION, "now in blue", image=gallery / "square-1.png", strategy="cvsi")
    with pytest.raises(grpc.RpcError) as err:
        retriever.stub.Search(by_bytes, timeout=30)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    details = err.value.details()
    assert "strategy cvsi was not started" in details, details
    assert "embed_reference_image -> embed_pseudo_token_prompt -> search" in details
    assert "70005 ms" in details
    assert retriever.calls.counts() == Counter(), "a model service was called for a search shed at admission"

    # By id the stored image embedding stands in: image_only's essential path is the store search alone.
    by_id = search_request(COLLECTION, "now in blue", reference_id="square-1", strategy="image_only")
    assert retriever.stub.Search(by_id, timeout=30).hits[0].id == "square-1"


def test_llm_stages_the_deadline_cannot_cover_are_skipped_and_listed(start):
    retriever = start()
    _prime(retriever, {"edit_captions": TEN_MINUTES_MS, "added_objects": TEN_MINUTES_MS})
    text = "with a striped background"
    request = search_request(COLLECTION, text, reference_id="circle-2", strategy="cvsi", explain=True)
    response = retriever.stub.Search(request, timeout=120)

    assert len(response.hits) == response.collection_size == 6
    listed = {d.stage: d for d in response.degradations}
    assert set(listed) == {"edit_captions", "added_objects"}
    for stage in ("edit_captions", "added_objects"):
        assert re.fullmatch(
            rf"skipped: estimated {TEN_MINUTES_MS:.0f} ms .*\), \d+ ms left", listed[stage].reason
        ), listed[stage].reason
    assert listed["edit_captions"].effect == "edited captions replaced by the modification text"
    assert list(response.explanation.edited_captions) == [text]
    assert response.explanation.objects_outcome.startswith("fallback: skipped: estimated")
    calls = retriever.calls.counts()
    assert calls["EditCaptions"] == 0 and calls["InferAddedObjects"] == 0, calls
    # The essential stages ran: the fallback text and the F_G prompt were embedded.
    assert [list(r.texts) for r in retriever.calls.of("EmbedTexts")] == [[text]]
    assert calls["EmbedComposedPrompts"] == 1
    _assert_stats_count(retriever, [response])


def test_an_essential_stage_the_deadline_cannot_cover_fails_at_once(start, gallery):
    """The reference's caption embeddings run only when it has captions (not part of the admission
    estimate): when their turn comes and the time left cannot cover them, the search fails there."""
    retriever = start()
    _prime(retriever, {"embed_reference_captions": TEN_MINUTES_MS})
    text = "the same shape but green"
    request = search_request(COLLECTION, text, image=gallery / "circle-0.png", strategy="weimocir")
    with pytest.raises(grpc.RpcError) as err:
        retriever.stub.Search(request, timeout=120)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    details = err.value.details()
    assert details.startswith("embed_reference_captions was not started"), details
    assert f"estimated {TEN_MINUTES_MS:.0f} ms" in details
    calls = retriever.calls.counts()
    assert calls["GenerateCaptions"] == 1  # captions came, so the caption embeddings were next
    # ...and were never sent: the only texts embedded are the modification text's
    assert all(list(r.texts) == [text] for r in retriever.calls.of("EmbedTexts")), calls
    assert retriever.stats().searches == 0
