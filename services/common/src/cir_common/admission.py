"""Bounded waiting for a limited resource: call slots (admission control) and other process-wide budgets.

`FairSemaphore` is the one primitive: a weighted, first-come-first-served semaphore with a bound on how
many may wait. `AdmissionGate` puts it in front of every RPC of a service (see `server.py`): at most
`max_concurrent_rpcs` calls run, at most `max_queued_rpcs` wait, and a call that finds the queue full is
answered RESOURCE_EXHAUSTED at once, with a hint of when to retry, rather than piling up on the event loop.

Everything here lives on one event loop and is not thread-safe: acquire and release from async code.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

from cir_common import metrics
from cir_common.errors import DeadlineExceeded, ResourceExhausted

ResultT = TypeVar("ResultT")

# A queued call cancelled this close to its deadline is counted as timed out, not as cancelled by the client.
_DEADLINE_MARGIN_S = 0.05

# Retry hints stay in this range: under 50 ms a client would just hammer a busy server; past 10 s the
# estimate (a mean of recent work) is too rough to promise anything.
MIN_RETRY_AFTER_MS = 50
MAX_RETRY_AFTER_MS = 10_000


async def to_thread_to_completion(func: Callable[..., ResultT], *args: object) -> ResultT:
    """`asyncio.to_thread`, except that a cancelled caller still waits for the thread to finish.

    A thread cannot be stopped: memory it allocates stays in use until it returns. Run such work inside a
    reservation with this, so the reservation is not released while the thread still holds the memory.
    The caller's CancelledError is raised once the thread is done.
    """
    work = asyncio.ensure_future(asyncio.to_thread(func, *args))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await asyncio.wait({work})
        if not work.cancelled():
            work.exception()  # retrieved, so a failure is not reported as never awaited
        raise


class QueueFull(Exception):
    """Raised by `FairSemaphore.acquire` when `max_waiters` callers already wait."""


class FairSemaphore:
    """A weighted semaphore that serves waiters strictly in arrival order.

    First come, first served means a large request (many units) is never starved by a stream of small
    ones slipping past it; the cost is that small requests wait behind it, for about one release.
    """

    def __init__(self, capacity: int, *, max_waiters: int | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        if max_waiters is not None and max_waiters < 0:
            raise ValueError(f"max_waiters must be 0 or more, got {max_waiters}")
        self.capacity = capacity
        self.max_waiters = max_waiters
        self.in_use = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def try_acquire(self, units: int = 1) -> bool:
        """Takes `units` now if they are free and nobody waits ahead; never waits."""
        self._check(units)
        if self._waiters or self.in_use + units > self.capacity:
            return False
        self.in_use += units
        return True

    async def acquire(self, units: int = 1, timeout: float | None = None) -> bool:
        """Takes `units`, waiting up to `timeout` seconds (None: no bound) behind earlier callers.

        Returns whether it had to wait. Raises QueueFull when `max_waiters` already wait, TimeoutError when
        the wait runs out, and CancelledError when the caller is cancelled; in every one of those cases
        nothing is held and the caller is out of the queue.
        """
        if self.try_acquire(units):
            return False
        if self.max_waiters is not None and len(self._waiters) >= self.max_waiters:
            raise QueueFull()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (units, future)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await future
        except BaseException:
            if future.done() and not future.cancelled():
                # The units were handed over just as the wait ended: give them on to the next in line.
                self.release(units)
            else:
                future.cancel()
                self._waiters.remove(entry)
                # Leaving from the head can unblock the callers behind, whose turn it now is.
                self._wake()
            raise
        return True

    def release(self, units: int = 1) -> None:
        self.in_use -= units
        if self.in_use < 0:
            raise RuntimeError("FairSemaphore released more than was acquired")
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            units, future = self._waiters[0]
            if self.in_use + units > self.capacity:
                return  # first come, first served: nobody overtakes the head of the queue
            self._waiters.popleft()
            self.in_use += units
            future.set_result(None)

    def _check(self, units: int) -> None:
        if not 1 <= units <= self.capacity:
            raise ValueError(f"cannot take {units} units of a semaphore of capacity {self.capacity}")


class MeanDuration:
    """Exponentially weighted mean of recent durations: the base of retry hints and of early shedding."""

    def __init__(self, initial_s: float = 0.1, weight: float = 0.2) -> None:
        self.seconds = initial_s
        self.observations = 0
        self._weight = weight

    def observe(self, seconds: float) -> None:
        self.seconds += self._weight * (seconds - self.seconds)
        self.observations += 1


def retry_after_ms(seconds: float) -> int:
    """`seconds` as a retry hint in milliseconds, kept within [MIN_RETRY_AFTER_MS, MAX_RETRY_AFTER_MS]."""
    return int(min(max(seconds * 1000.0, MIN_RETRY_AFTER_MS), MAX_RETRY_AFTER_MS))


@dataclass
class AdmissionStats:
    """Counters of the admission gate (one per process); the gate's `running` and `waiting` are gauges."""

    admitted: int = 0  # calls that got a slot, at once or after waiting
    waited: int = 0  # of those, calls that had to queue first
    rejected: int = 0  # found the queue full: RESOURCE_EXHAUSTED at once
    queue_timeouts: int = 0  # their deadline passed while queued: never ran
    queue_cancelled: int = 0  # the client cancelled while queued: never ran
    shed: int = 0  # would have queued, but the queue ahead outlasts its deadline: RESOURCE_EXHAUSTED at once


