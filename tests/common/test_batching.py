"""Micro-batching: callers share model calls and each gets exactly its own results."""

from __future__ import annotations

import asyncio
import threading

import pytest

from cir_common.batching import MicroBatcher
from cir_common.errors import ResourceExhausted


def _square_batches(calls: list[tuple[str, list[int]]]):
    def run(key: str, items: list[int]) -> list[tuple[str, int]]:
        calls.append((key, list(items)))
        return [(key, item * item) for item in items]

    return run


async def test_concurrent_callers_share_batches_and_get_their_own_results():
    calls: list[tuple[str, list[int]]] = []
    batcher = MicroBatcher(_square_batches(calls), max_batch_size=64, window_s=0.05)
    requests = [list(range(start, start + 3)) for start in range(0, 30, 3)]
    results = await asyncio.gather(*(batcher.submit("k", items) for items in requests))
    for items, got in zip(requests, results, strict=True):
        assert got == [("k", i * i) for i in items]
    assert len(calls) == 1 and sorted(calls[0][1]) == list(range(30))
    batcher.close()


async def test_batches_never_exceed_max_size_and_keys_never_mix():
    calls: list[tuple[str, list[int]]] = []
    batcher = MicroBatcher(_square_batches(calls), max_batch_size=4, window_s=0.02)
    a, b = await asyncio.gather(batcher.submit("a", list(range(10))), batcher.submit("b", [100, 101]))
    assert a == [("a", i * i) for i in range(10)]
    assert b == [("b", 10000), ("b", 10201)]
    assert all(len(items) <= 4 for _, items in calls)
    assert {key for key, _ in calls} == {"a", "b"}
    assert all(all(i >= 100 for i in items) for key, items in calls if key == "b")
    batcher.close()


async def test_batches_run_off_the_event_loop_one_at_a_time():
    running = threading.Semaphore(1)
    overlaps = []

    def run(key: str, items: list[int]) -> list[int]:
        if not running.acquire(blocking=False):
            overlaps.append(items)
        try:
            assert threading.current_thread() is not threading.main_thread()
            return items
        finally:
            running.release()

    batcher = MicroBatcher(run, max_batch_size=2, window_s=0.001)
    results = await asyncio.gather(*(batcher.submit(str(i % 3), [i]) for i in range(20)))
    assert [r[0] for r in results] == list(range(20))
    assert overlaps == []
    batcher.close()


async def test_a_failing_batch_fails_its_callers_only():
    def run(key: str, items: list[int]) -> list[int]:
        if key == "bad":
            raise ValueError("model exploded")
        return items

    batcher = MicroBatcher(run, max_batch_size=8, window_s=0.01)
    good, bad = await asyncio.gather(
        batcher.submit("good", [1, 2]), batcher.submit("bad", [3]), return_exceptions=True
    )
    assert good == [1, 2]
    assert isinstance(bad, ValueError)
    batcher.close()


async def test_cancelled_callers_are_skipped():
    calls: list[tuple[str, list[int]]] = []
    batcher = MicroBatcher(_square_batches(calls), max_batch_size=64, window_s=0.05)
    doomed = asyncio.ensure_future(batcher.submit("k", [7]))
    await asyncio.sleep(0)
    doomed.cancel()
    assert await batcher.submit("k", [3]) == [("k", 9)]
    assert calls == [("k", [3])]
    with pytest.raises(asyncio.CancelledError):
        await doomed
    batcher.close()


async def test_items_arriving_while_the_worker_is_busy_join_the_next_batch():
    sizes: list[int] = []
    gate = threading.Event()

    def run(key: str, items: list[int]) -> list[int]:
        sizes.append(len(items))
        if len(sizes) == 1:
            gate.wait(5)  # the first batch keeps the worker busy
        return items

    batcher = MicroBatcher(run, max_batch_size=64, window_s=0.001)
    first = asyncio.ensure_future(batcher.submit("k", [0]))
    while not sizes:
        await asyncio.sleep(0.001)
    later = [asyncio.ensure_future(batcher.submit("k", [i])) for i in range(1, 11)]
    await asyncio.sleep(0.05)  # far past the window: still one batch, because the worker was busy
    gate.set()
    assert await first == [0]
    assert [await f for f in later] == [[i] for i in range(1, 11)]
    assert sizes == [1, 10]
    batcher.close()


