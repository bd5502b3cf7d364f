"""The dashboard's shared queue-attributes cache: one per web process.

However many browsers are open, SQS's GetQueueAttributes is called at most once per queue
per ``dashboard_refresh_s``: every reader of a queue's counts goes through ``QueueStats``,
which keeps each queue's last answer until the interval it was asked in ends (intervals
aligned on the monotonic clock, ``QueueStats.slot``) and lets
concurrent readers of an expired queue wait for the ONE call in progress (single-flight)
instead of making their own. A failed call is kept for the interval too, so an SQS outage
is not hammered by every open page. A page load takes an answer up to two intervals old
and leaves the refresh to the background, so it never waits on SQS but the first time.

One call per queue gives everything a page needs: the three counts and the RedrivePolicy
that names its DLQ (whose URL is looked up once, with GetQueueUrl, and kept). A DLQ's
depth is its own queue's call, cached the same way.

SQS is read through the blocking ``SqsClient`` the CLI's ``status`` uses (created in this
process at first use, never inherited across a fork), in a worker thread.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from vip_worker.sqs.api import TRANSPORT_ERRORS, error_code
from vip_worker.sqs.queues import COUNT_ATTRIBUTES, queue_name, redrive_target

ATTRIBUTES = [*COUNT_ATTRIBUTES, "RedrivePolicy"]
STALE_INTERVALS = 2  # how old an answer a page load takes (refreshed in the background)


class AttributeReader(Protocol):
    """What QueueStats needs of SQS: ``SqsClient``'s two blocking lookups."""

    def queue_attributes(self, queue_url: str, names: Sequence[str]) -> dict[str, str]: ...

    def queue_url(self, name: str, owner_account: str = "") -> str: ...


@dataclass(frozen=True, slots=True)
class QueueCounts:
    """One queue as the overview shows it; counts are None when SQS could not be read."""

    name: str
    url: str
    visible: int | None = None
    in_flight: int | None = None
    delayed: int | None = None
    dlq_name: str | None = None
    dlq_depth: int | None = None
    error: str | None = None

    @property
    def backlog(self) -> int | None:
        """Visible plus in flight: the work still to do (the autoscaling signal's part)."""
        if self.visible is None or self.in_flight is None:
            return None
        return self.visible + self.in_flight


@dataclass(slots=True)
class Entry:
    at_s: float
    value: dict[str, str] | None = None
    error: BaseException | None = None


def counts_of(attrs: dict[str, str]) -> tuple[int, int, int]:
    visible, in_flight, delayed = (int(attrs.get(name, 0) or 0) for name in COUNT_ATTRIBUTES)
    return visible, in_flight, delayed


def describe(exc: BaseException) -> str:
    return f"{error_code(exc)}: {str(exc)[:200]}"


