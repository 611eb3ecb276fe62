"""Prometheus metrics end to end: the four services of a local suite (tiny models, real Redis, vLLM on CPU)
with CIR_<SERVICE>_METRICS_PORT set; an ingest and a search go through, and each service's /metrics, parsed
with prometheus_client's parser, moved by what those calls did."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image, ImageDraw
from support.metrics_scrape import Scrape, delta, scrape

from cir.common.v1 import common_pb2
from cir_client.retriever import connect, index_folder, search_request
from cir_common.vocabulary import SERVICES, Service
from cir_tools.local_redis import free_port
from cir_tools.local_suite import LocalSuite

pytestmark = pytest.mark.slow

IMAGES = 4
HANDLED = "cir_grpc_server_handled_total"
LOOKUPS = "cir_cache_lookups_total"
STAGE_COUNT = "cir_stage_duration_seconds_count"
# The query stage -> the model service's RPC it makes (any other embed_* stage is one EmbedTexts call).
STAGE_RPCS = {
    "embed_reference_image": (Service.ENCODER, "EmbedImages"),
    "embed_pseudo_token_prompt": (Service.ENCODER, "EmbedComposedPrompts"),
    "captions": (Service.CAPTIONER, "GenerateCaptions"),
    "edit_captions": (Service.REASONER, "EditCaptions"),
    "added_objects": (Service.REASONER, "InferAddedObjects"),
}
SETTLE_S = 60.0  # a downstream call the retriever gave up on may end a little after its search answered


@pytest.fixture(scope="module")
def metrics_ports() -> dict[Service, int]:
    return {service: free_port() for service in SERVICES}


@pytest.fixture(scope="module")
def suite(tiny_pack, tmp_path_factory, metrics_ports):
    env = {f"{SERVICES[s].env_prefix}METRICS_PORT": str(port) for s, port in metrics_ports.items()}
    env["CIR_REASONER_MAX_OUTPUT_TOKENS"] = "24"  # short generations: the CPU engine answers quickly
    suite = LocalSuite(profile=tiny_pack, workdir=tmp_path_factory.mktemp("suite"), extra_env=env)
    suite.start(timeout_s=400)
    yield suite
    suite.stop()


@pytest.fixture(scope="module")
def urls(suite, metrics_ports) -> dict[Service, str]:
    return {service: f"http://127.0.0.1:{port}/metrics" for service, port in metrics_ports.items()}


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("metrics-gallery")
    colours = [(214, 39, 40), (44, 160, 44), (31, 119, 180), (238, 200, 30)]
    for index, colour in enumerate(colours[:IMAGES]):
        image = Image.new("RGB", (64 + 8 * index, 64), (245, 245, 240))
        ImageDraw.Draw(image).ellipse((12, 12, 52, 52), fill=colour)
        image.save(folder / f"shape-{index}.png")
    return folder


def _scrape_all(urls: dict[Service, str]) -> dict[Service, Scrape]:
    return {service: scrape(url) for service, url in urls.items()}


def _handled(scrapes: dict[Service, Scrape], service: Service, method: str | None = None) -> float:
    labels = {"grpc_service": SERVICES[service].grpc_name}
    if method is not None:
        labels["grpc_method"] = method
    return scrapes[service].value(HANDLED, **labels)


def _settled(urls, before, expected: dict[Service, int]) -> dict[Service, Scrape]:
    """Scrapes until every service has finished the expected number of RPCs more than `before` (bounded)."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        after = _scrape_all(urls)
        moved = {s: _handled(after, s) - _handled(before, s) for s in SERVICES}
        if all(moved[s] >= expected.get(s, 0) for s in SERVICES) or time.monotonic() > deadline:
            return after
        time.sleep(0.5)


@dataclass(frozen=True)
class Moved:
    """How far each service's samples moved between two scrapes of all four."""

    before: dict[Service, Scrape]
    after: dict[Service, Scrape]

    def __call__(self, service: Service, name: str, **labels: str) -> float:
        return delta(self.after[service], self.before[service], name, **labels)

    def rpcs(self, service: Service, method: str | None = None) -> float:
        return _handled(self.after, service, method) - _handled(self.before, service, method)