async def test_one_failing_item_fails_only_its_own_caller():
    calls: list[list[int]] = []

    def run(key: str, items: list[int]) -> list[int]:
        calls.append(list(items))
        if 13 in items:
            raise ValueError("item 13 is bad")
        return [item * 10 for item in items]

    batcher = MicroBatcher(run, max_batch_size=64, window_s=0.05)
    requests = [[i] for i in range(10)] + [[13]] + [[20, 21, 22], [30, 31]]
    results = await asyncio.gather(
        *(batcher.submit("k", items) for items in requests), return_exceptions=True
    )
    for items, got in zip(requests, results, strict=True):
        if items == [13]:
            assert isinstance(got, ValueError) and "item 13" in str(got)
        else:
            assert got == [item * 10 for item in items]
    assert sorted(calls[0]) == sorted(i for items in requests for i in items)  # one shared batch first
    assert calls[-1] == [13] or [13] in calls
    assert batcher.stats.failed_items == 1
    assert len(calls) <= 1 + 2 * 5  # split in halves, not re-run one by one
    batcher.close()


async def test_a_caller_with_a_bad_item_gets_the_error_and_its_good_items_are_not_reported():
    def run(key: str, items: list[int]) -> list[int]:
        if any(item < 0 for item in items):
            raise ValueError("negative")
        return items

    batcher = MicroBatcher(run, max_batch_size=8, window_s=0.02)
    mixed, clean = await asyncio.gather(
        batcher.submit("k", [1, -1, 2]), batcher.submit("k", [5, 6]), return_exceptions=True
    )
    assert isinstance(mixed, ValueError)
    assert clean == [5, 6]
    batcher.close()


async def test_pending_items_are_bounded_and_a_full_queue_refuses_at_once():
    started = threading.Event()
    gate = threading.Event()

    def run(key: str, items: list[int]) -> list[int]:
        started.set()
        gate.wait(30)  # the first batch keeps the worker busy while the queue fills
        return items

    batcher = MicroBatcher(
        run, max_batch_size=2, window_s=0.001, max_pending_items=4, limit_setting="CIR_X_MAX_PENDING"
    )
    running = asyncio.ensure_future(batcher.submit("k", [1, 2]))
    for _ in range(3000):  # a state, with a bound
        if started.is_set():
            break
        await asyncio.sleep(0.01)
    assert started.is_set()
    waiting = asyncio.ensure_future(batcher.submit("k", [3, 4, 5, 6]))
    await asyncio.sleep(0)  # submit queues its items before it first waits
    assert batcher.pending_items == 4

    with pytest.raises(ResourceExhausted) as refused:
        await batcher.submit("other", [7])
    assert "CIR_X_MAX_PENDING" in refused.value.message and "4" in refused.value.message
    assert refused.value.retry_after_ms is not None and refused.value.retry_after_ms >= 50
    assert batcher.stats.rejected_submits == 1
    with pytest.raises(ResourceExhausted) as too_big:
        await batcher.submit("other", list(range(5)))  # could never fit: no retry hint
    assert too_big.value.retry_after_ms is None

    gate.set()
    assert await running == [1, 2]
    assert await waiting == [3, 4, 5, 6]
    assert await batcher.submit("other", [7]) == [7]  # room again
    batcher.close()


async def test_a_cancelled_callers_items_free_their_room_in_the_queue():
    started = threading.Event()
    gate = threading.Event()
    calls: list[list[int]] = []

    def run(key: str, items: list[int]) -> list[int]:
        calls.append(list(items))
        started.set()
        gate.wait(30)
        return items

    batcher = MicroBatcher(run, max_batch_size=2, window_s=0.001, max_pending_items=3)
    running = asyncio.ensure_future(batcher.submit("k", [1, 2]))
    for _ in range(3000):
        if started.is_set():
            break
        await asyncio.sleep(0.01)
    doomed = asyncio.ensure_future(batcher.submit("k", [3, 4, 5]))
    await asyncio.sleep(0)
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    later = asyncio.ensure_future(batcher.submit("k", [6, 7]))  # fits only once 3, 4, 5 are dropped
    await asyncio.sleep(0)
    gate.set()
    assert await running == [1, 2]
    assert await later == [6, 7]
    assert [3, 4, 5] not in calls and all(3 not in c for c in calls)
    batcher.close()
