"""Prometheus metrics of a service process, served over HTTP on their own port (`metrics_port`; 0 = off).

Off (the default) nothing is served, nothing registers with `cir_common.telemetry`, and every recording
function below returns after checking one module variable. On (`install`), `GET /metrics` on
`settings.host:settings.metrics_port` answers the families of this module's registry:

- events observed where they happen: every finished RPC (by method and status code, with its latency), every
  stage of a request (`StageTimer`; the retriever labels its stages with the search's strategy), every batch a
  micro-batcher runs, every cache lookup (by the kind of the key), the retriever's searches, degradations and
  ingested images, the reasoner's generations;
- figures the code keeps anyway, read when Prometheus scrapes (`watch`): admission gates, micro-batcher
  queues, the cache's breaker and in-process LRU, the gallery store's collections and memory, the reasoner
  engine's requests and prefix cache, GPU memory where CUDA is in use; nothing is counted twice for them.

Names follow Prometheus' conventions: the `cir_` prefix, base units in the name (`_seconds`, `_bytes`),
`_total` on counters. `exported_names()` lists every sample name this module can export (the Grafana dashboard
and the Kubernetes autoscaling rules are checked against it).

Process-wide, like `cir_common.telemetry`: one service runs per process. Tests may install and close an
endpoint several times in one process; the counters then keep counting across installs (compare deltas).
"""

from __future__ import annotations

import logging
import sys
import threading
import weakref
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from cir_common.config import ServiceSettings
from cir_common.errors import ConfigError
from cir_common.telemetry import TELEMETRY

if TYPE_CHECKING:
    import grpc

log = logging.getLogger(__name__)

OwnerT = TypeVar("OwnerT")

REGISTRY = CollectorRegistry(auto_describe=True)
# The process's CPU, memory, file descriptors and garbage collections, as every Python exporter has them.
for _standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_standard)

# Latencies from a cache hit (under a millisecond) to a long generation or an ingest stream.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0
)  # fmt: skip
WAIT_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

# --- observed where they happen ---------------------------------------------------------------------------

