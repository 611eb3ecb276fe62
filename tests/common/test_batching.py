"""Micro-batching: callers share model calls and each gets exactly its own results."""

from __future__ import annotations

import asyncio
import threading

import pytest

from cir_common.batching import MicroBatcher


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
