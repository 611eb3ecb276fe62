"""Bounded waiting: the fair semaphore behind admission control and the decoded-image budget."""

from __future__ import annotations

import asyncio
import io
import threading

import pytest
from PIL import Image

from cir_common.admission import FairSemaphore, QueueFull, to_thread_to_completion
from cir_common.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted
from cir_common.images import DecodeBudget, ImageLimits, decoded_within


async def _settle() -> None:
    # Lets every task that can run do so (each wake-up is one loop iteration).
    for _ in range(10):
        await asyncio.sleep(0)


async def test_waiters_are_served_in_arrival_order_and_a_large_one_is_not_overtaken():
    semaphore = FairSemaphore(10)
    assert semaphore.try_acquire(8)
    order: list[str] = []

    async def take(name: str, units: int) -> None:
        await semaphore.acquire(units)
        order.append(name)

    large = asyncio.ensure_future(take("large", 6))
    await _settle()
    small = asyncio.ensure_future(take("small", 1))  # would fit now, but the large one came first
    await _settle()
    assert order == [] and semaphore.waiting == 2
    semaphore.release(8)
    await asyncio.gather(large, small)
    assert order == ["large", "small"]
    assert semaphore.in_use == 7


async def test_a_full_queue_refuses_at_once():
    semaphore = FairSemaphore(1, max_waiters=1)
    assert semaphore.try_acquire()
    waiter = asyncio.ensure_future(semaphore.acquire())
    await _settle()
    with pytest.raises(QueueFull):
        await semaphore.acquire()
    semaphore.release()
    assert await waiter is True  # it had to wait
    assert semaphore.in_use == 1


async def test_a_waiter_that_times_out_or_is_cancelled_leaves_and_unblocks_those_behind():
    semaphore = FairSemaphore(4)
    assert semaphore.try_acquire(3)
    with pytest.raises(TimeoutError):
        await semaphore.acquire(4, timeout=0.01)
    assert semaphore.waiting == 0

    blocker = asyncio.ensure_future(semaphore.acquire(4))  # heads the queue
    behind = asyncio.ensure_future(semaphore.acquire(1))  # fits, but waits behind the head
    await _settle()
    assert not behind.done()
    blocker.cancel()
    await asyncio.wait_for(behind, 30)  # the head left: the one behind gets its turn
    assert semaphore.in_use == 4 and semaphore.waiting == 0


async def test_units_handed_over_as_the_waiter_gives_up_are_passed_on():
    semaphore = FairSemaphore(1)
    assert semaphore.try_acquire()
    first = asyncio.ensure_future(semaphore.acquire())
    second = asyncio.ensure_future(semaphore.acquire())
    await _settle()
    semaphore.release()  # hands the unit to `first` ...
    first.cancel()  # ... which is cancelled before it runs again: the unit must reach `second`
    await asyncio.wait_for(second, 30)
    assert semaphore.in_use == 1 and semaphore.waiting == 0


async def test_decode_budget_waits_then_refuses_naming_the_setting_and_returns_to_zero():
    budget = DecodeBudget(1000, max_wait_s=30, setting="CIR_X_MAX_DECODED_IMAGE_BYTES")
    async with budget.reserve(800, label="images[0]"):
        assert budget.in_use_bytes == 800
        waiting = asyncio.ensure_future(_hold(budget, 500))
        await _settle()
        assert budget.waiting == 1
        budget.max_wait_s = 0.01
        with pytest.raises(ResourceExhausted) as full:
            async with budget.reserve(300, label="images[1]"):
                pass
        assert full.value.message.startswith("images[1]: about")
        assert "CIR_X_MAX_DECODED_IMAGE_BYTES" in full.value.message
        assert full.value.retry_after_ms is not None
    await asyncio.wait_for(waiting, 30)  # got its turn once the first was released
    assert budget.in_use_bytes == 0 and budget.waiting == 0
    assert (budget.stats.reservations, budget.stats.waited, budget.stats.rejected) == (2, 1, 1)
    assert budget.stats.peak_bytes == 800