RPC_HANDLED = Counter(
    "cir_grpc_server_handled_total",
    "RPCs finished by the server, by method and status code (health and reflection apart).",
    ["grpc_service", "grpc_method", "grpc_code"],
    registry=REGISTRY,
)
RPC_SECONDS = Histogram(
    "cir_grpc_server_handling_seconds",
    "Time from an RPC's arrival to its end, admission queueing included.",
    ["grpc_service", "grpc_method"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
STAGE_SECONDS = Histogram(
    "cir_stage_duration_seconds",
    "Duration of each stage of a request (the timings a response reports); the retriever's stages carry the "
    "search's strategy, other services' an empty one.",
    ["stage", "strategy"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
BATCH_ITEMS = Histogram(
    "cir_batcher_batch_items",
    "Items in each batch a micro-batcher gave the model (count: batches, sum: items).",
    ["batcher"],
    buckets=BATCH_BUCKETS,
    registry=REGISTRY,
)
BATCH_QUEUE_WAIT = Histogram(
    "cir_batcher_queue_wait_seconds",
    "How long the oldest item of each batch waited for the model.",
    ["batcher"],
    buckets=WAIT_BUCKETS,
    registry=REGISTRY,
)
BATCH_SECONDS = Histogram(
    "cir_batcher_batch_duration_seconds",
    "Model time of each batch (a batch that failed and was split includes the re-runs of its halves).",
    ["batcher"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
CACHE_LOOKUPS = Counter(
    "cir_cache_lookups_total",
    "Keys looked up in the shared cache, by the kind of value and whether it was found (hit / miss).",
    ["kind", "result"],
    registry=REGISTRY,
)
CACHE_ERRORS = Counter(
    "cir_cache_errors_total",
    "Redis calls that failed or were refused, by the kind of value and operation (get / set); the request "
    "went on without the cache.",
    ["kind", "operation"],
    registry=REGISTRY,
)
SEARCHES = Counter(
    "cir_retriever_searches_total",
    "Searches answered, by strategy.",
    ["strategy"],
    registry=REGISTRY,
)
DEGRADED_SEARCHES = Counter(
    "cir_retriever_degraded_searches_total",
    "Searches answered with at least one stage degraded, by strategy.",
    ["strategy"],
    registry=REGISTRY,
)
DEGRADATIONS = Counter(
    "cir_retriever_degradations_total",
    "Stages that degraded to their fallback in answered searches, by stage.",
    ["stage"],
    registry=REGISTRY,
)
INGESTED_IMAGES = Counter(
    "cir_retriever_ingested_images_total",
    "Images of ingest streams by outcome: indexed (new), replaced, unchanged, failed.",
    ["status"],
    registry=REGISTRY,
)
GENERATIONS = Counter(
    "cir_reasoner_generations_total",
    "LLM generations run (cache misses), by result: completed, or failed (error, deadline, abort).",
    ["result"],
    registry=REGISTRY,
)
GENERATED_TOKENS = Counter(
    "cir_reasoner_generated_tokens_total",
    "Tokens the LLM generated.",
    registry=REGISTRY,
)
SERVICE_INFO = Gauge(
    "cir_service_info",
    "Always 1: which CIR service this process runs.",
    ["service"],
    registry=REGISTRY,
)


# --- read from the code's own figures at scrape time ------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """A family whose values a `watch`ed source reads at scrape time from figures the code keeps anyway."""

    name: str
    documentation: str
    labels: tuple[str, ...] = ()
    counter: bool = False

    def family(self, rows: Iterable[tuple[Sequence[str], float]]) -> Metric:
        """The family with one sample per (label values, value) row."""
        kind = CounterMetricFamily if self.counter else GaugeMetricFamily
        metric = kind(self.name, self.documentation, labels=self.labels)
        for labels, value in rows:
            metric.add_metric(list(labels), value)
        return metric

    def one(self, value: float, *labels: str) -> Metric:
        return self.family([(labels, value)])


ADMISSION_RUNNING = Figure(
    "cir_admission_running_calls", "Calls holding a slot of an admission gate now.", ("gate",)
)
ADMISSION_QUEUED = Figure(
    "cir_admission_queued_calls", "Calls waiting for a slot of an admission gate now.", ("gate",)
)
ADMISSION_ADMITTED = Figure(
    "cir_admission_admitted_calls_total",
    "Calls that got a slot (at once or after queueing).",
    ("gate",),
    True,
)
ADMISSION_REJECTED = Figure(
    "cir_admission_rejected_calls_total",
    "Calls that never ran, by reason: queue_full and shed (RESOURCE_EXHAUSTED at once), queue_timeout (the "
    "deadline passed while queued).",
    ("gate", "reason"),
    True,
)
BATCHER_QUEUED = Figure(
    "cir_batcher_queued_items",
    "Items waiting for the model in a micro-batcher now (the batch running apart): the autoscaling signal.",
    ("batcher",),
)
BATCHER_REJECTED = Figure(
    "cir_batcher_rejected_requests_total",
    "Requests refused because the micro-batcher's queue was full (max_pending_batch_items).",
    ("batcher",),
    True,
)
BATCHER_FAILED = Figure(
    "cir_batcher_failed_items_total",
    "Items whose model call failed (alone, after splitting).",
    ("batcher",),
    True,
)
CACHE_BREAKER_OPEN = Figure(
    "cir_cache_breaker_open", "1 while the Redis breaker is open (the in-process LRU serves alone), else 0."
)
CACHE_BREAKER_OPENS = Figure("cir_cache_breaker_opens_total", "Times the Redis breaker opened.", counter=True)
CACHE_SKIPPED = Figure(
    "cir_cache_skipped_calls_total",
    "Cache calls not sent to Redis because the breaker was open.",
    counter=True,
)
CACHE_FALLBACK_HITS = Figure(
    "cir_cache_fallback_hits_total", "Hits served by the in-process LRU in front of Redis.", counter=True
)
CACHE_MEMORY_ENTRIES = Figure("cir_cache_memory_entries", "Entries in the in-process LRU cache.")
CACHE_MEMORY_BYTES = Figure("cir_cache_memory_bytes", "Bytes of values in the in-process LRU cache.")
COLLECTION_IMAGES = Figure(
    "cir_retriever_collection_images", "Images in each collection of the gallery store.", ("collection",)
)
STORE_MEMORY = Figure(
    "cir_retriever_store_memory_bytes",
    "Bytes the local gallery store's in-memory search matrices hold (allocated capacity; milvus: none).",
)
REASONER_RUNNING = Figure(
    "cir_reasoner_running_requests", "Generation requests the vLLM scheduler runs now (its last step)."
)
REASONER_WAITING = Figure(
    "cir_reasoner_waiting_requests",
    "Generation requests waiting in the vLLM scheduler now (its last step): the autoscaling signal.",
)
REASONER_UNFINISHED = Figure(
    "cir_reasoner_unfinished_requests", "Generation requests the engine holds now (running or waiting)."
)
REASONER_ABORTED = Figure(
    "cir_reasoner_aborted_generations_total",
    "Generations aborted in the engine (deadline passed or caller gone).",
    counter=True,
)
REASONER_PREFIX_QUERIES = Figure(
    "cir_reasoner_prefix_cache_queried_tokens_total",
    "Prompt tokens looked up in vLLM's prefix cache (hit rate: hit tokens / queried tokens).",
    counter=True,
)
REASONER_PREFIX_HITS = Figure(
    "cir_reasoner_prefix_cache_hit_tokens_total", "Prompt tokens found in vLLM's prefix cache.", counter=True
)
GPU_ALLOCATED = Figure(
    "cir_gpu_memory_allocated_bytes", "GPU memory this process's torch tensors hold.", ("device",)
)
GPU_RESERVED = Figure(
    "cir_gpu_memory_reserved_bytes",
    "GPU memory this process's torch caching allocator reserved.",
    ("device",),
)
GPU_USED = Figure(
    "cir_gpu_memory_used_bytes", "GPU memory in use on the device, by every process.", ("device",)
)
GPU_TOTAL = Figure("cir_gpu_memory_total_bytes", "GPU memory of the device.", ("device",))

FIGURES: tuple[Figure, ...] = tuple(value for value in list(globals().values()) if isinstance(value, Figure))


_SAMPLE_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "info": ("_info",)}


def exported_samples() -> dict[str, str]:
    """Every sample name this module can export, with the type of its family: `x_total` -> counter,
    `y_bucket` -> histogram, `z` -> gauge (the registry's families and every Figure)."""
    families = {family.name: family.type for family in REGISTRY.collect()}
    families |= {f.name.removesuffix("_total"): "counter" if f.counter else "gauge" for f in FIGURES}
    return {
        name + suffix: kind for name, kind in families.items() for suffix in _SAMPLE_SUFFIXES.get(kind, ("",))
    }


def exported_names() -> set[str]:
    """Every sample name this module can export (e.g. `x_total`, `y_bucket`)."""
    return set(exported_samples())


# --- the state and the recording functions ----------------------------------------------------------------


@dataclass
class _State:
    on: bool = False


_STATE = _State()
_STRATEGY: ContextVar[str] = ContextVar("cir_metrics_strategy", default="")


def enabled() -> bool:
    return _STATE.on


def count(counter: Counter, amount: float = 1.0, **labels: str) -> None:
    """`counter` (with `labels`) grows by `amount`, when metrics are on."""
    if _STATE.on and amount:
        (counter.labels(**labels) if labels else counter).inc(amount)


@contextmanager
def strategy_label(strategy: str) -> Iterator[None]:
    """Stages recorded in the block (and in the tasks it starts) carry `strategy` in their metrics."""
    token = _STRATEGY.set(strategy)
    try:
        yield
    finally:
        _STRATEGY.reset(token)


_CHILDREN: dict[tuple[Counter | Histogram, tuple[str, ...]], Any] = {}


def _child(family: Counter | Histogram, *values: str) -> Any:
    """`family.labels(*values)`, remembered: the label sets on the request path are few and fixed (methods,
    codes, stages, kinds), and prometheus_client checks and converts the values again at every call."""
    key = (family, values)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = family.labels(*values)
    return child


@lru_cache(maxsize=512)
def _method_labels(full_method: str) -> tuple[str, str]:
    """ "/cir.encoder.v1.EncoderService/EmbedTexts" -> ("cir.encoder.v1.EncoderService", "EmbedTexts")."""
    _, _, rest = full_method.partition("/")
    service, _, method = rest.partition("/")
    return (service, method) if method else ("unknown", full_method)


def observe_rpc(full_method: str, code: grpc.StatusCode, seconds: float) -> None:
    """A finished RPC (a `cir_common.telemetry` observer)."""
    service, method = _method_labels(full_method)
    _child(RPC_HANDLED, service, method, code.name).inc()
    _child(RPC_SECONDS, service, method).observe(seconds)


def observe_stage(stage: str, seconds: float) -> None:
    """A finished stage of a request (a `cir_common.telemetry` stage listener)."""
    _child(STAGE_SECONDS, stage, _STRATEGY.get()).observe(seconds)


def batch_done(batcher: str, items: int, waited_s: float, seconds: float) -> None:
    """A micro-batcher ran a batch of `items`, whose oldest item had waited `waited_s`, in `seconds`."""
    if _STATE.on:
        _child(BATCH_ITEMS, batcher).observe(items)
        _child(BATCH_QUEUE_WAIT, batcher).observe(waited_s)
        _child(BATCH_SECONDS, batcher).observe(seconds)


def key_kind(key: str) -> str:
    """The kind of value a `cir_common.cache.cache_key` names ("other" for a key of another form)."""
    parts = key.split(":", 3)
    return parts[2] if len(parts) == 4 and parts[0] == "cir" else "other"


def cache_lookups(keys: Sequence[str], values: Sequence[bytes | None]) -> None:
    """The result of one cache lookup: a hit or a miss per key, by kind."""
    if not _STATE.on:
        return
    tally = Tally((key_kind(key), value is not None) for key, value in zip(keys, values, strict=True))
    for (kind, hit), number in tally.items():
        _child(CACHE_LOOKUPS, kind, "hit" if hit else "miss").inc(number)


def cache_error(operation: str, keys: Iterable[str]) -> None:
    """One failed Redis call for `keys`: counted once for each kind among them."""
    if _STATE.on:
        for kind in {key_kind(key) for key in keys}:
            CACHE_ERRORS.labels(kind, operation).inc()


# --- sources read at scrape time --------------------------------------------------------------------------


@dataclass
class _Source:
    owner: weakref.ref[Any]
    families: Callable[[Any], Iterable[Metric]]


class _Sources:
    """The collector of every `watch`ed source; families of one name from several sources become one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sources: dict[str, _Source] = {}

    def watch(self, key: str, source: _Source) -> None:
        with self._lock:
            self._sources[key] = source

    def forget(self, key: str) -> None:
        with self._lock:
            self._sources.pop(key, None)

    def describe(self) -> list[Metric]:
        return []  # nothing fixed to check at registration: the families vary with what is watched

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            sources = dict(self._sources)
        merged: dict[str, Metric] = {}
        for key, source in sources.items():
            owner = source.owner()
            if owner is None:
                with self._lock:
                    if self._sources.get(key) is source:
                        del self._sources[key]
                continue
            try:
                families = list(source.families(owner))
            except Exception as error:  # noqa: BLE001 - one failing source must not fail the scrape
                log.warning("metrics source %s failed: %s: %s", key, type(error).__name__, error)
                continue
            for family in families:
                if family.name in merged:
                    merged[family.name].samples.extend(family.samples)
                else:
                    merged[family.name] = family
        yield from merged.values()


SOURCES = _Sources()
REGISTRY.register(SOURCES)  # type: ignore[arg-type]  # a collector by duck typing


def watch(key: str, owner: OwnerT, families: Callable[[OwnerT], Iterable[Metric]]) -> None:
    """At each scrape, `families(owner)` adds the families it builds (with `Figure.family`), for as long
    as `owner` lives; a later `watch` of the same `key` replaces it. Called on the scrape's thread: read only
    what is safe to read from another thread. Costs nothing while metrics are off (no scrape ever comes)."""
    SOURCES.watch(key, _Source(weakref.ref(owner), families))


def admission_families(gate: Any) -> Iterator[Metric]:
    """The figures of a `cir_common.admission.AdmissionGate`."""
    name, stats = gate.name, gate.stats
    yield ADMISSION_RUNNING.one(gate.running, name)
    yield ADMISSION_QUEUED.one(gate.waiting, name)
    yield ADMISSION_ADMITTED.one(stats.admitted, name)
    yield ADMISSION_REJECTED.family(
        [
            ((name, "queue_full"), stats.rejected),
            ((name, "shed"), stats.shed),
            ((name, "queue_timeout"), stats.queue_timeouts),
        ]
    )


def batcher_families(batcher: Any) -> Iterator[Metric]:
    """The figures of a `cir_common.batching.MicroBatcher`."""
    name, stats = batcher.name, batcher.stats
    yield BATCHER_QUEUED.one(batcher.pending_items, name)
    yield BATCHER_REJECTED.one(stats.rejected_submits, name)
    yield BATCHER_FAILED.one(stats.failed_items, name)


def cache_families(cache: Any) -> Iterator[Metric]:
    """The figures of a `cir_common.cache` cache (its `stats()`: a MemoryCache's, or a RedisCache's)."""
    stats: Mapping[str, int] = cache.stats()
    if "breaker_open" in stats:
        yield CACHE_BREAKER_OPEN.one(stats["breaker_open"])
        yield CACHE_BREAKER_OPENS.one(stats["breaker_opens"])
        yield CACHE_SKIPPED.one(stats["skipped"])
        yield CACHE_FALLBACK_HITS.one(stats["fallback_hits"])
    yield CACHE_MEMORY_ENTRIES.one(stats.get("fallback_entries", stats.get("entries", 0)))
    yield CACHE_MEMORY_BYTES.one(stats.get("fallback_bytes", stats.get("bytes", 0)))


# --- GPU memory -------------------------------------------------------------------------------------------


@dataclass
class _Nvml:
    """NVML, for the device-wide figures of a process that does not use CUDA itself (vLLM's engine core runs
    in a process of its own); initialised once, on the first scrape that needs it."""

    module: Any = None
    tried: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self) -> Any:
        with self.lock:
            if not self.tried:
                self.tried = True
                try:
                    import pynvml  # nvidia-ml-py: present where vLLM or the CUDA wheels are

                    pynvml.nvmlInit()
                    self.module = pynvml
                except Exception as error:  # noqa: BLE001 - no NVML, no driver: no device-wide figures
                    log.debug("no NVML for GPU memory metrics: %s", error)
            return self.module


_NVML = _Nvml()


def gpu_families(_: object) -> Iterator[Metric]:
    """GPU memory where CUDA is in use: this process's torch allocator (torch already imported and CUDA
    initialised: never imported or initialised here), and each device's use by every process."""
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    used: list[tuple[Sequence[str], float]] = []
    total: list[tuple[Sequence[str], float]] = []
    if cuda is not None and cuda.is_initialized():
        devices = [str(index) for index in range(cuda.device_count())]
        yield GPU_ALLOCATED.family([((d,), cuda.memory_allocated(int(d))) for d in devices])
        yield GPU_RESERVED.family([((d,), cuda.memory_reserved(int(d))) for d in devices])
        for device in devices:
            free, size = cuda.mem_get_info(int(device))
            used.append(((device,), size - free))
            total.append(((device,), size))
    elif (nvml := _NVML.get()) is not None:
        for index in range(nvml.nvmlDeviceGetCount()):
            info = nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(index))
            used.append(((str(index),), info.used))
            total.append(((str(index),), info.total))
    if total:
        yield GPU_USED.family(used)
        yield GPU_TOTAL.family(total)


# --- the endpoint -----------------------------------------------------------------------------------------


@dataclass
class MetricsEndpoint:
    """The HTTP server of `install`; `close()` stops it and takes the recording hooks away (tests)."""

    host: str
    port: int
    _server: Any = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        _STATE.on = False
        _remove(TELEMETRY.rpc_observers, observe_rpc)
        _remove(TELEMETRY.stage_listeners, observe_stage)
        SOURCES.forget("gpu")
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)


def _remove(hooks: list[Any], hook: Any) -> None:
    while hook in hooks:
        hooks.remove(hook)


def install(settings: ServiceSettings, service: str) -> MetricsEndpoint | None:
    """Serves the metrics on `settings.host:settings.metrics_port` and turns recording on; with port 0 (the
    default) does nothing and returns None."""
    port = settings.metrics_port
    if port == 0:
        return None
    variable = settings.variable("metrics_port")
    if not 0 < port <= 65535:
        raise ConfigError(f"{variable}={port} is not a TCP port (1..65535; 0 = metrics off)")
    if port == settings.port:
        raise ConfigError(f"{variable}={port} is the gRPC port too: give the metrics a port of their own")
    disable_created_metrics()  # no `_created` series beside every counter and histogram
    try:
        server, thread = start_http_server(port, addr=settings.host, registry=REGISTRY)
    except OSError as error:
        raise ConfigError(
            f"{variable}={port}: cannot serve metrics on {settings.host}:{port} ({error}); choose a free port"
        ) from error
    endpoint = MetricsEndpoint(settings.host, port, server, thread)
    SERVICE_INFO.labels(service).set(1)
    for hooks, hook in ((TELEMETRY.rpc_observers, observe_rpc), (TELEMETRY.stage_listeners, observe_stage)):
        if hook not in hooks:
            hooks.append(hook)
    watch("gpu", endpoint, gpu_families)
    _STATE.on = True
    log.info("metrics on %s", endpoint.url)
    return endpoint
