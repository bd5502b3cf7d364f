"""Counting free handler slots, so a receive asks only for what can start now."""

from __future__ import annotations

import asyncio
import math


class Slots:
    """A counter of free slots that receive loops reserve before each receive.

    ``acquire(most, share_among)`` waits until a slot is free, then takes up to
    ``most`` but no more than a fair share of what is free: with two queues and
    ten free slots, each long poll holds five, so an empty queue's long poll
    does not starve the other queue for its 20 seconds.

    ``wait_for(need, timeout_s)`` waits for ``need`` free slots, at most that long:
    the consumer uses it to fill a receive (see ``Consumer.reserve``).
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.free = total
        self.closed = False
        # (slots needed, future): woken when that many are free, or on close.
        self.waiters: list[tuple[int, asyncio.Future]] = []

    async def acquire(self, most: int, share_among: int = 1) -> int:
        """Take 1..``most`` slots (0 once closed)."""
        while self.free <= 0 and not self.closed:
            await self.wait_for(1)
        if self.closed:
            return 0
        taken = min(most, max(1, math.ceil(self.free / max(1, share_among))), self.free)
        self.free -= taken
        return taken

    async def wait_for(self, need: int, timeout_s: float | None = None) -> None:
        """Until ``need`` slots are free, the slots close, or ``timeout_s`` passes."""
        if self.closed or self.free >= need:
            return
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        entry = (need, waiter)
        self.waiters.append(entry)
        timer = loop.call_later(timeout_s, resolve, waiter) if timeout_s is not None else None
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()
            if entry in self.waiters:
                self.waiters.remove(entry)

    def release(self, count: int = 1) -> None:
        if count <= 0:
            return
        self.free += count
        if self.waiters:
            self.wake()

    def close(self) -> None:
        """Make every waiting and future ``acquire`` return 0 (shutdown)."""
        self.closed = True
        self.wake()

    def wake(self) -> None:
        keep = []
        for need, waiter in self.waiters:
            if self.closed or self.free >= need:
                resolve(waiter)
            else:
                keep.append((need, waiter))
        self.waiters = keep


def resolve(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)