async def test_a_reservation_larger_than_the_whole_budget_fails_at_once():
    budget = DecodeBudget(1000, max_wait_s=30, setting="CIR_X_MAX_DECODED_IMAGE_BYTES")
    with pytest.raises(InvalidArgument) as err:
        async with budget.reserve(1001, label="images[0]"):
            pass
    assert "CIR_X_MAX_DECODED_IMAGE_BYTES" in err.value.message
    assert budget.in_use_bytes == 0 and budget.stats.oversized == 1


async def _hold(budget: DecodeBudget, nbytes: int) -> None:
    async with budget.reserve(nbytes):
        pass


async def test_a_caller_cancelled_mid_decode_keeps_its_reservation_until_the_thread_is_done():
    budget = DecodeBudget(1000, max_wait_s=30)
    started, finish = threading.Event(), threading.Event()

    def decode() -> str:  # stands in for a long decode holding memory in its thread
        started.set()
        finish.wait(30)
        return "pixels"

    async def request() -> None:
        async with budget.reserve(600):
            await to_thread_to_completion(decode)

    task = asyncio.ensure_future(request())
    await asyncio.to_thread(started.wait, 30)
    task.cancel()
    await _settle()
    assert not task.done() and budget.in_use_bytes == 600  # the thread still holds the pixels
    finish.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 30)
    assert budget.in_use_bytes == 0


async def test_decoded_within_holds_the_estimate_for_the_block_only():
    buffer = io.BytesIO()
    Image.new("L", (50, 40), 128).save(buffer, format="PNG")
    budget = DecodeBudget(1_000_000, max_wait_s=30)
    async with decoded_within(budget, buffer.getvalue(), ImageLimits(), label="reference_image") as image:
        assert (image.width, image.height, image.image.mode) == (50, 40, "RGB")
        assert budget.in_use_bytes == 50 * 40 * (1 + 4)
    assert budget.in_use_bytes == 0
    with pytest.raises(InvalidArgument, match=r"^reference_image is not a recognised image format"):
        async with decoded_within(budget, b"not an image", ImageLimits(), label="reference_image"):
            pass
    assert budget.in_use_bytes == 0 and budget.stats.reservations == 1


async def test_a_call_whose_deadline_the_queue_outlasts_is_shed_at_once_and_others_still_queue():
    from cir_common.admission import AdmissionGate

    gate = AdmissionGate(1, 8, service="svc")
    gate._call_time.observe(10.0)  # calls have been taking ~2 s (0.1 + 0.2 * 9.9)
    mean = gate._call_time.seconds
    release = asyncio.Event()

    async def hold() -> None:
        async with gate.admit(lambda: None):
            await release.wait()

    holder = asyncio.ensure_future(hold())
    await _settle()
    # A free slot admits whatever the deadline; now the slot is taken: waiting ~mean, then ~mean of work.
    with pytest.raises(ResourceExhausted) as refused:
        async with gate.admit(lambda: 1.5 * mean):
            pytest.fail("a call that cannot finish in time must not run")
    assert refused.value.retry_after_ms is not None and "in time" in refused.value.message
    assert gate.stats.shed == 1 and gate.waiting == 0
    ran: list[str] = []

    async def patient() -> None:
        async with gate.admit(lambda: 3 * mean):
            ran.append("patient")

    waiter = asyncio.ensure_future(patient())
    await _settle()
    assert gate.waiting == 1  # a deadline that covers the wait and the work queues as before
    release.set()
    await asyncio.gather(holder, waiter)
    assert ran == ["patient"] and gate.stats.shed == 1


async def test_a_gate_that_has_timed_no_call_yet_queues_rather_than_guesses():
    from cir_common.admission import AdmissionGate

    gate = AdmissionGate(1, 8, service="svc")
    release = asyncio.Event()

    async def hold() -> None:
        async with gate.admit(lambda: None):
            await release.wait()

    holder = asyncio.ensure_future(hold())
    await _settle()
    waiter = asyncio.ensure_future(gate.admit(lambda: 0.001).__aenter__())
    await _settle()
    assert gate.stats.shed == 0 and gate.waiting == 1
    with pytest.raises(DeadlineExceeded):  # it queued, and its deadline passed in the queue
        await waiter
    assert gate.stats.queue_timeouts == 1
    release.set()
    await holder
