"""Prometheus metrics (cir_common.metrics): off by default; on, GET /metrics answers every family, and the
counters and histograms move by what happened. Scrapes are parsed with prometheus_client's own parser."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sys
import threading
import types
from pathlib import Path

import grpc
import pytest
from support.metrics_scrape import Scrape, delta, scrape

from cir.encoder.v1 import encoder_pb2, encoder_pb2_grpc
from cir_common import metrics
from cir_common.admission import AdmissionGate
from cir_common.batching import MicroBatcher
from cir_common.cache import MemoryCache, RedisCache, cache_key
from cir_common.config import ServiceSettings
from cir_common.errors import ConfigError, InvalidArgument, ResourceExhausted
from cir_common.server import ServiceHost
from cir_common.service_kit import StageTimer
from cir_common.telemetry import TELEMETRY
from cir_tools.local_redis import free_port

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "cir-suite.json"
SERVICE = "cir.encoder.v1.EncoderService"


@pytest.fixture
def endpoint():
    endpoint = metrics.install(ServiceSettings(metrics_port=free_port()), "probe")
    assert endpoint is not None
    yield endpoint
    endpoint.close()


async def _scrape(endpoint: metrics.MetricsEndpoint) -> Scrape:
    return await asyncio.to_thread(scrape, endpoint.url)  # the server thread answers; the loop stays free


class _Probe(encoder_pb2_grpc.EncoderServiceServicer):
    async def EmbedTexts(self, request, context):
        if not request.texts:
            raise InvalidArgument("texts is empty")
        return encoder_pb2.EmbedTextsResponse()


def test_off_by_default_serves_nothing_and_records_nothing():
    settings = ServiceSettings()
    assert settings.metrics_port == 0
    assert metrics.install(settings, "probe") is None
    assert not metrics.enabled()
    assert metrics.observe_rpc not in TELEMETRY.rpc_observers
    assert metrics.observe_stage not in TELEMETRY.stage_listeners

    def lookups() -> float | None:
        return metrics.REGISTRY.get_sample_value("cir_cache_lookups_total", {"kind": "off", "result": "miss"})

    before = lookups()
    metrics.cache_lookups(["cir:v1:off:a:b:c"], [None])
    metrics.count(metrics.SEARCHES, strategy="off")
    metrics.batch_done("off", 3, 0.1, 0.2)
    assert lookups() == before is None
    assert metrics.REGISTRY.get_sample_value("cir_retriever_searches_total", {"strategy": "off"}) is None
    assert metrics.REGISTRY.get_sample_value("cir_batcher_batch_items_count", {"batcher": "off"}) is None


async def test_rpcs_by_method_and_code_with_latency(endpoint):
    host = ServiceHost([SERVICE], ServiceSettings(port=0, shutdown_grace_s=5), display_name="probe")
    encoder_pb2_grpc.add_EncoderServiceServicer_to_server(_Probe(), host.server)
    port = await host.start()
    await host.set_ready()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = encoder_pb2_grpc.EncoderServiceStub(channel)
        before = await _scrape(endpoint)
        for _ in range(2):
            await stub.EmbedTexts(encoder_pb2.EmbedTextsRequest(texts=["a"]), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.EmbedTexts(encoder_pb2.EmbedTextsRequest(), timeout=10)
        after = await _scrape(endpoint)
    finally:
        await channel.close()
        await host.stop()
    labels = {"grpc_service": SERVICE, "grpc_method": "EmbedTexts"}
    assert delta(after, before, "cir_grpc_server_handled_total", grpc_code="OK", **labels) == 2
    assert delta(after, before, "cir_grpc_server_handled_total", grpc_code="INVALID_ARGUMENT", **labels) == 1
    assert delta(after, before, "cir_grpc_server_handling_seconds_count", **labels) == 3
    assert delta(after, before, "cir_grpc_server_handling_seconds_bucket", le="+Inf", **labels) == 3
    assert delta(after, before, "cir_grpc_server_handling_seconds_sum", **labels) > 0
    # The server's admission gate admitted all three (the refused one failed inside its slot).
    assert delta(after, before, "cir_admission_admitted_calls_total", gate="rpc") == 3
    assert after.value("cir_admission_running_calls", gate="rpc") == 0
    assert after.value("cir_service_info", service="probe") == 1
    assert after.types["cir_grpc_server_handled"] == "counter"
    assert after.types["cir_grpc_server_handling_seconds"] == "histogram"
    assert after.has("process_resident_memory_bytes")


async def test_stages_carry_the_strategy_of_the_search_they_belong_to(endpoint):
    before = await _scrape(endpoint)
    timer = StageTimer()
    with metrics.strategy_label("cvsi"):
        with timer.stage("embed_query"):
            pass

        async def stage_in_a_task() -> None:
            timer.record("captions", 5.0)

        await asyncio.create_task(stage_in_a_task())  # a task started inside the block inherits the label
    with timer.stage("embed_query"):
        pass
    after = await _scrape(endpoint)
    name = "cir_stage_duration_seconds_count"
    assert delta(after, before, name, stage="embed_query", strategy="cvsi") == 1
    assert delta(after, before, name, stage="captions", strategy="cvsi") == 1
    assert delta(after, before, name, stage="embed_query", strategy="") == 1
    assert delta(after, before, "cir_stage_duration_seconds_sum", stage="captions", strategy="cvsi") == 0.005


async def test_batches_queue_depth_and_rejections(endpoint):
    entered, release = threading.Event(), threading.Event()

    def run(_: str, items: list[int]) -> list[int]:
        entered.set()
        release.wait(30)
        return items

    batcher: MicroBatcher[str, int, int] = MicroBatcher(
        run, max_batch_size=4, window_s=0.01, name="metrics-test", max_pending_items=4
    )
    try:
        before = await _scrape(endpoint)
        # Both submits are pending before the worker task first runs: one batch of three.
        first = asyncio.gather(batcher.submit("k", [1, 2]), batcher.submit("k", [3]))
        assert await asyncio.to_thread(entered.wait, 30)
        waiting = asyncio.ensure_future(batcher.submit("k", [4, 5]))
        await asyncio.sleep(0)  # the submit ran: its items wait while the first batch runs
        with pytest.raises(ResourceExhausted):
            await batcher.submit("k", [6, 7, 8])  # 2 waiting + 3 > 4
        during = await _scrape(endpoint)
        release.set()
        assert await first == [[1, 2], [3]]
        assert await waiting == [4, 5]
        after = await _scrape(endpoint)
    finally:
        release.set()
        batcher.close()
    labels = {"batcher": "metrics-test"}
    assert during.value("cir_batcher_queued_items", **labels) == 2
    assert after.value("cir_batcher_queued_items", **labels) == 0
    assert after.value("cir_batcher_rejected_requests_total", **labels) == 1
    assert delta(after, before, "cir_batcher_batch_items_count", **labels) == 2
    assert delta(after, before, "cir_batcher_batch_items_sum", **labels) == 5
    assert delta(after, before, "cir_batcher_batch_items_bucket", le="2.0", **labels) == 1
    assert delta(after, before, "cir_batcher_batch_items_bucket", le="4.0", **labels) == 2
    assert delta(after, before, "cir_batcher_queue_wait_seconds_count", **labels) == 2
    assert delta(after, before, "cir_batcher_batch_duration_seconds_count", **labels) == 2


async def test_admission_rejections_by_gate_and_reason(endpoint):
    gate = AdmissionGate(1, 0, name="metrics-test")
    holding, release = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        async with gate.admit(lambda: None):
            holding.set()
            await release.wait()

    holder = asyncio.create_task(hold())
    await holding.wait()
    with pytest.raises(ResourceExhausted):
        async with gate.admit(lambda: None):
            pass
    during = await _scrape(endpoint)
    release.set()
    await holder
    after = await _scrape(endpoint)
    assert during.value("cir_admission_running_calls", gate="metrics-test") == 1
    assert during.value("cir_admission_queued_calls", gate="metrics-test") == 0
    assert after.value("cir_admission_rejected_calls_total", gate="metrics-test", reason="queue_full") == 1
    assert after.value("cir_admission_rejected_calls_total", gate="metrics-test", reason="shed") == 0
    assert after.value("cir_admission_admitted_calls_total", gate="metrics-test") == 1
    assert after.value("cir_admission_running_calls", gate="metrics-test") == 0


async def test_cache_lookups_by_kind_and_the_in_process_cache(endpoint):
    cache = MemoryCache(1024 * 1024)
    caption = cache_key("metrics_caption", "model@1", {}, "an image")
    vector = cache_key("metrics_vector", "model@1", {}, "an image")
    before = await _scrape(endpoint)
    await cache.set(caption, b"a red circle")
    assert await cache.get_many([caption, vector, caption, "not-a-cir-key"]) == [b"a red circle", None] * 2
    after = await _scrape(endpoint)
    lookups = "cir_cache_lookups_total"
    assert delta(after, before, lookups, kind="metrics_caption", result="hit") == 2
    assert delta(after, before, lookups, kind="metrics_caption", result="miss") == 0
    assert delta(after, before, lookups, kind="metrics_vector", result="miss") == 1
    assert delta(after, before, lookups, kind="other", result="miss") == 1
    assert after.value("cir_cache_memory_entries") == 1
    assert after.value("cir_cache_memory_bytes") == len(b"a red circle")
    assert not after.has("cir_cache_breaker_open")  # no Redis


async def test_redis_errors_by_kind_and_the_breaker(endpoint):
    key = cache_key("metrics_redis", "model@1", {}, "an image")
    # Nothing listens on this port: every call is refused at once.
    cache = RedisCache(f"redis://127.0.0.1:{free_port()}/0", failure_threshold=2, probe_interval_s=60)
    try:
        before = await _scrape(endpoint)
        assert await cache.get_many([key]) == [None]
        await cache.set_many({key: b"x"})  # the second failure in a row opens the breaker
        assert not cache.healthy
        assert await cache.get_many([key]) == [b"x"]  # from the in-process LRU, Redis left alone
        after = await _scrape(endpoint)
    finally:
        await cache.close()
    errors = "cir_cache_errors_total"
    assert delta(after, before, errors, kind="metrics_redis", operation="get") == 1
    assert delta(after, before, errors, kind="metrics_redis", operation="set") == 1
    assert delta(after, before, "cir_cache_lookups_total", kind="metrics_redis", result="miss") == 1
    assert delta(after, before, "cir_cache_lookups_total", kind="metrics_redis", result="hit") == 1
    assert after.value("cir_cache_breaker_open") == 1
    assert after.value("cir_cache_breaker_opens_total") == 1
    assert after.value("cir_cache_skipped_calls_total") == 1
    assert after.value("cir_cache_fallback_hits_total") == 1


def test_gpu_memory_from_torch_where_cuda_is_in_use(monkeypatch):
    gib = 1 << 30
    cuda = types.SimpleNamespace(
        is_initialized=lambda: True,
        device_count=lambda: 2,
        memory_allocated=lambda index: (index + 1) * gib,
        memory_reserved=lambda index: (index + 2) * gib,
        mem_get_info=lambda index: (10 * gib, 80 * gib),
    )
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    families = {family.name: family for family in metrics.gpu_families(None)}
    values = {(s.name, s.labels["device"]): s.value for f in families.values() for s in f.samples}
    assert values[("cir_gpu_memory_allocated_bytes", "1")] == 2 * gib
    assert values[("cir_gpu_memory_reserved_bytes", "0")] == 2 * gib
    assert values[("cir_gpu_memory_used_bytes", "0")] == 70 * gib
    assert values[("cir_gpu_memory_total_bytes", "1")] == 80 * gib


def test_no_gpu_memory_without_cuda(monkeypatch):
    cuda = types.SimpleNamespace(is_initialized=lambda: False)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    monkeypatch.setattr(metrics, "_NVML", metrics._Nvml(tried=True))  # and no NVML
    assert list(metrics.gpu_families(None)) == []


def test_a_port_in_use_or_shared_with_grpc_is_refused():
    with pytest.raises(ConfigError, match="gRPC port too"):
        metrics.install(ServiceSettings(port=50051, metrics_port=50051), "probe")
    with pytest.raises(ConfigError, match="not a TCP port"):
        metrics.install(ServiceSettings(metrics_port=70000), "probe")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=f"METRICS_PORT={port}|metrics_port={port}"):
            metrics.install(ServiceSettings(metrics_port=port), "probe")
    assert not metrics.enabled()


def test_names_follow_prometheus_conventions():
    names = metrics.exported_names()
    ours = {name for name in names if name.startswith("cir_")}
    assert len(ours) > 40
    for family in metrics.REGISTRY.collect():
        if family.name.startswith("cir_"):
            assert family.type in {"counter", "gauge", "histogram"}, family.name
    counters = {f.name for f in metrics.REGISTRY.collect() if f.type == "counter"}
    counters |= {f.name.removesuffix("_total") for f in metrics.FIGURES if f.counter}
    for name in ours:
        base = re.sub(r"_(total|bucket|sum|count)$", "", name)
        assert re.fullmatch(r"cir_[a-z][a-z0-9_]*", name), name
        assert name.endswith("_total") == (base in counters), f"{name}: only counters end in _total"
        # base units only: seconds and bytes, never milliseconds or kilobytes
        assert not re.search(r"_(ms|milliseconds|kb|mb|gb|kib|mib|gib|minutes)(_|$)", name), name


def test_every_metric_the_dashboard_queries_exists():
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "query", "definition") and isinstance(value, str):
                    expressions.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(dashboard)
    assert len(expressions) >= 20
    used = {m for e in expressions for m in re.findall(r"\b(?:cir|process|python)_[a-z0-9_]+", e)}
    missing = used - metrics.exported_names()
    assert not missing, f"the dashboard queries metrics cir_common.metrics does not export: {sorted(missing)}"
    assert {"cir_grpc_server_handled_total", "cir_batcher_queued_items", "cir_cache_lookups_total"} <= used
