"""The lifeline: a periodic sweep that finds orphaned jobs and rescues them.

No job waits for an operator. Poller 0 of every daemon runs the sweep as a task on its
event loop, every ``lifeline_interval_s`` on average (each wait drawn at random between
75 % and 125 % of it, the first one between 0 and 100 %, so that daemons booted together
do not sweep in lockstep). Each sweep makes at most two indexed queries of the job store,
off the loop, each bounded by ``lifeline_batch``:

- ``expired_leases``: ``processing`` jobs whose lease ran out (their poller died or froze
  and nobody renewed the lease). Each is rescued and its message re-sent.
- ``stale_queued``: ``queued`` jobs that nothing claimed for ``lifeline_queued_after_s``
  (their message may have been lost). A job waiting behind a backlog is not an orphan.
  One is rescued only when its queue's backlog (messages visible, in flight or delayed:
  SQS's approximate counts, read once per queue and sweep) is empty - the job has been
  queued far longer than those counters lag, so its message is not in the queue - or
  small enough to have been drained since: this poller alone took at least that many
  messages off the queue (succeeded or dead-lettered) since the job was queued, so the
  queue turned over while the job waited, and SQS's best-effort ordering would have
  delivered its message. Otherwise the job waits for a later sweep (``lifeline.backlog``).

A rescue is the store's compare-and-set on the state the sweeper saw: of every daemon of
a fleet sweeping at once, exactly one wins each orphan; the others get None and do
nothing. The winner of a ``RESEND`` sends the job's message again, in the app's envelope,
to the queue the job names (``queue``, else the queue named after its type); a job whose
queue this daemon does not know is failed with a reason naming the queue. The winner of
a ``FAILED`` (attempts spent) puts the job's message in its queue's DLQ with the reason
attributes the consumer writes, as for every failed job, so ``dlq redrive`` can run it
again. A wrong guess
(the message was not lost after all) costs one duplicate message, never a second
generation: the job's claim makes the duplicate a no-op (``COMPLETED`` deletes it,
``BUSY`` waits for the running one).

The store is reached through the poller's ``store`` resource, duck-typed (this package
does not import ``vip_worker.store``): a ``RescueOutcome`` is a ``StrEnum`` that compares
equal to ``"resend"`` and ``"failed"``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from vip_worker.errors import DependencyUnavailable, MalformedMessage
from vip_worker.message import Envelope, parse_envelope
from vip_worker.outcomes import (
    ATTEMPTS,
    ERROR_CLASS,
    ERROR_TEXT,
    REASON_MAX,
    SOURCE_MESSAGE_ID,
    SOURCE_QUEUE,
    string_attr,
)
from vip_worker.sqs.api import TRANSPORT_ERRORS, SqsApi, error_code

log = logging.getLogger("vip_worker.services.lifeline")

JITTER = 0.25  # each wait is interval_s x (1 +- JITTER)
HISTORY = 512  # drained-count samples kept per queue: one per sweep (~4 h at 30 s)
LEASE_REASON = "lease expired: its poller stopped renewing it"
ERROR_CLASS_NAME = "OrphanedJob"  # vip_error_class of the DLQ copy of a job it failed
# Messages in the queue by state: any of them may be the stale job's message.
BACKLOG_ATTRIBUTES = ("ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                      "ApproximateNumberOfMessagesDelayed")


def schedule(interval_s: float, rand: Callable[[], float] = random.random) -> Iterator[float]:
    """The waits before each sweep: the first in [0, interval_s), spreading a fleet booted
    at once over one interval; then interval_s x [1 - JITTER, 1 + JITTER), so sweepers
    that happen to meet drift apart again. ``rand()`` returns a float in [0, 1)."""
    yield interval_s * rand()
    while True:
        yield interval_s * (1 - JITTER + 2 * JITTER * rand())


def queued_reason(after_s: float) -> str:
    return f"queued over {after_s:g} s with no delivery seen: its message was lost"


def stamp(now: datetime) -> str:
    """The envelope's ``timestamp``: ISO 8601 UTC with milliseconds, as the producer writes."""
    return now.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class NoStore(Exception):
    """Nothing provides a job store in this process: there is nothing to sweep."""


@dataclass
class Sweep:
    """What one sweep did (also the ``lifeline.swept`` line's fields)."""

    resent: int = 0
    failed: int = 0
    lost_races: int = 0  # another sweeper (or the job's holder) got there first
    behind_backlog: int = 0  # stale queued jobs left alone: their queue is not empty
    send_failed: int = 0
    not_ours: int = 0  # on a queue this daemon does not serve: left to the daemons that do
    store_unavailable: bool = False


