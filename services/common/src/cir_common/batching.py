"""Micro-batching of model work across concurrent requests.

Requests submit items under a key (items with the same key can share one model call, e.g.
same preprocessing or same decoding parameters). Items wait at most `window_s` for company,
or until `max_batch_size` are pending, then run together in one call of `run_batch` on a
single worker thread: the model stays off the event loop, and one model sees one batch at a
time. Each caller gets exactly its own results, in order.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

KeyT = TypeVar("KeyT", bound=Hashable)
ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

log = logging.getLogger(__name__)


@dataclass
class _Pending(Generic[ItemT]):
    items: list[ItemT] = field(default_factory=list)
    futures: list[asyncio.Future[Any]] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    largest_batch: int = 0


class MicroBatcher(Generic[KeyT, ItemT, ResultT]):
    def __init__(
        self,
        run_batch: Callable[[KeyT, list[ItemT]], Sequence[ResultT]],
        *,
        max_batch_size: int,
        window_s: float,
        name: str = "model",
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self._run_batch = run_batch
        self._max = max_batch_size
        self._window_s = window_s
        self._pending: dict[KeyT, _Pending[ItemT]] = {}
        # One thread: batches run one after another on the model, in the order they closed.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"{name}-batch"
        )
        self.stats = BatchStats()

    async def submit(self, key: KeyT, items: Sequence[ItemT]) -> list[ResultT]:
        """Runs `items` (possibly together with other callers' items) and returns their results."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = []
        for item in items:
            future: asyncio.Future[Any] = loop.create_future()
            futures.append(future)
            pending = self._pending.setdefault(key, _Pending())
            pending.items.append(item)
            pending.futures.append(future)
            if len(pending.items) >= self._max:
                self._close(key)
            elif pending.timer is None:
                pending.timer = loop.call_later(self._window_s, self._close, key)
        return list(await asyncio.gather(*futures))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _close(self, key: KeyT) -> None:
        pending = self._pending.pop(key, None)
        if pending is None:
            return
        if pending.timer is not None:
            pending.timer.cancel()
        asyncio.get_running_loop().create_task(self._execute(key, pending))

    async def _execute(self, key: KeyT, pending: _Pending[ItemT]) -> None:
        live = [i for i, f in enumerate(pending.futures) if not f.done()]
        if not live:  # every caller went away: skip the model call
            return
        items = [pending.items[i] for i in live]
        self.stats.batches += 1
        self.stats.items += len(items)
        self.stats.largest_batch = max(self.stats.largest_batch, len(items))
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._executor, self._run_batch, key, items)
            if len(results) != len(items):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(items)} items")
        except Exception as error:  # noqa: BLE001 - delivered to every caller of the batch
            for i in live:
                if not pending.futures[i].done():
                    pending.futures[i].set_exception(error)
            return
        for i, result in zip(live, results, strict=True):
            if not pending.futures[i].done():
                pending.futures[i].set_result(result)
