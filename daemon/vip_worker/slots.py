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
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.free = total
        self.closed = False
        self.waiters: list[asyncio.Future] = []

    async def acquire(self, most: int, share_among: int = 1) -> int:
        """Take 1..``most`` slots (0 once closed)."""
        while self.free <= 0 and not self.closed:
            waiter = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self.waiters:
                    self.waiters.remove(waiter)
        if self.closed:
            return 0
        taken = min(most, max(1, math.ceil(self.free / max(1, share_among))), self.free)
        self.free -= taken
        return taken

    def release(self, count: int = 1) -> None:
        if count <= 0:
            return
        self.free += count
        self.wake()

    def close(self) -> None:
        """Make every waiting and future ``acquire`` return 0 (shutdown)."""
        self.closed = True
        self.wake()

    def wake(self) -> None:
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
