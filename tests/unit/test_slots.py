"""Slots: a fair share of free handler slots for each receive loop."""

from __future__ import annotations

import asyncio

from vip_worker.slots import Slots


def run(coro):
    return asyncio.run(coro)


async def settle():
    for _ in range(5):
        await asyncio.sleep(0)


def test_acquire_takes_at_most_what_is_asked_and_free():
    async def main():
        slots = Slots(3)
        first = await slots.acquire(10)
        return first, slots.free

    assert run(main()) == (3, 0)


def test_contenders_get_a_fair_share():
    async def main():
        slots = Slots(10)
        a = await slots.acquire(10, share_among=2)
        b = await slots.acquire(10, share_among=1)
        return a, b, slots.free

    assert run(main()) == (5, 5, 0)


def test_a_share_is_rounded_up_and_never_zero():
    async def main():
        slots = Slots(3)
        return await slots.acquire(10, share_among=2), await slots.acquire(10, share_among=5)

    assert run(main()) == (2, 1)


def test_release_wakes_a_waiter_with_what_was_freed():
    async def main():
        slots = Slots(2)
        await slots.acquire(2)
        waiter = asyncio.create_task(slots.acquire(10))
        await settle()
        assert not waiter.done()
        slots.release(1)
        return await asyncio.wait_for(waiter, 5), slots.free

    assert run(main()) == (1, 0)


def test_one_free_slot_wakes_one_of_two_waiters():
    async def main():
        slots = Slots(1)
        await slots.acquire(1)
        waiters = [asyncio.create_task(slots.acquire(1)) for _ in range(2)]
        await settle()
        slots.release(1)
        await settle()
        done = [w.result() for w in waiters if w.done()]
        slots.close()
        rest = await asyncio.wait_for(asyncio.gather(*waiters), 5)
        return done, sorted(rest)

    assert run(main()) == ([1], [0, 1])


def test_close_returns_zero_to_waiters_and_later_callers():
    async def main():
        slots = Slots(1)
        await slots.acquire(1)
        waiter = asyncio.create_task(slots.acquire(5))
        await settle()
        slots.close()
        return await asyncio.wait_for(waiter, 5), await slots.acquire(5), slots.waiters

    assert run(main()) == (0, 0, [])


def test_close_returns_zero_even_with_free_slots():
    async def main():
        slots = Slots(3)
        slots.close()
        return await slots.acquire(2), slots.free

    assert run(main()) == (0, 3)


def test_a_cancelled_waiter_leaves_no_trace():
    async def main():
        slots = Slots(1)
        await slots.acquire(1)
        waiter = asyncio.create_task(slots.acquire(1))
        await settle()
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        slots.release(1)
        return slots.waiters, slots.free

    assert run(main()) == ([], 1)


def test_releasing_nothing_is_a_no_op():
    slots = Slots(2)
    slots.release(0)
    slots.release(-3)
    assert slots.free == 2


def test_wait_for_returns_at_once_when_satisfied_or_closed_and_times_out_otherwise():
    async def scenario():
        loop = asyncio.get_running_loop()
        slots = Slots(3)
        await slots.wait_for(3)  # already free: no wait, no timeout needed
        await slots.acquire(3)
        started = loop.time()
        await slots.wait_for(2, timeout_s=0.05)  # nothing comes back: the timeout ends it
        assert loop.time() - started >= 0.04 and slots.waiters == []
        waiter = asyncio.create_task(slots.wait_for(2))
        await asyncio.sleep(0)
        slots.release(1)
        await asyncio.sleep(0)
        assert not waiter.done()  # 1 free is not the 2 it needs
        slots.release(1)
        await asyncio.wait_for(waiter, 1)
        slots.close()
        await asyncio.wait_for(slots.wait_for(10), 1)  # closed: returns at once

    asyncio.run(scenario())
