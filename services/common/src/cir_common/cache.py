"""The shared result cache: Redis when configured, else an in-process LRU.

The cache is an optimisation. Losing it loses nothing, so a Redis outage never fails a request, and it must
not cost throughput either: a miss means recomputing captions, LLM answers and embeddings, so an outage that
turned every lookup into a miss would be a throughput outage. Every Redis call is bounded by short connect
and socket timeouts; a circuit breaker stops calling Redis after a few failures and probes it in the
background; meanwhile an in-process LRU, kept warm with what went through Redis, serves reads and takes
writes. When a probe gets an answer the cache reconnects by itself (see `RedisCache`).

Keys carry everything that determines the value (see `cache_key`); values are bytes, usually packed
float32 vectors (`pack_f32`, shared with the proto `Vector` field) or compact JSON (`pack_json`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import hashlib
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import redis.asyncio as aioredis
from opentelemetry.trace import Span, SpanKind, StatusCode
from opentelemetry.util.types import AttributeValue
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError
from redis.retry import Retry

from cir_common import metrics
from cir_common.config import ServiceSettings
from cir_common.errors import ConfigError
from cir_common.tracing import span
from cir_common.vectors import pack_f32, pack_f32_matrix, unpack_f32, unpack_f32_matrix

__all__ = [
    "KEY_VERSION",
    "Cache",
    "MemoryCache",
    "RedisCache",
    "cache_from_settings",
    "cache_from_url",
    "cache_key",
    "pack_f32",
    "pack_f32_matrix",
    "pack_json",
    "params_hash",
    "unpack_f32",
    "unpack_f32_matrix",
    "unpack_json",
]

log = logging.getLogger(__name__)

# Bump when the meaning or encoding of cached values changes: old entries then simply stop matching.
KEY_VERSION = "v1"
_HASH_HEX = 24  # 96 bits: collisions are out of reach for any realistic number of entries
_KIND = re.compile(r"[a-z0-9][a-z0-9_.-]{0,47}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

T = TypeVar("T")


@runtime_checkable
class Cache(Protocol):
    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    async def set_many(
        self, items: Mapping[str, bytes], ttl_s: int | None = None, *, wait: bool = True
    ) -> None:
        """Store `items`. `wait=False`: this process reads them back at once, but the shared store may get
        them a moment after the call returns (write-behind: a request does not wait for the round trip)."""
        ...

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_s: int | None = None) -> None: ...

    async def flush(self) -> None:
        """Returns once every write begun so far has reached the shared store (or failed)."""
        ...

    async def close(self) -> None:
        """Flushes, then lets go of every connection."""
        ...

    def describe(self) -> str: ...


def _check_ttl(ttl_s: int | None) -> None:
    if ttl_s is not None and ttl_s <= 0:
        raise ValueError(f"ttl_s must be a positive number of seconds or None (no expiry), got {ttl_s}")


class MemoryCache:
    """In-process LRU bounded by the total size of the stored values.

    Guarded by a lock rather than by the event loop alone, so it stays correct when shared with worker
    threads.
    """

    def __init__(self, max_bytes: int, *, counted: bool = True) -> None:
        """`counted`: the service's cache, whose lookups and size are in the metrics (RedisCache's own
        in-process LRU is not: the RedisCache counts)."""
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self._counted = counted
        self._max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        if counted:
            metrics.watch("cache", self, metrics.cache_families)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        now = time.monotonic()
        out: list[bytes | None] = []
        with self._lock:
            for key in keys:
                entry = self._entries.get(key)
                if entry is not None and entry[1] is not None and entry[1] <= now:
                    self._drop(key)
                    entry = None
                if entry is None:
                    self._misses += 1
                    out.append(None)
                else:
                    self._entries.move_to_end(key)
                    self._hits += 1
                    out.append(entry[0])
        if self._counted:
            metrics.cache_lookups(keys, out)
        return out

    async def set_many(
        self, items: Mapping[str, bytes], ttl_s: int | None = None, *, wait: bool = True
    ) -> None:
        _check_ttl(ttl_s)
        expires = None if ttl_s is None else time.monotonic() + ttl_s
        with self._lock:
            for key, value in items.items():
                self._drop(key)
                data = bytes(value)
                if len(data) > self._max_bytes:
                    continue  # would evict everything and still not fit
                self._entries[key] = (data, expires)
                self._bytes += len(data)
            while self._bytes > self._max_bytes:
                _, (old, _) = self._entries.popitem(last=False)
                self._bytes -= len(old)
                self._evictions += 1

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= len(entry[0])

    async def get(self, key: str) -> bytes | None:
        return (await self.get_many([key]))[0]

    async def set(self, key: str, value: bytes, ttl_s: int | None = None) -> None:
        await self.set_many({key: value}, ttl_s)

    async def flush(self) -> None:
        return None  # every write is done when set_many returns

    async def close(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def describe(self) -> str:
        return f"in-process LRU cache (max {self._max_bytes:,} bytes)"

    @property
    def healthy(self) -> bool:
        return True

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "hits": self._hits,
                "misses": self._misses,
                "errors": 0,
                "evictions": self._evictions,
                "entries": len(self._entries),
                "bytes": self._bytes,
            }


# Anything that means "Redis did not answer properly". OSError covers socket errors raised outside
# redis-py's wrapping; TimeoutError is our own whole-operation deadline.
_REDIS_FAILURES = (RedisError, OSError, TimeoutError)

# Defaults of the fail-fast settings (ServiceSettings.cache_* carry the same values).
DEFAULT_CONNECT_TIMEOUT_S = 0.25
DEFAULT_SOCKET_TIMEOUT_S = 0.5
DEFAULT_BREAKER_FAILURES = 3
DEFAULT_PROBE_INTERVAL_S = 2.0
DEFAULT_FALLBACK_BYTES = 256 * 1024 * 1024
PROBE_TASK_NAME = "cir-cache-probe"
WRITE_TASK_NAME = "cir-cache-write"
# Write-behind writes in flight at most; past this a writer waits for its own round trip, so a Redis slower
# than the services' results holds them back instead of piling up tasks and memory.
MAX_PENDING_WRITES = 64
# A Redis that refuses calls (e.g. writes when out of memory) refuses every one: say so once in a while.
_REFUSAL_LOG_EVERY_S = 60.0


class RedisCache:
    """Redis-backed cache with a circuit breaker and an in-process LRU that serves while Redis is down.

    Closed (normal): every call goes to Redis; what Redis returns and everything written is also kept in
    the in-process LRU (`fallback_max_bytes`), so an outage starts with the hot entries at hand. A Redis
    miss is looked up there too (values written during an outage live only there). After
    `failure_threshold` consecutive failed calls (each bounded by the connect and socket timeouts) the
    breaker opens: no call touches Redis any more, reads and writes use the LRU alone, and one background
    task PINGs Redis on a fresh connection every `probe_interval_s`. When a PING succeeds the breaker
    closes on a new connection pool (the old connections are from before the outage, dead or stale).
    """

    def __init__(
        self,
        url: str,
        *,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        socket_timeout_s: float = DEFAULT_SOCKET_TIMEOUT_S,
        failure_threshold: int = DEFAULT_BREAKER_FAILURES,
        probe_interval_s: float = DEFAULT_PROBE_INTERVAL_S,
        fallback_max_bytes: int = DEFAULT_FALLBACK_BYTES,
        default_ttl_s: int | None = None,
        tls_ca_file: str = "",
    ) -> None:
        _check_ttl(default_ttl_s)
        for name, value in (
            ("connect_timeout_s", connect_timeout_s),
            ("socket_timeout_s", socket_timeout_s),
            ("probe_interval_s", probe_interval_s),
        ):
            if not value > 0:
                raise ConfigError(f"cache {name} must be a positive number of seconds, got {value}")
        if failure_threshold < 1:
            raise ConfigError(f"cache breaker failure threshold must be at least 1, got {failure_threshold}")
        self._url = url
        # rediss:// (TLS; a password in the URL: rediss://:PASSWORD@host:port/db) checks the server's
        # certificate against this CA, else the system's; redis-py reads it at every new connection.
        if tls_ca_file and urlsplit(url).scheme != "rediss":
            raise ConfigError(f"a cache CA file ({tls_ca_file!r}) needs a rediss:// cache URL (TLS)")
        self._tls = {"ssl_ca_certs": tls_ca_file} if tls_ca_file else {}
        self._connect_timeout_s = connect_timeout_s
        self._socket_timeout_s = socket_timeout_s
        self._failure_threshold = failure_threshold
        self._probe_interval_s = probe_interval_s
        self._default_ttl_s = default_ttl_s
        # One call may need a connect and a command round trip; past this it counts as failed, whatever
        # redis-py is doing (a pipeline reads one reply per command, each with its own socket timeout).
        self._op_timeout_s = connect_timeout_s + socket_timeout_s
        self._client = self._new_client()
        self._fallback = MemoryCache(fallback_max_bytes, counted=False)
        self._open = False
        self._opened_at = 0.0
        # Bumped at every open and close: a call that began before the last transition reports to a
        # breaker state that no longer exists, and must neither trip it nor count towards tripping it.
        self._generation = 0
        self._consecutive_failures = 0
        self._probe_task: asyncio.Task[None] | None = None
        self._pending_writes: set[asyncio.Task[None]] = set()
        self._closed = False
        self._hits = 0
        self._misses = 0
        self._fallback_hits = 0
        self._errors = 0
        self._skipped = 0
        self._writes = 0
        self._attempts = 0
        self._probes = 0
        self._probe_failures = 0
        self._opens = 0
        self._closes = 0
        self._skipped_at_open = 0
        self._probes_at_open = 0
        self._next_refusal_log = 0.0
        metrics.watch("cache", self, metrics.cache_families)

    def _new_client(self, *, single_connection: bool = False) -> aioredis.Redis:
        try:
            return aioredis.Redis.from_url(
                self._url,
                socket_timeout=self._socket_timeout_s,
                socket_connect_timeout=self._connect_timeout_s,
                # redis-py retries with backoff by default; for a cache a miss beats waiting.
                retry=Retry(NoBackoff(), 0),
                # RESP2 and no CLIENT SETINFO: a new connection sends its command at once instead of first
                # waiting on two handshake round trips (HELLO, SETINFO), each another chance to hang.
                protocol=2,
                driver_info=None,
                single_connection_client=single_connection,
                **self._tls,
            )
        except ValueError as exc:
            raise ConfigError(
                f"cache URL {self.describe()!r} is invalid ({exc}); use redis://host:port/db "
                "(rediss://:PASSWORD@host:port/db for TLS)"
            ) from exc

    @property
    def healthy(self) -> bool:
        """False while the breaker is open (Redis is left alone and the in-process LRU serves)."""
        return not self._open

    @property
    def state(self) -> str:
        """The breaker: "closed" (Redis in use) or "open" (Redis left alone, probed in the background)."""
        return "open" if self._open else "closed"

    def stats(self) -> dict[str, int]:
        """Counters since start (names are stable: metrics are built on them).

        hits / misses: keys found (in Redis or the in-process LRU) / found nowhere; fallback_hits: the hits
        served by the in-process LRU. attempts: calls sent to Redis (probes apart); errors: those that
        failed; skipped: calls not sent because the breaker was open; writes: keys written to Redis.
        probes / probe_failures: background PINGs while open. breaker_opens / breaker_closes: transitions;
        breaker_open: 1 while open. fallback_entries / fallback_bytes: what the in-process LRU holds.
        """
        fallback = self._fallback.stats()
        return {
            "hits": self._hits,
            "misses": self._misses,
            "fallback_hits": self._fallback_hits,
            "errors": self._errors,
            "skipped": self._skipped,
            "writes": self._writes,
            "attempts": self._attempts,
            "probes": self._probes,
            "probe_failures": self._probe_failures,
            "breaker_opens": self._opens,
            "breaker_closes": self._closes,
            "breaker_open": int(self._open),
            "fallback_entries": fallback["entries"],
            "fallback_bytes": fallback["bytes"],
        }

    def describe(self) -> str:
        parts = urlsplit(self._url)
        if parts.password is not None or parts.username is not None:
            host = parts.hostname or ""
            netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
            parts = parts._replace(netloc=netloc)
        return f"redis cache at {urlunsplit(parts)}"

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        keys = list(keys)
        values: list[bytes | None] | None = None
        if self._open:
            self._skipped += 1
        else:
            client = self._client
            with self._span("MGET", len(keys)) as traced:
                found = await self._attempt(lambda: client.mget(keys))
                _traced_outcome(traced, found)
            if found is None:
                metrics.cache_error("get", keys)
            else:
                values = list(found)
                hits = {k: v for k, v in zip(keys, values, strict=True) if v is not None}
                if hits:
                    # Kept for the next outage. Redis's TTL is not read back: the default one applies.
                    await self._fallback.set_many(hits, self._default_ttl_s)
        if values is None:
            values = [None] * len(keys)
        missing = [i for i, v in enumerate(values) if v is None]
        if missing:
            local = await self._fallback.get_many([keys[i] for i in missing])
            for i, value in zip(missing, local, strict=True):
                if value is not None:
                    values[i] = value
                    self._fallback_hits += 1
        hits_count = sum(v is not None for v in values)
        self._hits += hits_count
        self._misses += len(keys) - hits_count
        metrics.cache_lookups(keys, values)
        return values

    async def set_many(
        self, items: Mapping[str, bytes], ttl_s: int | None = None, *, wait: bool = True
    ) -> None:
        """With `wait=False` the Redis write runs in the background (`flush` waits for it); the in-process
        LRU has the items when this returns, so this process's next read finds them either way."""
        _check_ttl(ttl_s)
        if not items:
            return
        ttl = ttl_s if ttl_s is not None else self._default_ttl_s
        items = dict(items)
        # Always kept in-process too: served during an outage, and after one until Redis has it again.
        await self._fallback.set_many(items, ttl)
        if self._open:
            self._skipped += 1
            return
        if wait or self._closed or len(self._pending_writes) >= MAX_PENDING_WRITES:
            await self._write(items, ttl)
            return
        task = asyncio.get_running_loop().create_task(self._write(items, ttl), name=WRITE_TASK_NAME)
        self._pending_writes.add(task)
        task.add_done_callback(self._write_done)

    def _write_done(self, task: asyncio.Task[None]) -> None:
        self._pending_writes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Redis failures are handled inside; anything else is a bug, and nobody awaits this task.
            log.error("a background cache write raised", exc_info=task.exception())

    async def flush(self) -> None:
        while self._pending_writes:
            await asyncio.gather(*self._pending_writes, return_exceptions=True)

    async def _write(self, items: dict[str, bytes], ttl: int | None) -> None:
        """One pipelined write of `items` to Redis (the in-process LRU already has them)."""
        client = self._client

        async def write() -> bool:
            async with client.pipeline(transaction=False) as pipe:
                for key, value in items.items():
                    pipe.set(key, value, ex=ttl)
                await pipe.execute()
            return True

        with self._span("SET", len(items)) as traced:
            written = await self._attempt(write)
            _traced_outcome(traced, written)
        if written:
            self._writes += len(items)
        else:
            metrics.cache_error("set", items)

    async def get(self, key: str) -> bytes | None:
        return (await self.get_many([key]))[0]

    async def set(self, key: str, value: bytes, ttl_s: int | None = None) -> None:
        await self.set_many({key: value}, ttl_s)

    async def close(self) -> None:
        # Writes still in flight land first (each is bounded by the timeouts): a graceful stop loses none.
        await self.flush()
        self._closed = True
        task, self._probe_task = self._probe_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._close_client(self._client)
        await self._fallback.close()

    async def _close_client(self, client: aioredis.Redis) -> None:
        try:
            # Closing a connection to a hung server must not hang either.
            async with asyncio.timeout(self._op_timeout_s):
                await client.aclose()
        except _REDIS_FAILURES as exc:
            log.debug("closing a client of %s: %s", self.describe(), exc)

    @functools.cached_property
    def _span_attributes(self) -> dict[str, AttributeValue]:
        """What every Redis span says of the server: host and port (never the URL: it may hold a password)."""
        parts = urlsplit(self._url)
        attributes: dict[str, AttributeValue] = {"db.system.name": "redis"}
        if parts.hostname:
            attributes.update({"server.address": parts.hostname, "server.port": parts.port or 6379})
        return attributes

    def _span(self, operation: str, keys: int) -> AbstractContextManager[Span]:
        """A CLIENT span `redis <operation>` around one Redis call (`cir_common.tracing`: none when off)."""
        attributes = {**self._span_attributes, "db.operation.name": operation}
        attributes["db.operation.batch.size"] = keys
        return span(f"redis {operation}", SpanKind.CLIENT, attributes)

    async def _attempt(self, op: Callable[[], Awaitable[T]]) -> T | None:
        """Run `op` against Redis; None when it failed (the failure counts towards opening the breaker)."""
        generation = self._generation
        self._attempts += 1
        try:
            async with asyncio.timeout(self._op_timeout_s):
                result = await op()
        except ResponseError as exc:
            # Redis answered, with a refusal (e.g. out of memory for writes): it is reachable, so this is
            # no reason to stop reading from it.
            self._errors += 1
            now = time.monotonic()
            if now >= self._next_refusal_log:
                self._next_refusal_log = now + _REFUSAL_LOG_EVERY_S
                log.warning("cache call refused by %s: %s", self.describe(), exc)
            return None
        except _REDIS_FAILURES as exc:
            self._errors += 1
            self._failed(generation, str(exc) or type(exc).__name__)
            return None
        if generation == self._generation:
            self._consecutive_failures = 0
        return result

    def _failed(self, generation: int, reason: str) -> None:
        if generation != self._generation or self._open:
            log.debug("cache call begun before the last breaker change failed: %s", reason)
            return
        self._consecutive_failures += 1
        if self._consecutive_failures < self._failure_threshold:
            log.debug("cache call failed (%d in a row): %s", self._consecutive_failures, reason)
            return
        self._open = True
        self._generation += 1
        self._opens += 1
        self._opened_at = time.monotonic()
        self._skipped_at_open = self._skipped
        self._probes_at_open = self._probes
        log.warning(
            "cache unavailable, serving from the in-process cache: %s: %s (probing every %g s)",
            self.describe(),
            reason,
            self._probe_interval_s,
        )
        if not self._closed:
            self._probe_task = asyncio.get_running_loop().create_task(
                self._probe_until_back(), name=PROBE_TASK_NAME
            )

    async def _probe_until_back(self) -> None:
        """While open: PING on a fresh connection every probe_interval_s; close the breaker on an answer."""
        while True:
            await asyncio.sleep(self._probe_interval_s)
            self._probes += 1
            if await self._ping():
                break
            self._probe_failures += 1
        # Requests go on over a new pool: the old one's connections date from before the outage (dead
        # sockets after a crash, or ones that waited on a hung server).
        old, self._client = self._client, self._new_client()
        self._open = False
        self._generation += 1
        self._closes += 1
        self._consecutive_failures = 0
        self._probe_task = None
        log.info(
            "cache available again: %s after %.1f s (%d calls served in-process meanwhile, %d probes)",
            self.describe(),
            time.monotonic() - self._opened_at,
            self._skipped - self._skipped_at_open,
            self._probes - self._probes_at_open,
        )
        await self._close_client(old)

    async def _ping(self) -> bool:
        probe = self._new_client(single_connection=True)
        try:
            async with asyncio.timeout(self._op_timeout_s):
                return bool(await probe.ping())
        except _REDIS_FAILURES as exc:
            log.debug("cache probe failed: %s: %s", self.describe(), str(exc) or type(exc).__name__)
            return False
        except Exception:
            # A bug, not an outage; but a probe task that died would leave the breaker open for good.
            log.exception("cache probe of %s raised; probing goes on", self.describe())
            return False
        finally:
            await self._close_client(probe)


