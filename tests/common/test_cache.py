"""The shared cache: LRU bounds, Redis round trips, keys that name every input, codecs, outages (breaker)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import struct
import time
import uuid

import numpy as np
import pytest
import redis.asyncio as aioredis

from cir.common.v1 import common_pb2
from cir_common.cache import (
    MAX_PENDING_WRITES,
    WRITE_TASK_NAME,
    Cache,
    MemoryCache,
    RedisCache,
    cache_from_settings,
    cache_from_url,
    cache_key,
    pack_f32,
    pack_f32_matrix,
    pack_json,
    unpack_f32,
    unpack_f32_matrix,
    unpack_json,
)
from cir_common.config import ServiceSettings
from cir_common.errors import ConfigError, InvalidArgument
from cir_common.vectors import vector_from_proto, vector_to_proto
from cir_tools.local_redis import INSTALL_HINT, RedisStartError, free_port
from cir_tools.local_redis import start_redis as start_redis_process

CACHE_LOGGER = "cir_common.cache"


def _unique(prefix: str = "t") -> str:
    # The session Redis is shared between tests: keep every test's keys apart.
    return f"test:{prefix}:{uuid.uuid4().hex}"


# --- MemoryCache ------------------------------------------------------------------------------------------


async def test_memory_cache_evicts_least_recently_used_by_total_bytes():
    cache = MemoryCache(max_bytes=100)
    await cache.set_many({"a": b"a" * 40, "b": b"b" * 40})
    assert await cache.get("a") == b"a" * 40  # "a" is now the most recently used
    await cache.set("c", b"c" * 40)  # 120 bytes > 100: the least recently used ("b") goes
    assert await cache.get_many(["a", "b", "c"]) == [b"a" * 40, None, b"c" * 40]
    stats = cache.stats()
    assert stats["bytes"] == 80
    assert stats["entries"] == 2
    assert stats["evictions"] == 1


async def test_memory_cache_evicts_as_many_entries_as_needed():
    cache = MemoryCache(max_bytes=100)
    await cache.set_many({f"k{i}": bytes(20) for i in range(5)})
    await cache.set("big", bytes(70))
    assert await cache.get_many([f"k{i}" for i in range(5)]) == [None, None, None, None, bytes(20)]
    assert cache.stats()["bytes"] == 90


async def test_memory_cache_replacing_a_key_counts_its_bytes_once():
    cache = MemoryCache(max_bytes=100)
    for size in (60, 10, 90):
        await cache.set("k", bytes(size))
    assert cache.stats()["bytes"] == 90
    assert await cache.get("k") == bytes(90)


async def test_memory_cache_skips_a_value_larger_than_the_whole_cache():
    cache = MemoryCache(max_bytes=100)
    await cache.set("small", b"s")
    await cache.set("huge", bytes(101))
    assert await cache.get("huge") is None
    assert await cache.get("small") == b"s"  # nothing was evicted for a value that could never fit


async def test_memory_cache_counts_hits_and_misses():
    cache = MemoryCache(max_bytes=1000)
    await cache.set("k", b"v")
    await cache.get_many(["k", "x", "k"])
    assert (cache.stats()["hits"], cache.stats()["misses"]) == (2, 1)


async def test_memory_cache_honours_ttl():
    cache = MemoryCache(max_bytes=1000)
    await cache.set("short", b"1", ttl_s=1)
    await cache.set("forever", b"2")
    assert await cache.get("short") == b"1"
    await asyncio.sleep(1.05)
    assert await cache.get_many(["short", "forever"]) == [None, b"2"]
    assert cache.stats()["bytes"] == 1


@pytest.mark.parametrize("ttl", [0, -5])
async def test_non_positive_ttl_is_a_programming_error(ttl):
    with pytest.raises(ValueError, match="ttl_s"):
        await MemoryCache(100).set("k", b"v", ttl_s=ttl)


async def test_memory_cache_is_consistent_under_concurrent_use():
    cache = MemoryCache(max_bytes=10_000)

    async def worker(n: int) -> None:
        for i in range(50):
            await cache.set(f"{n}:{i}", bytes(10))
            await cache.get(f"{(n + 1) % 8}:{i}")

    await asyncio.gather(*(worker(n) for n in range(8)))
    assert cache.stats()["bytes"] == 10 * cache.stats()["entries"] <= 10_000


async def test_both_caches_satisfy_the_protocol(redis_server):
    redis_cache = RedisCache(redis_server.url)
    try:
        assert isinstance(MemoryCache(1), Cache)
        assert isinstance(redis_cache, Cache)
    finally:
        await redis_cache.close()


# --- RedisCache against a real server ---------------------------------------------------------------------


@pytest.fixture
async def redis_cache(redis_server):
    # Generous timeouts: these tests check behaviour, and 40 concurrent connects on a loaded machine can take
    # longer than the production defaults, which would trip the outage breaker.
    cache = RedisCache(redis_server.url, connect_timeout_s=5.0, socket_timeout_s=5.0)
    yield cache
    await cache.close()


async def test_redis_round_trip_of_many_keys_with_misses(redis_cache):
    keys = [_unique() for _ in range(3)]
    await redis_cache.set_many({keys[0]: b"zero", keys[2]: b"\x00\xff" * 1000})
    assert await redis_cache.get_many(keys) == [b"zero", None, b"\x00\xff" * 1000]
    assert await redis_cache.get_many([]) == []
    stats = redis_cache.stats()
    assert {k: stats[k] for k in ("hits", "misses", "errors", "skipped", "writes", "attempts")} == {
        "hits": 2,
        "misses": 1,
        "errors": 0,
        "skipped": 0,
        "writes": 2,
        "attempts": 2,
    }
    assert stats["fallback_hits"] == 0  # Redis answered both hits
    assert redis_cache.healthy and redis_cache.state == "closed"


async def test_redis_single_get_and_set_round_trip_a_vector(redis_cache):
    key = _unique("vec")
    vec = np.linspace(-1, 1, 512, dtype=np.float32)
    await redis_cache.set(key, pack_f32(vec))
    got = await redis_cache.get(key)
    assert got is not None
    assert np.array_equal(unpack_f32(got, 512), vec)


async def test_redis_ttl_is_set_on_write(redis_cache, redis_server):
    with_ttl, without_ttl = _unique(), _unique()
    await redis_cache.set(with_ttl, b"v", ttl_s=100)
    await redis_cache.set(without_ttl, b"v")
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        assert 90 <= await raw.ttl(with_ttl) <= 100
        assert await raw.ttl(without_ttl) == -1  # no expiry
    finally:
        await raw.aclose()


async def test_redis_default_ttl_applies_when_none_is_given(redis_server):
    cache = RedisCache(redis_server.url, default_ttl_s=50, connect_timeout_s=5.0, socket_timeout_s=5.0)
    raw = aioredis.Redis.from_url(redis_server.url)
    key = _unique()
    try:
        await cache.set(key, b"v")
        assert 40 <= await raw.ttl(key) <= 50
    finally:
        await cache.close()
        await raw.aclose()


async def test_redis_handles_concurrent_requests(redis_cache):
    keys = [_unique() for _ in range(40)]
    await asyncio.gather(*(redis_cache.set(k, k.encode()) for k in keys))
    values = await asyncio.gather(*(redis_cache.get(k) for k in keys))
    assert values == [k.encode() for k in keys]


# --- outages ----------------------------------------------------------------------------------------------
# Assertions count Redis contacts (stats()["attempts"]: calls sent to Redis on a caller's behalf; background
# probes are counted apart), never elapsed time. Where a state must be reached (the breaker closing after a
# probe), the test waits for it with a generous bound.

NO_PROBE_S = 3600.0  # the breaker stays open for the whole test: every contact counted is a caller's
# Where Redis is killed, refusals are immediate and timeouts never elapse: generous ones keep a loaded machine
# from failing the calls made while Redis is up. Tests of a hung Redis keep the defaults (they wait them out).
PATIENT = {"connect_timeout_s": 5.0, "socket_timeout_s": 5.0}
PROBE_TASK = "cir-cache-probe"


def _warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == CACHE_LOGGER and r.levelno == logging.WARNING]


def _recoveries(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("cache available again")]


async def _wait_for(condition, what: str, bound_s: float = 60.0) -> None:
    # A bound, not a measurement: generous enough for a loaded CI machine.
    deadline = time.monotonic() + bound_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {bound_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.02)


async def test_killed_redis_opens_the_breaker_and_the_in_process_copy_serves(start_redis, caplog):
    caplog.set_level(logging.INFO, logger=CACHE_LOGGER)
    server = start_redis()
    cache = RedisCache(server.url, failure_threshold=3, probe_interval_s=NO_PROBE_S, **PATIENT)
    raw = aioredis.Redis.from_url(server.url)
    try:
        await cache.set("written", b"by this process")
        await raw.set("read", b"by another replica")
        assert await cache.get("read") == b"by another replica"  # from Redis: kept in-process too
        server.kill()
        before = cache.stats()
        for i in range(200):
            # What went through this process before the outage is still served...
            assert await cache.get_many(["written", "read"]) == [b"by this process", b"by another replica"]
            # ...and what is written during it, too.
            await cache.set(f"new:{i}", str(i).encode())
            assert await cache.get(f"new:{i}") == str(i).encode()
        after = cache.stats()
        # Three failures in a row open the breaker; the other 597 calls never reached for Redis.
        assert after["attempts"] - before["attempts"] == 3
        assert after["errors"] - before["errors"] == 3
        assert after["skipped"] - before["skipped"] == 600 - 3
        assert (after["breaker_open"], after["breaker_opens"], after["breaker_closes"]) == (1, 1, 0)
        assert cache.state == "open" and not cache.healthy
        assert after["fallback_hits"] - before["fallback_hits"] == 200 * 2 + 200
        assert await cache.get("never written") is None
        warnings = _warnings(caplog)
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert warnings[0].getMessage().startswith("cache unavailable, serving from the in-process cache")
    finally:
        await raw.aclose()
        await cache.close()


async def test_a_hung_redis_costs_each_call_in_flight_one_timeout_and_then_none(start_redis):
    server = start_redis()
    cache = RedisCache(server.url, failure_threshold=3, probe_interval_s=NO_PROBE_S)
    try:
        await cache.set("k", b"v")
        server.pause()  # accepts TCP, never answers: every call in flight waits for its timeout
        before = cache.stats()["attempts"]
        # Fifty calls at once: all are on their way to Redis before the first one times out...
        assert await asyncio.gather(*(cache.get("k") for _ in range(50))) == [b"v"] * 50
        in_flight = cache.stats()["attempts"] - before
        assert 3 <= in_flight <= 50
        assert cache.state == "open"
        # ...and once the breaker is open, no call reaches for the hung server at all.
        results = await asyncio.gather(*(cache.get("k") for _ in range(200)))
        await asyncio.gather(*(cache.set(f"w:{i}", b"w") for i in range(200)))
        assert results == [b"v"] * 200
        assert cache.stats()["attempts"] - before == in_flight
        assert await cache.get_many(["w:0", "w:199"]) == [b"w", b"w"]
    finally:
        await cache.close()


async def test_below_the_threshold_the_breaker_stays_closed_and_a_success_resets_the_count(start_redis):
    server = start_redis()
    cache = RedisCache(server.url, failure_threshold=3, probe_interval_s=NO_PROBE_S)
    try:
        await cache.set("k", b"v")
        for _ in range(2):
            server.pause()
            for _ in range(2):
                assert await cache.get("k") == b"v"  # a failed call, answered from the in-process copy
            server.resume()
            await cache.set("k", b"v")  # a success: the two failures before it no longer count
            assert cache.state == "closed"
        stats = cache.stats()
        assert (stats["errors"], stats["breaker_opens"], stats["skipped"]) == (4, 0, 0)
    finally:
        await cache.close()


async def test_killed_redis_restarted_on_its_port_is_found_again_by_the_probe(start_redis, caplog):
    caplog.set_level(logging.INFO, logger=CACHE_LOGGER)
    server = start_redis()
    port = server.port
    cache = RedisCache(server.url, failure_threshold=1, probe_interval_s=0.05, **PATIENT)
    try:
        await cache.set("before", b"1")
        server.kill()
        assert await cache.get("before") == b"1"
        assert cache.state == "open"
        await cache.set("during", b"2")
        opened = cache.stats()
        await _wait_for(lambda: cache.stats()["probe_failures"] >= 3, "three failed probes")
        for _ in range(100):
            assert await cache.get("during") == b"2"
        # Probes run in the background; callers never reached for Redis meanwhile.
        assert cache.stats()["attempts"] == opened["attempts"]

        server = start_redis(port)  # same port, empty data
        await _wait_for(lambda: cache.state == "closed", "the breaker to close")
        stats = cache.stats()
        assert (stats["breaker_opens"], stats["breaker_closes"], stats["breaker_open"]) == (1, 1, 0)
        assert stats["probes"] == stats["probe_failures"] + 1

        await cache.set("after", b"3")
        raw = aioredis.Redis.from_url(server.url)
        try:
            assert await raw.get("after") == b"3"  # written to the restarted server
        finally:
            await raw.aclose()
        # The restarted Redis never had these; the in-process copy still serves them.
        assert await cache.get_many(["before", "during", "after"]) == [b"1", b"2", b"3"]
        assert cache.stats()["errors"] == stats["errors"]  # the new connections work at once
        assert len(_warnings(caplog)) == 1 and len(_recoveries(caplog)) == 1
    finally:
        await cache.close()


async def test_a_hung_redis_that_answers_again_is_reconnected(start_redis):
    server = start_redis()
    cache = RedisCache(server.url, failure_threshold=1, probe_interval_s=0.05)
    try:
        await cache.set("k", b"v")
        server.pause()
        assert await cache.get("k") == b"v"
        assert cache.state == "open"
        await _wait_for(lambda: cache.stats()["probe_failures"] >= 2, "two probes timing out")
        server.resume()
        await _wait_for(lambda: cache.state == "closed", "the breaker to close")
        errors = cache.stats()["errors"]
        await cache.set("k2", b"w")
        assert await cache.get("k2") == b"w"
        assert cache.stats()["errors"] == errors
        assert cache.stats()["writes"] == 2
    finally:
        await cache.close()


async def test_each_outage_opens_and_closes_the_breaker_once(start_redis, caplog):
    caplog.set_level(logging.INFO, logger=CACHE_LOGGER)
    server = start_redis()
    cache = RedisCache(server.url, failure_threshold=1, probe_interval_s=0.05, **PATIENT)
    try:
        for outage in (1, 2):
            server.kill()
            for _ in range(20):
                assert await cache.get(f"k{outage}") is None
            failed = cache.stats()["probe_failures"]
            await _wait_for(lambda f=failed: cache.stats()["probe_failures"] >= f + 2, "failing probes")
            assert len(_warnings(caplog)) == outage  # failed probes are quiet
            server = start_redis(server.port)
            await _wait_for(lambda: cache.state == "closed", "the breaker to close")
            await cache.set(f"k{outage}", b"v")
            assert await cache.get(f"k{outage}") == b"v"
        stats = cache.stats()
        assert (stats["breaker_opens"], stats["breaker_closes"]) == (2, 2)
        assert len(_recoveries(caplog)) == 2
    finally:
        await cache.close()


async def test_refusals_from_a_reachable_redis_do_not_open_the_breaker(start_redis):
    server = start_redis()
    cache = RedisCache(server.url, failure_threshold=1, probe_interval_s=NO_PROBE_S, **PATIENT)
    raw = aioredis.Redis.from_url(server.url)
    try:
        await raw.set("k", b"v")
        # Out of memory with no eviction: Redis refuses every write but still serves reads.
        await raw.config_set("maxmemory-policy", "noeviction")
        await raw.config_set("maxmemory", "1")
        for i in range(5):
            await cache.set(f"w:{i}", b"x")
        assert cache.state == "closed"
        assert await cache.get("k") == b"v"
        stats = cache.stats()
        assert (stats["errors"], stats["writes"], stats["breaker_opens"], stats["attempts"]) == (5, 0, 0, 6)
        assert await cache.get("w:3") == b"x"  # refused by Redis, kept in-process
    finally:
        await raw.aclose()
        await cache.close()


# --- write-behind ------------------------------------------------------------------------------------------


def _writes_in_flight() -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks() if t.get_name() == WRITE_TASK_NAME and not t.done()]


async def test_a_write_behind_returns_before_redis_has_it_and_flush_waits_for_it(start_redis):
    server = start_redis()
    cache = RedisCache(server.url, probe_interval_s=NO_PROBE_S, **PATIENT)
    raw = aioredis.Redis.from_url(server.url)
    try:
        await cache.set("warm", b"up")  # a connection is open before the server stops answering
        server.pause()
        await cache.set_many({"k": b"v"}, wait=False)  # returns although Redis cannot answer
        assert len(_writes_in_flight()) == 1 and cache.stats()["writes"] == 1
        server.resume()
        await cache.flush()
        assert not _writes_in_flight() and cache.stats()["writes"] == 2
        assert await raw.get("k") == b"v"
        assert cache.stats()["errors"] == 0 and cache.state == "closed"
    finally:
        server.resume()
        await raw.aclose()
        await cache.close()


async def test_closing_the_cache_lands_the_writes_still_in_flight(start_redis):
    server = start_redis()
    cache = RedisCache(server.url, probe_interval_s=NO_PROBE_S, **PATIENT)
    raw = aioredis.Redis.from_url(server.url)
    try:
        for i in range(10):
            await cache.set_many({f"late:{i}": str(i).encode()}, wait=False)
        await cache.close()
        assert await raw.mget([f"late:{i}" for i in range(10)]) == [str(i).encode() for i in range(10)]
        assert cache.stats()["writes"] == 10
    finally:
        await raw.aclose()


async def test_more_writes_than_may_be_in_flight_wait_for_redis(start_redis):
    server = start_redis()
    cache = RedisCache(server.url, probe_interval_s=NO_PROBE_S, **PATIENT)
    try:
        await cache.set("warm", b"up")
        server.pause()
        for i in range(MAX_PENDING_WRITES):
            await cache.set_many({f"w:{i}": b"w"}, wait=False)
        assert len(_writes_in_flight()) == MAX_PENDING_WRITES
        # One more: the writer waits for its own round trip instead of adding to the pile.
        held = asyncio.create_task(cache.set_many({"one-more": b"w"}, wait=False))
        await asyncio.sleep(0.2)
        assert not held.done()
        server.resume()
        await held
        await cache.flush()
        assert cache.stats()["writes"] == 1 + MAX_PENDING_WRITES + 1 and cache.stats()["errors"] == 0
    finally:
        server.resume()
        await cache.close()


async def test_a_failed_write_behind_counts_towards_the_breaker_and_the_value_stays_in_process(start_redis):
    server = start_redis()
    cache = RedisCache(server.url, failure_threshold=1, probe_interval_s=NO_PROBE_S, **PATIENT)
    try:
        await cache.set("warm", b"up")
        server.kill()
        await cache.set_many({"k": b"v"}, wait=False)
        await cache.flush()
        stats = cache.stats()
        assert (stats["errors"], stats["writes"], stats["breaker_opens"]) == (1, 1, 1)
        assert cache.state == "open"
        assert await cache.get("k") == b"v"  # from the in-process LRU, Redis left alone
        # With the breaker open nothing is sent, in the background or not.
        await cache.set_many({"k2": b"w"}, wait=False)
        assert not _writes_in_flight() and cache.stats()["skipped"] >= 1
    finally:
        await cache.close()


async def test_memory_cache_writes_are_done_when_set_many_returns():
    cache = MemoryCache(1024)
    await cache.set_many({"k": b"v"}, wait=False)
    await cache.flush()
    assert await cache.get("k") == b"v"


async def test_unreachable_redis_at_start_never_fails_a_request(caplog):
    caplog.set_level(logging.WARNING, logger=CACHE_LOGGER)
    cache = RedisCache(f"redis://127.0.0.1:{free_port()}/0", probe_interval_s=NO_PROBE_S)
    try:
        assert await cache.get_many(["a", "b"]) == [None, None]
        await cache.set_many({"a": b"1"})
        await cache.set_many({"b": b"2"})
        assert cache.state == "open"
        assert await cache.get_many(["a", "b"]) == [b"1", b"2"]
        stats = cache.stats()
        assert (stats["attempts"], stats["skipped"], stats["writes"]) == (3, 1, 0)
        assert len(_warnings(caplog)) == 1
    finally:
        await cache.close()


async def test_closing_an_open_cache_ends_its_probe(start_redis):
    server = start_redis()
    cache = RedisCache(server.url, failure_threshold=1, probe_interval_s=NO_PROBE_S)
    server.kill()
    await cache.get("k")
    assert cache.state == "open"
    assert [t for t in asyncio.all_tasks() if t.get_name() == PROBE_TASK and not t.done()]
    await cache.close()
    assert not [t for t in asyncio.all_tasks() if t.get_name() == PROBE_TASK and not t.done()]


async def test_the_in_process_copy_is_bounded_by_its_size(start_redis):
    server = start_redis()
    cache = RedisCache(server.url, fallback_max_bytes=100, probe_interval_s=NO_PROBE_S, **PATIENT)
    try:
        await cache.set_many({f"k{i}": bytes(40) for i in range(5)})
        assert cache.stats()["fallback_bytes"] == 80 and cache.stats()["fallback_entries"] == 2
        assert cache.stats()["writes"] == 5  # Redis has all of them
    finally:
        await cache.close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"connect_timeout_s": 0}, "connect_timeout_s"),
        ({"socket_timeout_s": -1}, "socket_timeout_s"),
        ({"probe_interval_s": 0}, "probe_interval_s"),
        ({"failure_threshold": 0}, "failure threshold"),
    ],
)
def test_bad_breaker_settings_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        RedisCache("redis://127.0.0.1:6379/0", **kwargs)


# --- construction -----------------------------------------------------------------------------------------


async def test_cache_from_url_picks_redis_only_when_a_url_is_set(redis_server):
    assert isinstance(cache_from_url(None, 1000), MemoryCache)
    assert isinstance(cache_from_url("", 1000), MemoryCache)
    cache = cache_from_url(redis_server.url, 1000)
    try:
        assert isinstance(cache, RedisCache)
        assert redis_server.url in cache.describe()
    finally:
        await cache.close()


async def test_cache_from_settings_passes_the_breaker_settings(start_redis):
    assert isinstance(cache_from_settings(ServiceSettings()), MemoryCache)
    server = start_redis()
    settings = ServiceSettings(
        cache_url=server.url,
        cache_memory_bytes=100,
        cache_breaker_failures=2,
        cache_probe_interval_s=3600,
        cache_connect_timeout_s=5.0,
        cache_socket_timeout_s=5.0,
    )
    cache = cache_from_settings(settings)
    assert isinstance(cache, RedisCache)
    try:
        await cache.set_many({f"k{i}": bytes(40) for i in range(3)})
        assert cache.stats()["fallback_bytes"] == 80  # cache_memory_bytes bounds the in-process copy
        server.kill()
        for _ in range(10):
            await cache.get("k2")
        assert cache.stats()["attempts"] == 1 + 2  # the write, then two failures open the breaker
    finally:
        await cache.close()


def test_invalid_redis_url_is_a_config_error():
    with pytest.raises(ConfigError, match="cache URL"):
        RedisCache("http://127.0.0.1:6379")


async def test_describe_hides_the_password():
    cache = RedisCache("redis://user:hunter2@127.0.0.1:6390/1")
    try:
        assert "hunter2" not in cache.describe()
        assert "127.0.0.1:6390/1" in cache.describe()
    finally:
        await cache.close()


def test_start_redis_without_binary_says_how_to_install(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RedisStartError, match=r"scripts/install-dev\.sh"):
        start_redis_process()
    assert "install-dev.sh" in INSTALL_HINT


# --- keys -------------------------------------------------------------------------------------------------

MODEL = "ViT-L-14@sha256:0f1e2d3c"
PARAMS = {"n": 3, "variant": "beam", "template": 2}
IMAGE_SHA = hashlib.sha256(b"image bytes").hexdigest()


def _h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def test_key_layout_is_stable():
    # Pinned: changing how keys are built must bump KEY_VERSION, or old entries would be misread.
    canonical_params = '{"n":3,"template":2,"variant":"beam"}'
    expected = f"cir:v1:captions:{_h(MODEL)}:{_h(canonical_params)}:{IMAGE_SHA}"
    assert cache_key("captions", MODEL, PARAMS, IMAGE_SHA) == expected


def test_key_ignores_parameter_order():
    reordered = {"template": 2, "variant": "beam", "n": 3}
    assert cache_key("captions", MODEL, PARAMS, IMAGE_SHA) == cache_key(
        "captions", MODEL, reordered, IMAGE_SHA
    )


@pytest.mark.parametrize(
    "change",
    [
        {"kind": "edited_captions"},
        {"model": "ViT-L-14@sha256:0f1e2d3d"},
        {"params": {**PARAMS, "n": 4}},
        {"params": {**PARAMS, "variant": "nucleus"}},
        {"params": {**PARAMS, "template": 3}},
        {"params": {**PARAMS, "extra": None}},
        {"params": {**PARAMS, "n": True}},  # bool and int must not collide
        {"params": {**PARAMS, "n": "3"}},
        {"params": {**PARAMS, "nested": {"a": [1, 2]}}},
        {"content": hashlib.sha256(b"other image").hexdigest()},
        {"content": "a text query"},
    ],
)
def test_any_change_of_input_changes_the_key(change):
    base = {"kind": "captions", "model": MODEL, "params": PARAMS, "content": IMAGE_SHA}
    assert cache_key(**base) != cache_key(**{**base, **change})


def test_nested_params_are_canonical_too():
    a = cache_key("k", MODEL, {"p": {"x": 1, "y": 2}}, "c")
    b = cache_key("k", MODEL, {"p": {"y": 2, "x": 1}}, "c")
    assert a == b


def test_key_length_is_bounded_and_free_text_is_hashed():
    long_text = "a red dress " * 1000
    key = cache_key("text_embedding", "m" * 5000, {"p": "x" * 5000}, long_text)
    assert len(key) < 120
    assert long_text[:20] not in key
    assert key.endswith(":" + _h(long_text))


def test_image_digest_is_kept_readable_in_the_key():
    assert cache_key("captions", MODEL, {}, IMAGE_SHA).endswith(":" + IMAGE_SHA)


@pytest.mark.parametrize("kind", ["", "Captions", "a:b", "with space", "x" * 49])
def test_bad_kind_is_refused(kind):
    with pytest.raises(ValueError, match="cache kind"):
        cache_key(kind, MODEL, {}, "c")


def test_empty_model_identity_is_refused():
    with pytest.raises(ValueError, match="model identity"):
        cache_key("k", "", {}, "c")


def test_params_without_a_canonical_form_are_refused():
    with pytest.raises(TypeError, match="canonical JSON"):
        cache_key("k", MODEL, {"obj": object()}, "c")
    with pytest.raises(ValueError):
        cache_key("k", MODEL, {"t": float("nan")}, "c")


def test_numpy_scalars_and_enums_hash_like_their_values():
    assert cache_key("k", MODEL, {"n": np.int64(3)}, "c") == cache_key("k", MODEL, {"n": 3}, "c")
    assert cache_key("k", MODEL, {"f": common_pb2.VECTOR_FORMAT_FLOATS}, "c") == cache_key(
        "k", MODEL, {"f": 1}, "c"
    )


# --- codecs -----------------------------------------------------------------------------------------------


def test_pack_f32_is_little_endian_float32():
    assert pack_f32(np.array([1.0, -2.5])) == struct.pack("<2f", 1.0, -2.5)


def test_f32_round_trip_from_float64_and_big_endian_inputs():
    vec = np.random.default_rng(0).standard_normal(768)
    out = unpack_f32(pack_f32(vec.astype(">f8")), 768)
    assert out.dtype == np.float32
    assert np.array_equal(out, vec.astype(np.float32))
    out[0] = 5.0  # callers may normalise in place


@pytest.mark.parametrize(
    ("data", "dim", "message"), [(b"\x00" * 7, None, "not a multiple of 4"), (b"\x00" * 8, 3, "dim is 3")]
)
def test_unpack_f32_rejects_bad_lengths(data, dim, message):
    with pytest.raises(InvalidArgument, match=message):
        unpack_f32(data, dim)


def test_pack_f32_refuses_non_vectors():
    with pytest.raises(ValueError, match="1-D"):
        pack_f32(np.zeros((2, 2)))


def test_matrix_round_trip_and_shape():
    mat = np.arange(12, dtype=np.float64).reshape(3, 4)
    packed = pack_f32_matrix(mat)
    assert len(packed) == 12 + 4 * 12
    out = unpack_f32_matrix(packed, dim=4)
    assert out.shape == (3, 4)
    assert np.array_equal(out, mat.astype(np.float32))
    assert unpack_f32_matrix(pack_f32_matrix(np.zeros((0, 5))), 5).shape == (0, 5)


def test_matrix_rejects_bad_data():
    packed = pack_f32_matrix(np.ones((2, 3)))
    with pytest.raises(InvalidArgument, match="header says 2x3"):
        unpack_f32_matrix(packed[:-4])
    with pytest.raises(InvalidArgument, match="3 columns, expected 4"):
        unpack_f32_matrix(packed, dim=4)
    with pytest.raises(InvalidArgument, match="not a packed float32 matrix"):
        unpack_f32_matrix(pack_f32(np.ones(6)))
    with pytest.raises(InvalidArgument, match="shorter than its 12-byte header"):
        unpack_f32_matrix(b"F32M")


def test_json_round_trip():
    obj = {"captions": ["a dog", "ein Hund ü"], "n": 2}
    assert unpack_json(pack_json(obj)) == obj
    assert b" " not in pack_json({"a": [1, 2]})
    with pytest.raises(ValueError):
        pack_json({"x": float("inf")})


# --- proto vectors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt",
    [
        common_pb2.VECTOR_FORMAT_UNSPECIFIED,
        common_pb2.VECTOR_FORMAT_FLOATS,
        common_pb2.VECTOR_FORMAT_PACKED_F32,
    ],
)
def test_proto_vector_round_trip(fmt):
    vec = np.random.default_rng(1).standard_normal(16).astype(np.float32)
    msg = vector_to_proto(vec, fmt)
    assert msg.dim == 16
    if fmt == common_pb2.VECTOR_FORMAT_PACKED_F32:
        assert msg.packed_f32le == pack_f32(vec) and not msg.values
    else:
        assert len(msg.values) == 16 and not msg.packed_f32le
    assert np.array_equal(vector_from_proto(msg, expected_dim=16), vec)


def test_proto_vector_without_dim_is_accepted():
    assert vector_from_proto(common_pb2.Vector(values=[1.0, 2.0])).tolist() == [1.0, 2.0]
    assert vector_from_proto(common_pb2.Vector(packed_f32le=pack_f32(np.ones(3)))).shape == (3,)


@pytest.mark.parametrize(
    ("msg", "message"),
    [
        (common_pb2.Vector(packed_f32le=b"\x00" * 10, dim=3), "not a multiple of 4"),
        (common_pb2.Vector(packed_f32le=b"\x00" * 8, dim=3), "dim is 3"),
        (common_pb2.Vector(values=[1.0, 2.0], dim=3), "2 values but dim is 3"),
        (common_pb2.Vector(values=[1.0], packed_f32le=b"\x00" * 4), "set exactly one"),
        (common_pb2.Vector(dim=4), "is empty"),
        (common_pb2.Vector(values=[1.0, float("nan")]), "NaN"),
    ],
)
def test_bad_proto_vectors_are_invalid_arguments(msg, message):
    with pytest.raises(InvalidArgument, match=message):
        vector_from_proto(msg, label="query_vector")


def test_proto_vector_of_wrong_model_dimension_is_refused():
    with pytest.raises(InvalidArgument, match="this model's vectors have 768"):
        vector_from_proto(common_pb2.Vector(values=[0.5] * 512), expected_dim=768)


def test_unknown_vector_format_is_refused():
    with pytest.raises(InvalidArgument, match="unknown vector format"):
        vector_to_proto(np.ones(2), 99)