class Lifeline:
    """One daemon's sweeper.

    :param settings: the daemon's settings (``queues`` and the ``lifeline_*`` values).
    :param store_of: returns the job store (the poller's ``store`` resource; opened on
        first use, so it is called off the loop).
    :param sqs: the poller's asynchronous SQS client.
    :param clock: wall-clock time, aware UTC (the store's leases are wall-clock).
    :param on_rescue: called ``(queue name, outcome)`` for each rescue this sweeper won
        on a queue it knows (the poller counts them in its metrics).
    :param dlq_urls: queue name -> its DLQ's URL (or None), as the poller resolved them.
    :param drained: ``drained(queue name)``: messages this poller has taken off the queue
        since it started (succeeded or dead-lettered), a count that only grows; sampled
        at each sweep to tell a backlog that turned over from one that did not. None:
        only an empty queue has its stale jobs rescued.
    """

    def __init__(self, settings, store_of: Callable[[], Any], sqs: SqsApi, *,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 on_rescue: Callable[[str, str], None] | None = None,
                 drained: Callable[[str], int] | None = None,
                 dlq_urls: Mapping[str, str | None] | None = None) -> None:
        self.settings = settings
        self.store_of = store_of
        self.sqs = sqs
        self.clock = clock
        self.on_rescue = on_rescue
        # ``on_ended(job_id, payload)``: a job this sweeper failed has ended (the poller
        # sets it to record the job's completion callback).
        self.on_ended: Callable[[str, Any], Any] | None = None
        self.queues = {q.name: q for q in settings.queues}
        self.by_url = {q.url: q for q in settings.queues}
        self.executor: ThreadPoolExecutor | None = None
        self.drained = drained
        self.dlq_urls = dict(dlq_urls or {})
        # queue -> (sweep time, drained count), oldest first
        self.history: dict[str, deque[tuple[datetime, int]]] = {}

    async def run(self, rand: Callable[[], float] = random.random) -> None:
        """Sweep forever, on ``schedule``; a sweep's failure is logged, never fatal."""
        interval = self.settings.lifeline_interval_s
        if not interval:
            return
        try:
            for delay in schedule(interval, rand):
                await asyncio.sleep(delay)
                try:
                    await self.sweep()
                except NoStore as exc:
                    log.info("lifeline.off", extra={"error": str(exc)})
                    return
                except Exception as exc:  # noqa: BLE001 - a bug must not stop the poller
                    log.error("lifeline.sweep_failed", exc_info=True, extra={
                        "error": f"{type(exc).__name__}: {exc}"[:500]})
        finally:
            self.close()

    def close(self) -> None:
        if self.executor is not None:
            # A store call still running finishes in its thread; nobody waits for it.
            self.executor.shutdown(wait=False)
            self.executor = None

    async def call(self, method: str, *args, **kwargs) -> Any:
        """``store.<method>(...)`` in the sweeper's thread: the store blocks."""
        if self.executor is None:
            self.executor = ThreadPoolExecutor(1, thread_name_prefix="lifeline")

        def work():
            try:
                store = self.store_of()
            except LookupError as exc:  # the context's "no resource 'store'"
                raise NoStore(str(exc)) from exc
            return getattr(store, method)(*args, **kwargs)

        return await asyncio.get_running_loop().run_in_executor(self.executor, work)

    async def sweep(self) -> Sweep:
        """One pass: the expired leases, then the stale queued jobs. A store outage ends
        the pass (``lifeline.store_unavailable``, once); the next one tries again."""
        result = Sweep()
        now = self.clock()
        batch = self.settings.lifeline_batch
        after_s = self.settings.lifeline_queued_after_s
        backlogs: dict[str, int | None] = {}  # per queue, read once per sweep when needed
        waiting: dict[str, int] = {}  # stale jobs left behind each queue's backlog
        self.sample(now)
        try:
            grace = timedelta(seconds=self.settings.lifeline_lease_grace_s)
            # A lease is over only a grace after its end: the holder's clock may run
            # behind ours, or its renewals be late, while its handler still runs.
            for job in await self.call("expired_leases", now - grace, batch):
                # Held from other claims until the lease ran out two graces ago: a holder
                # silent that long is taken for dead (an old orphan gets no hold at all).
                hold = job["leaseUntil"] + 2 * grace - now
                await self.rescue(job, now, LEASE_REASON, result,
                                  hold_s=max(0.0, hold.total_seconds()))
            stale = await self.call("stale_queued", now - timedelta(seconds=after_s), batch)
            for job in stale:
                queue = self.queue_of(job)
                if queue is not None:
                    if queue.name not in backlogs:
                        backlogs[queue.name] = await self.backlog(queue)
                    if not self.drained_out(queue.name, job, backlogs[queue.name]):
                        # Its message may still be in the queue, behind the others.
                        waiting[queue.name] = waiting.get(queue.name, 0) + 1
                        continue
                await self.rescue(job, now, queued_reason(after_s), result)
        except DependencyUnavailable as exc:
            result.store_unavailable = True
            log.warning("lifeline.store_unavailable", extra={"error": str(exc)[:500]})
        for name, jobs in waiting.items():
            log.debug("lifeline.backlog", extra={"queue": name, "backlog": backlogs[name],
                                                 "jobs": jobs})
        result.behind_backlog = sum(waiting.values())
        log.debug("lifeline.swept", extra=vars(result))
        return result

    def sample(self, now: datetime) -> None:
        """Record each queue's drained count at this sweep."""
        if self.drained is None:
            return
        for name in self.queues:
            samples = self.history.setdefault(name, deque(maxlen=HISTORY))
            samples.append((now, self.drained(name)))

    def drained_since(self, queue: str, since: datetime) -> int:
        """Messages this poller took off ``queue`` since ``since``, at least: counted
        from the last sample at or before it, else from the oldest sample (an
        under-estimate, so the rule below errs towards leaving a job alone)."""
        samples = self.history.get(queue)
        if not samples:
            return 0
        base = samples[0][1]
        for taken_at, count in samples:
            if taken_at > since:
                break
            base = count
        return samples[-1][1] - base

    def drained_out(self, queue: str, job: dict[str, Any], backlog: int | None) -> bool:
        """Whether the stale ``job``'s message cannot be waiting in ``queue``: its backlog
        is empty, or no bigger than what this poller alone drained since the job was
        queued (the queue turned over while it waited). An unknown backlog: no."""
        if backlog is None:
            return False
        if backlog == 0:
            return True
        queued_at = job.get("queuedAt") or job.get("createdAt")
        return queued_at is not None and self.drained_since(queue, queued_at) >= backlog

    def queue_of(self, job: dict[str, Any]):
        """The configured queue the job's message goes to: the one it names (by name or
        URL), else, for a job that names none (the app's documents), the queue named
        after its type, as the producer sends it. None: not one this daemon knows."""
        named = job.get("queue")
        if named:
            return self.queues.get(named) or self.by_url.get(named)
        return self.queues.get(job.get("type") or "")

    async def backlog(self, queue) -> int | None:
        """Messages in the queue in any state; None when SQS did not say (a backlog,
        then: leave the stale jobs for a later sweep)."""
        try:
            attrs = await self.sqs.queue_attributes(queue.url, BACKLOG_ATTRIBUTES)
        except TRANSPORT_ERRORS as exc:
            log.warning("lifeline.backlog_unknown", extra={
                "queue": queue.name, "error_code": error_code(exc)})
            return None
        return sum(int(attrs.get(name, 0)) for name in BACKLOG_ATTRIBUTES)

    async def rescue(self, job: dict[str, Any], now: datetime, reason: str,
                     result: Sweep, hold_s: float = 0.0) -> None:
        """Rescue one orphan as seen; the winner of a re-send sends its message. A job
        on a queue this daemon does not serve is left to the daemons that serve it; one
        whose message the consumer would refuse is failed with the reason why, rather
        than rescued forever."""
        queue = self.queue_of(job)
        if queue is None:
            # Another daemon of the fleet may serve that queue: its own lifeline rescues
            # the job. Failing it here would fail jobs of a fleet split by queue.
            result.not_ours += 1
            log.debug("lifeline.not_ours", extra={"job_id": job.get("_id"),
                                                  "reason": nowhere(job)})
            return
        body, why_not = self.message(job, now)
        if why_not:
            reason = f"{reason}; {why_not}"
        max_attempts = queue.max_attempts if queue is not None else 1
        held = {"hold_s": hold_s} if hold_s > 0 else {}  # (a store from before holds)
        outcome = await self.call("rescue", job, now, resend=body is not None,
                                  reason=reason, max_attempts=max_attempts, **held)
        if outcome is None:
            result.lost_races += 1
            return
        # processing | queued -> queued (resend) or failed: this sweeper won
        fields = {"job_id": job.get("_id"), "queue": queue.name if queue else job.get("queue"),
                  "attempts": job.get("attempts") or 0, "outcome": str(outcome),
                  "reason": reason, "status_was": job.get("status")}
        if outcome == "resend":
            result.resent += 1
            fields["message_id"] = await self.send(job, queue, body, now, result)
        else:
            result.failed += 1
            if queue is not None and body is not None:
                fields["dead_lettered"] = await self.dead_letter(job, queue, body, reason, now)
            if self.on_ended is not None:  # its completion callback (services/callbacks.py)
                await self.on_ended(str(job["_id"]), job.get("params"))
        log.info("job.rescued", extra=fields)
        if queue is not None and self.on_rescue is not None:
            self.on_rescue(queue.name, str(outcome))

    @staticmethod
    def message(job: dict[str, Any], now: datetime) -> tuple[str | None, str | None]:
        """(the job's message in the app's envelope, None), or (None, why it cannot be
        sent): checked by the consumer's own parser, so a re-sent message is never one
        the consumer dead-letters as malformed."""
        envelope = Envelope(job_id=str(job.get("_id") or ""), user_id=job.get("userId") or "",
                            type=job.get("type") or "", timestamp=stamp(now),
                            payload=job.get("params") or {})
        try:
            body = envelope.to_body()
            parse_envelope(body)
        except (TypeError, ValueError, MalformedMessage) as exc:
            return None, f"its message cannot be sent again: {exc}"[:500]
        return body, None

    async def send(self, job: dict[str, Any], queue, body: str, now: datetime,
                   result: Sweep) -> str | None:
        """Send the job's message again; None when SQS refused it. The job stays
        ``queued`` (``queuedAt`` = now) then, so a later sweep finds it stale and
        re-sends it: the lifeline rescues its own failures too."""
        group = dedup = None
        if queue.fifo:
            group, dedup = job.get("userId"), dedup_id(job, now)
        try:
            return await self.sqs.send(queue.url, body, None, group, dedup)
        except TRANSPORT_ERRORS as exc:
            result.send_failed += 1
            log.warning("lifeline.send_failed", extra={
                "job_id": job["_id"], "queue": queue.name, "error_code": error_code(exc)})
            return None


    async def dead_letter(self, job: dict[str, Any], queue, body: str, reason: str,
                          now: datetime) -> bool:
        """Put the failed job's message in its queue's DLQ with the consumer's reason
        attributes; False when the queue has none or SQS refused it (logged: the job is
        failed with its reason either way)."""
        dlq = self.dlq_urls.get(queue.name)
        if not dlq:
            return False
        attributes = {
            SOURCE_MESSAGE_ID: string_attr(job.get("messageId") or ""),
            ERROR_CLASS: string_attr(ERROR_CLASS_NAME),
            ATTEMPTS: {"DataType": "Number", "StringValue": str(job.get("attempts") or 0)},
            SOURCE_QUEUE: string_attr(queue.name),
            ERROR_TEXT: string_attr(reason[:REASON_MAX]),
        }
        group = dedup = None
        if dlq.endswith(".fifo"):
            group, dedup = job.get("userId"), dedup_id(job, now)
        try:
            await self.sqs.send(dlq, body, attributes, group, dedup)
        except TRANSPORT_ERRORS as exc:
            log.warning("lifeline.dead_letter_failed", extra={
                "job_id": job["_id"], "queue": queue.name, "error_code": error_code(exc)})
            return False
        return True


def dedup_id(job: dict[str, Any], now: datetime) -> str:
    """A fresh FIFO deduplication id: the original send's (the jobId) may be in the window.
    The job id is hashed (64 hex digits), so the rescue's time always fits in SQS's 128
    characters: a long job id truncated would drop it, and dedupe a later rescue away."""
    digest = hashlib.sha256(str(job["_id"]).encode()).hexdigest()
    text = f"{digest}-{stamp(now)}"
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)


def nowhere(job: dict[str, Any]) -> str:
    """Why a job has no queue to go back to on this daemon."""
    named = job.get("queue")
    if named:
        return f"queue {named!r} is not configured on this daemon"
    return f"it names no queue and no queue is named {job.get('type')!r}"
