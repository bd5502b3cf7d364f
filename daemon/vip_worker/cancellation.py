"""Cancelling a job the poller holds: run a handler so that a cancel request stops it,
and delete a cancelled job's message.

How a cancellation reaches a handler::

    request_cancel (API, CLI) -> job.cancelRequestedAt
      -> the ledger's renewal (once per heartbeat interval) names the job  -> ``request``
      -> async handler: its task is cancelled (``JobCancelled`` for the outcome)
      -> blocking handler: ``ctx.cancelled`` is set; it stops at its next
         ``ctx.raise_if_cancelled()``, or is abandoned after ``cancel_grace_s`` (its
         thread runs on, its outcome is ignored; the poller recycles as for a timeout)
      -> ``decide``: ``Action.CANCEL`` -> the ledger's ``cancel_held`` (job ``cancelled``)
         and ``drop``: the message is deleted, never retried nor dead-lettered.

A job cancelled while queued never reaches a handler: its claim answers ``cancelled``
and the consumer calls ``drop`` at once. A handler that returns despite the request
(it finished first) keeps its outcome: its result exists, the job is completed.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from vip_worker.errors import JobCancelled
from vip_worker.inflight import InFlight

log = logging.getLogger("vip_worker.cancellation")


@dataclass(slots=True, eq=False)
class Watch:
    """A running handler the poller may have to stop: the task that awaits it."""

    task: asyncio.Task
    ctx: Any
    blocking: bool
    stopped: bool = False  # we cancelled ``task`` (async: at once; blocking: after the grace)
    timer: asyncio.TimerHandle | None = None  # a blocking handler's grace period


class Cancellations:
    """One poller's cancel requests and its handlers' runs.

    :param grace_s: how long a blocking handler may go on once told (``cancel_grace_s``).
    :param pool: the handler threads.
    :param deleters: each queue's delete batcher (``Consumer.deleters``).
    :param heartbeat: stops extending a dropped message.
    :param on_abandoned: called for each blocking handler abandoned.
    """

    def __init__(self, grace_s: float, pool: Executor, deleters: dict[str, Any], heartbeat,
                 on_abandoned: Callable[[], None]) -> None:
        self.grace_s = grace_s
        self.pool = pool
        self.deleters = deleters
        self.heartbeat = heartbeat
        self.on_abandoned = on_abandoned
        self.running: dict[int, Watch] = {}  # by id(item), while its handler runs
        self.cancelled = 0  # messages of cancelled jobs deleted

    def request(self, item: InFlight) -> None:
        """The item's job has a cancel request (the ledger's renewal says so): tell its
        handler, now or when it starts."""
        if item.cancel_requested:
            return
        item.cancel_requested = True
        log.info("job.cancel_requested", extra=item.log_fields())
        watch = self.running.get(id(item))
        if watch is not None:
            self.tell(watch)

    def tell(self, watch: Watch) -> None:
        watch.ctx.cancel_event.set()
        if watch.blocking:
            loop = asyncio.get_running_loop()
            watch.timer = loop.call_later(self.grace_s, self.interrupt, watch)
        else:
            self.interrupt(watch)

    @staticmethod
    def interrupt(watch: Watch) -> None:
        # The task awaiting the handler; its CancelledError is told from any other
        # cancellation (a timeout, a stop) by ``stopped`` and the task's cancel count.
        watch.stopped = True
        watch.task.cancel()

    async def execute(self, handler, item: InFlight, ctx) -> None:
        """Run ``handler`` on the item until it ends or its job is cancelled (in the
        calling task: nothing more per message than a dict entry).

        :raises JobCancelled: the handler was stopped (async) or abandoned (blocking).
        """
        task = asyncio.current_task()
        watch = Watch(task, ctx, blocking=not handler.is_async)
        if item.cancel_requested and handler.is_async:
            raise JobCancelled("cancelled before its handler started")
        self.running[id(item)] = watch
        try:
            if item.cancel_requested:  # told between the claim and the start
                self.tell(watch)
            if handler.is_async:
                await handler.fn(item.envelope, ctx)
            else:
                loop = asyncio.get_running_loop()
                result = await loop.run_in_executor(self.pool, handler.fn, item.envelope, ctx)
                if inspect.isawaitable(result):
                    # A callable the registry could not tell was async (e.g. an object
                    # with async __call__): its work is this awaitable.
                    await result
        except asyncio.CancelledError:
            if not watch.stopped:
                raise  # not ours
            watch.stopped = False
            if task.uncancel() > 0:
                raise  # ours, and another one (a timeout, a stop) as well
            if not watch.blocking:
                raise JobCancelled("its task was cancelled") from None
            # RUNNING, ignoring the request: abandoned (a thread cannot be stopped)
            self.on_abandoned()
            log.warning("job.abandoned", extra={**item.log_fields(), "grace_s": self.grace_s})
            raise JobCancelled(f"ignored its cancellation for cancel_grace_s="
                               f"{self.grace_s:g} and was abandoned") from None
        finally:
            self.running.pop(id(item), None)
            if watch.timer is not None:
                watch.timer.cancel()
            if watch.stopped:
                task.uncancel()  # it swallowed our cancellation and ended by itself

    async def drop(self, item: InFlight, duration_s: float | None) -> bool:
        """Delete a cancelled job's message; True when this call settled it."""
        if not item.settle():  # RECEIVED | RUNNING -> SETTLING, unless already handed back
            return False
        self.heartbeat.untrack(item)
        failure = await self.deleters[item.queue.name].add((item.receipt,))
        self.cancelled += 1
        log.info("job.cancelled", extra={
            **item.log_fields(), "started": item.started,
            "duration_s": None if duration_s is None else round(duration_s, 4),
            "delete_failed": failure.code if failure else None})
        return True