class AdmissionGate:
    """At most `max_running` calls run and `max_queued` wait; the rest are refused with a retry hint."""

    def __init__(
        self,
        max_running: int,
        max_queued: int,
        *,
        service: str = "the service",
        settings: tuple[str, str] = ("max_concurrent_rpcs", "max_queued_rpcs"),
        name: str = "rpc",
    ) -> None:
        """`name` labels the gate's metrics (cir_admission_*{gate=...}): "rpc" is the server's."""
        self.name = name
        self._slots = FairSemaphore(max_running, max_waiters=max_queued)
        self._service = service
        # The names of the two limits, as the operator sets them, for the refusal messages.
        self._running_setting, self._queued_setting = settings
        self._call_time = MeanDuration()
        self.stats = AdmissionStats()
        metrics.watch(f"admission:{name}", self, metrics.admission_families)

    @property
    def running(self) -> int:
        return self._slots.in_use

    @property
    def waiting(self) -> int:
        return self._slots.waiting

    def observe(self, seconds: float) -> None:
        """Times one call by hand, for callers that admit with `timed=False` to choose which calls count."""
        self._call_time.observe(seconds)

    def expected_wait_s(self) -> float:
        """About how long a call arriving now waits for a slot: the calls queued ahead drain through the
        slots at the mean call time."""
        if self._slots.in_use < self._slots.capacity and not self.waiting:
            return 0.0
        return self._call_time.seconds * math.ceil((self.waiting + 1) / self._slots.capacity)

    def retry_after_ms(self) -> int:
        return retry_after_ms(self.expected_wait_s())

    def _cannot_finish_in_time(self, remaining: float | None) -> bool:
        """Queueing would be wasted: the wait plus a mean call outlasts the deadline. Only once calls have
        been timed (a cold gate admits), and only for calls that would wait (a free slot always admits)."""
        if remaining is None or self._call_time.observations == 0:
            return False
        wait = self.expected_wait_s()
        return wait > 0 and wait + self._call_time.seconds > remaining

    @asynccontextmanager
    async def admit(
        self, time_remaining: Callable[[], float | None], *, timed: bool = True, shed: bool | None = None
    ) -> AsyncIterator[None]:
        """Holds one slot for the body. `time_remaining` is the call's (None: no deadline); `timed` calls
        feed the mean call time behind retry hints (streams, which hold a slot for long, should not).
        `shed` (default: `timed`) refuses at once a call the queue ahead would keep past its deadline."""
        remaining = time_remaining()
        if (timed if shed is None else shed) and self._cannot_finish_in_time(remaining):
            # Shed now rather than queue a call that would time out in the queue or in its work: the slot
            # it would take is better spent on a call that can still finish (goodput under overload).
            self.stats.shed += 1
            raise ResourceExhausted(
                f"{self._service} cannot start this call in time: about "
                f"{self.expected_wait_s() * 1000:.0f} ms of queued calls ahead and {remaining * 1000:.0f} ms "
                "left of its deadline; retry after the delay in the x-cir-retry-after-ms trailer, with a "
                "longer deadline, or on another replica",
                retry_after_ms=self.retry_after_ms(),
            )
        try:
            waited = await self._slots.acquire(1, remaining)
        except QueueFull:
            self.stats.rejected += 1
            raise ResourceExhausted(
                f"{self._service} is at capacity: {self.running} calls running ({self._running_setting}="
                f"{self._slots.capacity}) and {self.waiting} queued ({self._queued_setting}="
                f"{self._slots.max_waiters}); retry after the delay in the x-cir-retry-after-ms trailer, "
                "or send fewer calls at once",
                retry_after_ms=self.retry_after_ms(),
            ) from None
        except TimeoutError:
            self.stats.queue_timeouts += 1
            raise DeadlineExceeded(
                f"the call's deadline passed while it waited for one of {self._service}'s "
                f"{self._slots.capacity} call slots ({self._running_setting}); it did not run"
            ) from None
        except asyncio.CancelledError:
            # gRPC cancels a call at its deadline too, possibly before our own timer fires; its clock and
            # time_remaining's may differ by a little, hence the margin.
            left = time_remaining()
            if left is not None and left <= _DEADLINE_MARGIN_S:
                self.stats.queue_timeouts += 1
            else:
                self.stats.queue_cancelled += 1
            raise
        self.stats.admitted += 1
        self.stats.waited += waited
        started = time.monotonic()
        try:
            yield
        finally:
            self._slots.release(1)
            if timed:
                self._call_time.observe(time.monotonic() - started)
