"""The shared result cache: Redis when configured, else an in-process LRU.

The cache is an optimisation. Losing it loses nothing, so a Redis outage never fails a request: reads
become misses and writes are dropped. After a failure Redis is left alone for `retry_after_s`, so an
outage costs one timeout, not one per request.

Keys carry everything that determines the value (see `cache_key`); values are bytes, usually packed
float32 vectors (`pack_f32`, shared with the proto `Vector` field) or compact JSON (`pack_json`).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from cir_common.errors import ConfigError
from cir_common.vectors import pack_f32, pack_f32_matrix, unpack_f32, unpack_f32_matrix

__all__ = [
    "KEY_VERSION",
    "Cache",
    "MemoryCache",
    "RedisCache",
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

    async def set_many(self, items: Mapping[str, bytes], ttl_s: int | None = None) -> None: ...

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_s: int | None = None) -> None: ...

    async def close(self) -> None: ...

    def describe(self) -> str: ...


def _check_ttl(ttl_s: int | None) -> None:
    if ttl_s is not None and ttl_s <= 0:
        raise ValueError(f"ttl_s must be a positive number of seconds or None (no expiry), got {ttl_s}")


class MemoryCache:
    """In-process LRU bounded by the total size of the stored values.

    Guarded by a lock rather than by the event loop alone, so it stays correct when shared with worker
    threads.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self._max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0
        self._evictions = 0

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
        return out

    async def set_many(self, items: Mapping[str, bytes], ttl_s: int | None = None) -> None:
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


class RedisCache:
    """Redis-backed cache that degrades to "always miss" while Redis is unreachable."""

    def __init__(
        self,
        url: str,
        *,
        socket_timeout_s: float = 0.25,
        retry_after_s: float = 5.0,
        default_ttl_s: int | None = None,
    ) -> None:
        _check_ttl(default_ttl_s)
        self._url = url
        self._retry_after_s = retry_after_s
        self._default_ttl_s = default_ttl_s
        # One op may need a connect and a command round trip; past this the op counts as failed.
        self._op_timeout_s = 2 * socket_timeout_s
        try:
            self._client = aioredis.Redis.from_url(
                url,
                socket_timeout=socket_timeout_s,
                socket_connect_timeout=socket_timeout_s,
                # redis-py retries with backoff by default; for a cache a miss beats waiting.
                retry=Retry(NoBackoff(), 0),
            )
        except ValueError as exc:
            raise ConfigError(
                f"cache URL {self.describe()!r} is invalid ({exc}); use redis://host:port/db"
            ) from exc
        self._healthy = True
        self._retry_at = 0.0
        self._hits = 0
        self._misses = 0
        self._errors = 0
        self._skipped = 0
        self._writes = 0

    @property
    def healthy(self) -> bool:
        return self._healthy

    def stats(self) -> dict[str, int]:
        """Counters since start: keys hit/missed/written, failed Redis calls, calls skipped in an outage."""
        return {
            "hits": self._hits,
            "misses": self._misses,
            "errors": self._errors,
            "skipped": self._skipped,
            "writes": self._writes,
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
        values = await self._guarded(lambda: self._client.mget(list(keys)))
        if values is None:
            self._misses += len(keys)
            return [None] * len(keys)
        hits = sum(v is not None for v in values)
        self._hits += hits
        self._misses += len(keys) - hits
        return list(values)

    async def set_many(self, items: Mapping[str, bytes], ttl_s: int | None = None) -> None:
        _check_ttl(ttl_s)
        if not items:
            return
        ttl = ttl_s if ttl_s is not None else self._default_ttl_s

        async def write() -> bool:
            async with self._client.pipeline(transaction=False) as pipe:
                for key, value in items.items():
                    pipe.set(key, value, ex=ttl)
                await pipe.execute()
            return True

        if await self._guarded(write):
            self._writes += len(items)

    async def get(self, key: str) -> bytes | None:
        return (await self.get_many([key]))[0]

    async def set(self, key: str, value: bytes, ttl_s: int | None = None) -> None:
        await self.set_many({key: value}, ttl_s)

    async def close(self) -> None:
        try:
            await self._client.aclose()
        except _REDIS_FAILURES as exc:
            log.debug("closing %s: %s", self.describe(), exc)

    async def _guarded(self, op: Callable[[], Awaitable[T]]) -> T | None:
        """Run `op` against Redis; None when Redis is (or just turned out to be) unavailable."""
        probe = False
        if not self._healthy:
            now = time.monotonic()
            if now < self._retry_at:
                self._skipped += 1
                return None
            # This call is the probe; concurrent calls keep skipping until it reports back.
            self._retry_at = now + self._retry_after_s
            probe = True
        try:
            async with asyncio.timeout(self._op_timeout_s):
                result = await op()
        except _REDIS_FAILURES as exc:
            self._errors += 1
            self._retry_at = time.monotonic() + self._retry_after_s
            reason = str(exc) or type(exc).__name__
            if self._healthy:
                self._healthy = False
                log.warning(
                    "cache unavailable, continuing without cache: %s: %s (retrying in %.1f s)",
                    self.describe(),
                    reason,
                    self._retry_after_s,
                )
            else:
                log.debug("cache still unavailable: %s: %s", self.describe(), reason)
            return None
        # Only a probe may end an outage: a call begun before the outage can still finish on an old
        # connection, and counting it would make the warnings flap.
        if probe and not self._healthy:
            self._healthy = True
            log.info("cache available again: %s", self.describe())
        return result


def cache_from_url(
    url: str | None,
    memory_max_bytes: int,
    *,
    socket_timeout_s: float = 0.25,
    retry_after_s: float = 5.0,
) -> Cache:
    """Redis when `url` is set (non-empty), else an in-process LRU of `memory_max_bytes`."""
    if url:
        return RedisCache(url, socket_timeout_s=socket_timeout_s, retry_after_s=retry_after_s)
    return MemoryCache(memory_max_bytes)


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