def test_an_ingest_and_a_search_move_every_service_s_metrics(suite, urls, gallery):
    stub = connect(suite.retriever_address)
    start = _scrape_all(urls)
    for service in SERVICES:
        assert start[service].value("cir_service_info", service=service.value) == 1
        assert start[service].value("process_resident_memory_bytes") > 0

    # -- ingest: one batch of new images through the captioner and the encoder -------------------------------
    summary = index_folder(stub, "metrics", gallery)
    assert summary.counts == {"indexed": IMAGES} and summary.failures == []
    # Encoder: GetModelInfo (a new collection asks whether an InstructCIR checkpoint is served), EmbedImages
    # and EmbedTexts.
    calls = {Service.RETRIEVER: 1, Service.ENCODER: 3, Service.CAPTIONER: 1, Service.REASONER: 0}
    ingested = _settled(urls, start, calls)
    moved = Moved(start, ingested)
    for service, count in calls.items():
        assert moved.rpcs(service) == count, service
    retriever, encoder, captioner = Service.RETRIEVER, Service.ENCODER, Service.CAPTIONER
    assert moved(retriever, HANDLED, grpc_method="IngestImages", grpc_code="OK") == 1
    assert moved(retriever, "cir_grpc_server_handling_seconds_count", grpc_method="IngestImages") == 1
    assert moved(retriever, "cir_retriever_ingested_images_total", status="indexed") == IMAGES
    assert ingested[retriever].value("cir_retriever_collection_images", collection="metrics") == IMAGES

    assert moved(encoder, HANDLED, grpc_method="GetModelInfo", grpc_code="OK") == 1
    assert moved(encoder, HANDLED, grpc_method="EmbedImages", grpc_code="OK") == 1
    assert moved(encoder, HANDLED, grpc_method="EmbedTexts", grpc_code="OK") == 1
    assert moved(encoder, "cir_admission_admitted_calls_total", gate="rpc") == 3
    # New images: each image embedding and caption list is a miss of the shared (Redis) cache.
    assert moved(encoder, LOOKUPS, kind="clip_image", result="miss") == IMAGES
    assert moved(encoder, "cir_batcher_batch_items_sum", batcher="images") == IMAGES
    assert moved(encoder, "cir_batcher_queue_wait_seconds_count", batcher="images") >= 1
    assert moved(encoder, "cir_batcher_batch_duration_seconds_count", batcher="images") >= 1
    assert ingested[encoder].value("cir_batcher_queued_items", batcher="images") == 0
    assert ingested[encoder].value("cir_cache_breaker_open") == 0

    assert moved(captioner, HANDLED, grpc_method="GenerateCaptions", grpc_code="OK") == 1
    assert moved(captioner, LOOKUPS, kind="blip2_captions", result="miss") == IMAGES
    assert moved(captioner, "cir_batcher_batch_items_sum", batcher="captions") == IMAGES

    # -- search: by a stored reference, so each model call is one of the stages the response lists ---------
    request = search_request("metrics", "the same shape but blue", reference_id="shape-0", explain=True)
    response = stub.Search(request, timeout=300)
    # The ingest embedded every caption of every image once (looked up in the cache, hit or miss).
    captions_per_image = len(response.explanation.captions)
    assert captions_per_image >= 1
    assert moved(encoder, LOOKUPS, kind="clip_text") == IMAGES * captions_per_image

    stages = Counter(timing.stage for timing in response.timings)
    methods: Counter[tuple[Service, str]] = Counter()
    for stage, times in stages.items():
        if stage in STAGE_RPCS:
            methods[STAGE_RPCS[stage]] += times
        elif stage.startswith("embed_"):
            methods[(Service.ENCODER, "EmbedTexts")] += times
    calls = Counter({Service.RETRIEVER: 1})
    for (service, _), times in methods.items():
        calls[service] += times
    searched = _settled(urls, ingested, calls)
    moved = Moved(ingested, searched)
    # The search checks the serving encoder's identity before any stage: one GetModelInfo, or none while the
    # answer the ingest asked for is still cached (the retriever keeps it 30 s).
    info_calls = int(moved.rpcs(Service.ENCODER, "GetModelInfo"))
    assert info_calls in (0, 1)
    methods[(Service.ENCODER, "GetModelInfo")] = info_calls
    calls[Service.ENCODER] += info_calls
    for service in SERVICES:
        assert moved.rpcs(service) == calls[service], service
    for (service, method), times in methods.items():
        assert moved.rpcs(service, method) == times, method

    strategy = "cvsi"  # search_request's default
    assert moved(retriever, HANDLED, grpc_method="Search", grpc_code="OK") == 1
    assert moved(retriever, "cir_retriever_searches_total", strategy=strategy) == 1
    degraded = Counter(d.stage for d in response.degradations)
    assert moved(retriever, "cir_retriever_degraded_searches_total", strategy=strategy) == bool(degraded)
    for stage, times in degraded.items():
        assert moved(retriever, "cir_retriever_degradations_total", stage=stage) == times
    assert stages["search"] == 1
    for stage, times in stages.items():
        assert moved(retriever, STAGE_COUNT, stage=stage, strategy=strategy) == times, stage
    assert searched[retriever].value("cir_retriever_store_memory_bytes") > 0  # the search loaded them
    assert moved(retriever, "cir_admission_admitted_calls_total", gate="generative_search") == 1

    reasoner = Service.REASONER
    # One generation per distinct prompt: the objects, and one edit per distinct caption (the tiny captioner
    # repeats itself; equal prompts of one request are generated once) or one for all joined.
    per_caption = response.resolved.edit_mode == common_pb2.EDIT_MODE_PER_CAPTION
    edits = len(set(response.explanation.captions)) if per_caption else 1
    answers = methods[(reasoner, "InferAddedObjects")] + methods[(reasoner, "EditCaptions")] * edits
    assert answers >= 1, f"cvsi asks the reasoner for the added objects; stages: {dict(stages)}"
    assert moved(reasoner, "cir_reasoner_generations_total") == answers
    if moved(reasoner, "cir_reasoner_generations_total", result="completed"):
        assert moved(reasoner, "cir_reasoner_generated_tokens_total") > 0
    assert moved(reasoner, "cir_reasoner_prefix_cache_queried_tokens_total") > 0
    assert moved(reasoner, STAGE_COUNT, stage="generate") >= 1
    assert searched[reasoner].value("cir_reasoner_unfinished_requests") == 0
    assert searched[reasoner].has("cir_reasoner_waiting_requests")
    assert searched[reasoner].has("cir_reasoner_running_requests")