class QueueStats:
    """The counts of ``queues`` (``QueueSettings``), each read at most once per ``refresh_s``.

    ``reader_factory`` makes the SQS client (called once, in a worker thread, at the first
    read); ``clock`` is the monotonic clock (injected by tests). Use from one event loop.
    """

    def __init__(self, queues: Sequence[Any], reader_factory: Callable[[], AttributeReader],
                 refresh_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.queues = list(queues)
        self.refresh_s = refresh_s
        self.clock = clock
        self._factory = reader_factory
        self._reader: AttributeReader | None = None
        self._reader_lock = threading.Lock()
        self._cache: dict[str, Entry] = {}
        self._pending: dict[str, asyncio.Future] = {}
        self._dlq_urls: dict[tuple[str, str], str] = {}
        self._queue_dlqs: dict[str, str | None] = {}  # queue URL -> its DLQ's, once known

    def reader(self) -> AttributeReader:
        with self._reader_lock:  # two queues' first calls run in two threads at once
            if self._reader is None:
                self._reader = self._factory()
            return self._reader

    async def attributes(self, url: str, stale_ok: bool = False) -> dict[str, str]:
        """The queue's ``ATTRIBUTES``: the answer asked in this interval, else the answer of
        the one GetQueueAttributes in progress (started here if none is).

        ``stale_ok`` (a page load): an answer up to ``STALE_INTERVALS`` intervals old is
        returned at once, the refresh started in the background (the live producer never
        passes it, so each update has this interval's counts).

        :raises TRANSPORT_ERRORS: SQS's failure (kept for the interval, as answers are).
        """
        entry = self._cache.get(url)
        now_s = self.clock()
        fresh = entry is not None and self.slot(entry.at_s) == self.slot(now_s)
        pending = self._pending.get(url)
        if not fresh and pending is None:
            pending = asyncio.ensure_future(self._refresh(url))
            pending.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved
            self._pending[url] = pending
        if fresh or (stale_ok and entry is not None
                     and now_s - entry.at_s < STALE_INTERVALS * self.refresh_s):
            if entry.error is not None:
                raise entry.error
            return entry.value or {}
        # shield: a reader that goes away (a closed page) must not cancel the others' call
        return await asyncio.shield(pending)

    def slot(self, at_s: float) -> int:
        """The refresh interval ``at_s`` falls in: intervals are aligned on the clock,
        [k x refresh_s, (k + 1) x refresh_s), so "at most one call per interval" holds for
        every interval, and the live producer (which ticks on their boundaries) finds each
        tick's answers one interval old and reads afresh."""
        return math.floor(at_s / self.refresh_s)

    async def _refresh(self, url: str) -> dict[str, str]:
        # Stamped with the call's start: the interval the call was made in.
        started_s = self.clock()
        try:
            value = await asyncio.to_thread(self._get, url)
        except TRANSPORT_ERRORS as exc:
            self._cache[url] = Entry(started_s, error=exc)
            raise
        finally:
            self._pending.pop(url, None)
        self._cache[url] = Entry(started_s, value=value)
        return value

    def _get(self, url: str) -> dict[str, str]:
        return self.reader().queue_attributes(url, ATTRIBUTES)

    async def dlq_url(self, queue: Any, attrs: dict[str, str]) -> str | None:
        """The queue's DLQ: its ``dlq_url`` setting, else its RedrivePolicy's target (looked
        up once per process)."""
        if queue.dlq_url:
            return queue.dlq_url
        target = redrive_target(attrs)
        if target is None:
            return None
        if target not in self._dlq_urls:
            self._dlq_urls[target] = await asyncio.to_thread(self.reader().queue_url, *target)
        return self._dlq_urls[target]

    async def read_queue(self, queue: Any, stale_ok: bool = False) -> QueueCounts:
        """One queue's counts and its DLQ's depth; an SQS failure is the row's ``error``.
        Once the DLQ is known, both are asked at once (one round trip, not two)."""
        guess = queue.dlq_url or self._queue_dlqs.get(queue.url)
        early = None
        if guess:
            early = asyncio.ensure_future(self.attributes(guess, stale_ok))
            early.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved
        try:
            attrs = await self.attributes(queue.url, stale_ok)
        except TRANSPORT_ERRORS as exc:
            if early is not None:
                early.cancel()  # the call itself goes on (shielded) for other readers
            return QueueCounts(queue.name, queue.url, error=describe(exc))
        visible, in_flight, delayed = counts_of(attrs)
        try:
            dlq = await self.dlq_url(queue, attrs)
            self._queue_dlqs[queue.url] = dlq
            if dlq is not None:
                if early is not None and dlq == guess:
                    dlq_attrs = await early
                else:  # the RedrivePolicy names another DLQ now
                    dlq_attrs = await self.attributes(dlq, stale_ok)
        except (*TRANSPORT_ERRORS, ValueError) as exc:
            return QueueCounts(queue.name, queue.url, visible, in_flight, delayed,
                               error=f"DLQ: {describe(exc)}")
        finally:
            if early is not None and not early.done():
                early.cancel()
        if dlq is None:
            return QueueCounts(queue.name, queue.url, visible, in_flight, delayed)
        return QueueCounts(queue.name, queue.url, visible, in_flight, delayed,
                           queue_name(dlq), sum(counts_of(dlq_attrs)))

    async def read(self, stale_ok: bool = False) -> list[QueueCounts]:
        """Every configured queue, in the settings' order (their calls run concurrently)."""
        return list(await asyncio.gather(*(self.read_queue(q, stale_ok) for q in self.queues)))


def sqs_reader_factory(settings) -> Callable[[], AttributeReader]:
    """The CLI's blocking client (``vip-worker status``'s), made when first needed."""

    def make() -> AttributeReader:
        from vip_worker.sqs.boto import connect

        return connect(settings.region, settings.sqs_endpoint_url, max_pool=4)

    return make
