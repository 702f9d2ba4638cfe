"""Per-attempt timeouts: one loop timer per engine, the semantics of asyncio.timeout."""

from __future__ import annotations

import asyncio

import pytest

from engine.deadlines import SWEEP_AT, Deadlines


async def test_expiry_raises_timeout_error():
    d = Deadlines()
    with pytest.raises(TimeoutError):
        async with d.after(0.05):
            await asyncio.sleep(5)


async def test_work_ending_in_time_is_untouched_and_leaves_the_task_uncancelled():
    d = Deadlines()
    async with d.after(5):
        await asyncio.sleep(0)
    assert asyncio.current_task().cancelling() == 0
    await asyncio.sleep(0.01)  # no late cancellation arrives


async def test_a_cancellation_from_elsewhere_stays_a_cancellation():
    d = Deadlines()

    async def body():
        async with d.after(5):
            await asyncio.sleep(5)

    task = asyncio.create_task(body())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_many_attempts_share_one_timer_and_each_times_out_on_its_own():
    d = Deadlines()
    outcomes: dict[int, str] = {}

    async def attempt(i: int, seconds: float, work: float):
        try:
            async with d.after(seconds):
                await asyncio.sleep(work)
            outcomes[i] = "ok"
        except TimeoutError:
            outcomes[i] = "timeout"

    await asyncio.gather(
        *(attempt(i, 0.05 if i % 2 else 5, 0.2 if i % 3 == 0 else 0) for i in range(30))
    )
    for i in range(30):
        expect = "timeout" if i % 2 and i % 3 == 0 else "ok"
        assert outcomes[i] == expect, i
    loop = asyncio.get_running_loop()
    assert sum(1 for h in loop._scheduled if not h.cancelled()) <= 1  # one timer, not 30


async def test_ended_entries_do_not_pile_up():
    d = Deadlines()
    for _ in range(10 * SWEEP_AT):
        async with d.after(300):
            pass
    assert len(d) <= 2 * SWEEP_AT + 2


async def test_an_earlier_deadline_rearms_the_timer():
    d = Deadlines()

    async def long():
        async with d.after(60):
            await asyncio.sleep(0.3)

    task = asyncio.create_task(long())
    await asyncio.sleep(0)
    with pytest.raises(TimeoutError):
        async with d.after(0.05):
            await asyncio.sleep(5)
    await task  # the long one was not cut short