def _traced_outcome(traced: Span, result: object) -> None:
    """A Redis span's outcome: ERROR when the call failed (None from `_attempt`, which logged why)."""
    if result is None:
        traced.set_status(StatusCode.ERROR, "the Redis call failed or timed out: the in-process cache served")


def cache_from_url(
    url: str | None,
    memory_max_bytes: int,
    *,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    socket_timeout_s: float = DEFAULT_SOCKET_TIMEOUT_S,
    breaker_failures: int = DEFAULT_BREAKER_FAILURES,
    probe_interval_s: float = DEFAULT_PROBE_INTERVAL_S,
    tls_ca_file: str = "",
) -> Cache:
    """Redis when `url` is set (non-empty), else an in-process LRU of `memory_max_bytes`.

    With Redis, an in-process LRU of `memory_max_bytes` still serves while Redis is unreachable.
    `tls_ca_file`: the CA of a rediss:// server's certificate (empty: the system's CAs).
    """
    if url:
        return RedisCache(
            url,
            connect_timeout_s=connect_timeout_s,
            socket_timeout_s=socket_timeout_s,
            failure_threshold=breaker_failures,
            probe_interval_s=probe_interval_s,
            fallback_max_bytes=memory_max_bytes,
            tls_ca_file=tls_ca_file,
        )
    return MemoryCache(memory_max_bytes)


