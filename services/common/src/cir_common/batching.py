"""Micro-batching of model work across concurrent requests.

Requests submit items under a key (items with the same key can share one model call, e.g.
same preprocessing or same decoding parameters). A batch runs when `max_batch_size` items of
one key are pending or its oldest item has waited `window_s`. One worker thread runs batches
one after another, so the model stays off the event loop and sees one batch at a time; while it
is busy, new items keep joining the pending batches, which therefore grow under load instead of
leaving the worker idle between small ones. Each caller gets exactly its own results, in order.

One item's failure is that item's alone: when a batch raises, its halves are run again (recursively,
down to single items), so the callers whose items work get their results and only the failing item's
caller gets the error. One bad item among n costs about 2 log2(n) extra model calls.

With `max_pending_items`, the items waiting for the model are bounded: a submit that would pass the bound
raises ResourceExhausted at once (with a retry hint), so a burst turns into quick refusals that a client can
retry elsewhere instead of an ever longer queue whose callers all run out of time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from cir_common import metrics
from cir_common.admission import MeanDuration, retry_after_ms
from cir_common.errors import ResourceExhausted

KeyT = TypeVar("KeyT", bound=Hashable)
ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


@dataclass
class _Pending(Generic[ItemT]):
    first_at: float
    items: list[ItemT] = field(default_factory=list)
    futures: list[asyncio.Future[Any]] = field(default_factory=list)
    submitted: list[float] = field(default_factory=list)  # when each item came (time.monotonic())


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    largest_batch: int = 0
    # batches that raised and were split to find the failing items, and the items that failed alone
    split_batches: int = 0
    failed_items: int = 0
    # submits refused because max_pending_items were already waiting
    rejected_submits: int = 0


class MicroBatcher(Generic[KeyT, ItemT, ResultT]):
    def __init__(
        self,
        run_batch: Callable[[KeyT, list[ItemT]], Sequence[ResultT]],
        *,
        max_batch_size: int,
        window_s: float,
        name: str = "model",
        max_pending_items: int | None = None,
        limit_setting: str = "max_pending_items",
    ) -> None:
        """`max_pending_items` (None: no bound) caps the items waiting for the model, over all keys;
        `limit_setting` names the setting behind it in the refusal, so an operator knows what to raise."""
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if max_pending_items is not None and max_pending_items < 1:
            raise ValueError("max_pending_items must be at least 1")
        self._run_batch = run_batch
        self._max = max_batch_size
        self._window_s = window_s
        self._pending: dict[KeyT, _Pending[ItemT]] = {}
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._name = name
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"{name}-batch"
        )
        self._max_pending = max_pending_items
        self._limit_setting = limit_setting
        self._batch_time = MeanDuration()
        self.stats = BatchStats()
        metrics.watch(f"batcher:{name}", self, metrics.batcher_families)

    @property
    def name(self) -> str:
        return self._name

    @property
    def pending_items(self) -> int:
        """Items waiting for the model (not counting the batch running now). Safe to read from another
        thread (the metrics scrape): the pending batches are copied in one step."""
        return sum(len(pending.items) for pending in list(self._pending.values()))

    async def submit(self, key: KeyT, items: Sequence[ItemT]) -> list[ResultT]:
        """Runs `items` (possibly together with other callers' items) and returns their results.

        Raises ResourceExhausted at once when that would put more than `max_pending_items` in waiting."""
        self._check_room(len(items))
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            self._wakeup = asyncio.Event()
            self._worker = loop.create_task(self._work())
        pending = self._pending.get(key)
        now = time.monotonic()
        if pending is None:
            pending = self._pending[key] = _Pending(first_at=now)
        futures = [loop.create_future() for _ in items]
        pending.items.extend(items)
        pending.futures.extend(futures)
        pending.submitted.extend([now] * len(items))
        assert self._wakeup is not None
        self._wakeup.set()
        return list(await asyncio.gather(*futures))

    def _check_room(self, count: int) -> None:
        if self._max_pending is None:
            return
        if self.pending_items + count > self._max_pending:
            self._drop_abandoned()  # callers that gave up hold no room
        pending = self.pending_items
        if pending + count <= self._max_pending:
            return
        self.stats.rejected_submits += 1
        batches_ahead = -(-pending // self._max)
        # A request larger than the whole queue never fits: no retry hint for it.
        hint = None if count > self._max_pending else self._batch_time.seconds * max(batches_ahead, 1)
        raise ResourceExhausted(
            f"the {self._name} queue is full: {pending} items wait for the model and this request adds "
            f"{count}, over the limit of {self._max_pending} ({self._limit_setting}); retry after the delay "
            "in the x-cir-retry-after-ms trailer, or send fewer items per request",
            retry_after_ms=None if hint is None else retry_after_ms(hint),
        )

    def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _drop_abandoned(self) -> None:
        for key in list(self._pending):
            pending = self._pending[key]
            live = [i for i, f in enumerate(pending.futures) if not f.done()]
            if not live:
                del self._pending[key]
            elif len(live) < len(pending.futures):
                pending.items = [pending.items[i] for i in live]
                pending.futures = [pending.futures[i] for i in live]
                pending.submitted = [pending.submitted[i] for i in live]

    def _next_ready(self) -> tuple[KeyT | None, float]:
        """The key to run now (oldest first), or None and how long until one is due."""
        self._drop_abandoned()
        now = time.monotonic()
        best: KeyT | None = None
        wait = float("inf")
        for key, pending in self._pending.items():
            due = now if len(pending.items) >= self._max else pending.first_at + self._window_s
            if due <= now and (best is None or pending.first_at < self._pending[best].first_at):
                best = key
            wait = min(wait, due - now)
        return best, max(wait, 0.0)

    async def _work(self) -> None:
        assert self._wakeup is not None
        while True:
            key, wait = self._next_ready()
            if key is None:
                if not self._pending:
                    return  # idle: `submit` starts a new worker (no await since the check, so no race)
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), wait)
                continue
            pending = self._pending[key]
            items, futures = pending.items[: self._max], pending.futures[: self._max]
            pending.items, pending.futures = pending.items[self._max :], pending.futures[self._max :]
            oldest, pending.submitted = pending.submitted[0], pending.submitted[self._max :]
            if pending.items:
                pending.first_at = time.monotonic() - self._window_s  # the rest has waited long enough
            else:
                del self._pending[key]
            await self._execute(key, items, futures, oldest)

    async def _execute(
        self, key: KeyT, items: list[ItemT], futures: list[asyncio.Future[Any]], oldest: float
    ) -> None:
        """Runs one batch; `oldest` is when its oldest item came."""
        self.stats.batches += 1
        self.stats.items += len(items)
        self.stats.largest_batch = max(self.stats.largest_batch, len(items))
        started = time.monotonic()
        await self._run_isolating_failures(key, items, futures)
        seconds = time.monotonic() - started
        self._batch_time.observe(seconds)
        metrics.batch_done(self._name, len(items), started - oldest, seconds)

    async def _run_isolating_failures(
        self, key: KeyT, items: list[ItemT], futures: list[asyncio.Future[Any]]
    ) -> None:
        """Runs `items`; if the batch raises, runs each half again, so an error reaches only its own item."""
        live = [i for i, f in enumerate(futures) if not f.done()]
        if not live:
            return
        if len(live) < len(items):  # callers that gave up while an earlier part ran
            items, futures = [items[i] for i in live], [futures[i] for i in live]
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._executor, self._run_batch, key, items)
            if len(results) != len(items):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(items)} items")
        except Exception as error:  # noqa: BLE001 - split the batch, or deliver to the one item's caller
            if len(items) > 1:
                self.stats.split_batches += 1
                middle = len(items) // 2
                await self._run_isolating_failures(key, items[:middle], futures[:middle])
                await self._run_isolating_failures(key, items[middle:], futures[middle:])
                return
            self.stats.failed_items += 1
            if not futures[0].done():
                futures[0].set_exception(error)
            return
        for future, result in zip(futures, results, strict=True):
            if not future.done():
                future.set_result(result)