def cache_from_settings(settings: ServiceSettings) -> Cache:
    """The cache a service's settings describe (cache_url, cache_tls_ca_file, cache_memory_bytes and the
    cache_* timeouts)."""
    if settings.cache_tls_ca_file and not settings.cache_url.startswith("rediss://"):
        raise ConfigError(
            f"{settings.variable('cache_tls_ca_file')} is for TLS to Redis: set "
            f"{settings.variable('cache_url')} to rediss://[:PASSWORD@]HOST:PORT/DB"
        )
    return cache_from_url(
        settings.cache_url or None,
        settings.cache_memory_bytes,
        connect_timeout_s=settings.cache_connect_timeout_s,
        socket_timeout_s=settings.cache_socket_timeout_s,
        breaker_failures=settings.cache_breaker_failures,
        probe_interval_s=settings.cache_probe_interval_s,
        tls_ca_file=settings.cache_tls_ca_file,
    )


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:_HASH_HEX]


def _json_default(obj: object) -> Any:
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, np.generic):
        return obj.item()
    # Refuse rather than str(): a repr that changes between runs or versions would silently split the cache.
    raise TypeError(f"cache key parameter of type {type(obj).__name__} has no canonical JSON form: {obj!r}")


def params_hash(params: Mapping[str, object]) -> str:
    """Hash of the canonical JSON of `params` (sorted keys, no whitespace): equal params, equal hash."""
    canonical = json.dumps(
        dict(params),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=_json_default,
    )
    return _short_hash(canonical)


def cache_key(kind: str, model: str, params: Mapping[str, object], content: str) -> str:
    """`cir:v1:<kind>:<model hash>:<params hash>:<content>`, naming everything that determines the value.

    `kind` says what the value is (e.g. "image_embedding"); `model` is the model identity (name and
    checkpoint hash or revision); `params` are every other input that changes the value (N, decoding
    variant, prompt template version, ...). `content` is the input's identity: a sha256 hex digest (from
    `content_hash`) is kept as is, so keys for one image can be found by its hash; anything else is hashed.
    """
    if not _KIND.fullmatch(kind):
        raise ValueError(f"cache kind {kind!r} must be 1-48 characters of a-z, 0-9, '_', '.', '-'")
    if not model:
        raise ValueError("cache key needs a model identity (name and checkpoint hash or revision)")
    content_part = content if _SHA256_HEX.fullmatch(content) else _short_hash(content)
    return f"cir:{KEY_VERSION}:{kind}:{_short_hash(model)}:{params_hash(params)}:{content_part}"


def pack_json(obj: object) -> bytes:
    """Compact UTF-8 JSON; NaN and infinity are refused so every value reads back in any JSON parser."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def unpack_json(data: bytes) -> Any:
    return json.loads(data)
