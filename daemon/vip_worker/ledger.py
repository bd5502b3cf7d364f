"""The job store as the daemon's ledger: who holds a job, and its attempts.

For a message whose envelope has a jobId, on a queue with ``track_jobs`` (the default),
the consumer claims the job before its handler starts, with a delivery token per receive
(``delivery_token``) and a short lease; after the handler it settles the job as the
message's outcome says; the lease is renewed for every held job in one store call per
interval (``Ledger.run``), at the heartbeat's pace (half the shortest visibility timeout).
The job's ``attempts`` in the store, not SQS's receive count, are the attempts that
``outcomes.decide`` counts: a receive whose handler never started spends none.

Progress that moves while a handler generates (``pipeline/progress.py``) is handed to the
ledger (``note_progress``, the poller resource ``PROGRESS_SINK``), which keeps the latest
per job and writes all of them in one ``progress_many`` store call every
``progress_interval_s`` (``flush_progress``), on a thread of its own and in a loop of its
own: progress is best effort, and a slow or failing write never delays nor stops the
lease renewal.

The renewal also names the held jobs with a cancel request (``on_cancel``, which
``cancellation.py`` answers); a handler stopped for it settles the job ``cancelled``.

The store is the poller context's "store" resource, reached duck-typed (the spine does
not import ``vip_worker.store``); its calls block, so they run in a small thread pool of
their own, never on the loop nor behind long handlers. Without a "store" resource (a
test harness) or with ``track_jobs`` off for every queue, there is no ledger and
messages run as before.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from vip_worker.errors import DependencyUnavailable
from vip_worker.inflight import InFlight
from vip_worker.outcomes import ERROR_CLASS, Action, Decision, reason_of
from vip_worker.plugins.context import PROGRESS_DROP, STORE, PollerContext

log = logging.getLogger("vip_worker.ledger")

# The store's claim outcomes (vip_worker.store.ClaimOutcome), by value: duck-typed.
CLAIMED, COMPLETED, BUSY, EXHAUSTED = "claimed", "completed", "busy", "exhausted"
FAILED = "failed"
# A message back from a dead-letter queue carries one of these: the consumer's reason
# attributes (a console redrive keeps them) or ``dlq redrive``'s origin (ops/redrive.py).
REDRIVE_MARKS = (ERROR_CLASS, "vip_redriven_from")
CANCELLED = "cancelled"
LEASE_INTERVALS = 3  # a lease lasts this many renewal intervals
MIN_INTERVAL_S = 1.0
LEDGER_THREADS = 4
BUSY_MIN_S = 1.0
UNSETTLED_MAX = 10_000  # message ids remembered after a settle lost to a store outage
PROGRESS_INTERVAL_S = 3.0  # without a progress_interval_s setting
# The poller resource handlers hand their progress to (``note_progress``).
PROGRESS_SINK = "vip_worker.ledger.progress"


def delivery_token(receipt: str) -> str:
    """This receive's delivery token: a short hash of its receipt handle (each receive of
    a message gets a new handle, so two deliveries never share a token)."""
    return hashlib.sha256(receipt.encode()).hexdigest()[:16]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Ledger:
    """One poller's claims: claim, settle, hand back, renew.

    :param context: the poller's context; its "store" resource is opened on first use.
    :param queues: the poller's queues (their ``track_jobs``, visibility timeouts).
    :param wall: the wall clock the store's times are written in.
    """

    def __init__(self, context: PollerContext, queues, wall: Callable[[], datetime] = utc_now
                 ) -> None:
        self.context = context
        tracked = [q.visibility_timeout_s for q in queues if q.track_jobs] or [60]
        self.interval_s = max(MIN_INTERVAL_S, min(tracked) / 2)
        self.wall = wall
        self.pool = ThreadPoolExecutor(max_workers=LEDGER_THREADS, thread_name_prefix="ledger")
        # Renewals get a thread of their own: behind claims and settles stuck in a slow
        # store, a late renewal lets the lease run out under a running handler.
        self.renew_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-renew")
        # Progress too, so that a slow progress write never delays a renewal.
        self.progress_pool = ThreadPoolExecutor(max_workers=1,
                                                thread_name_prefix="ledger-progress")
        self.claimed: dict[int, InFlight] = {}  # held claims, renewed by ``renew``
        self.renewals = 0  # renew_leases calls answered
        # message id -> the delivery whose settle or hand-back a store outage lost: its
        # handler ended (no poller died), so the message's next claim here takes the job
        # over without counting a lost claim. Oldest first, bounded.
        self.unsettled: dict[str, str] = {}
        # Told of each held job the renewal finds with a cancel request (cancellation.py).
        self.on_cancel: Callable[[InFlight], None] = lambda item: None
        # After a settle that may have ended the job: ``on_ended(job_id, payload)``
        # records its completion callback (services/callbacks.py); set by the poller.
        self.on_ended: Callable[[str, Any], Any] | None = None
        # Handlers' latest progress per job, written in one store call per
        # ``progress_interval_s`` (``flush_progress``); filled from handler threads.
        self.progress_interval_s = float(
            getattr(context.settings, "progress_interval_s", 0) or PROGRESS_INTERVAL_S)
        self.pending_progress: dict[str, tuple[str, str | None, int, str, bool]] = {}
        self.progress_lock = threading.Lock()
        self.progress_writes = 0  # progress_many calls made
        context.resources[PROGRESS_SINK] = self.note_progress
        context.resources[PROGRESS_DROP] = self.drop_progress

    @classmethod
    def open(cls, context: PollerContext, settings, **kwargs: Any) -> Ledger | None:
        """The poller's ledger, or None: no queue tracks jobs, or no store is provided."""
        if not any(q.track_jobs for q in settings.queues) or not context.provides(STORE):
            return None
        return cls(context, settings.queues, **kwargs)

    def tracks(self, item: InFlight) -> bool:
        return item.queue.track_jobs and bool(item.envelope and item.envelope.job_id)

    def lease_s(self, queue) -> float:
        return max(float(queue.visibility_timeout_s), LEASE_INTERVALS * self.interval_s)

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``store.<method>(...)`` in the ledger's threads (opening the store there too:
        the first use connects)."""
        return await self.call_in(self.pool, method, *args, **kwargs)

    async def call_in(self, pool: ThreadPoolExecutor, method: str, *args: Any,
                      **kwargs: Any) -> Any:
        def run():
            return getattr(self.context.store, method)(*args, **kwargs)

        return await asyncio.get_running_loop().run_in_executor(pool, run)

    # -- claims and settles ----------------------------------------------------------

    async def claim(self, item: InFlight) -> Any:
        """Claim the item's job for this receive; the store's ``Claim``. On ``claimed``
        the item holds it (``delivery``, ``attempts``) until settled or handed back.

        :raises DependencyUnavailable: the store is down (``StoreUnavailable``).
        """
        env = item.envelope
        delivery = delivery_token(item.receipt)
        earlier = self.unsettled.get(item.message_id)
        extra = {"unsettled": earlier} if earlier else {}
        claim = await self.call(
            "claim", env.job_id, user_id=env.user_id, type=env.type, params=env.payload,
            message_id=item.message_id, lease_s=self.lease_s(item.queue), now=self.wall(),
            delivery=delivery, queue=item.queue.name, max_attempts=item.queue.max_attempts,
            redriven=redriven(item), by=self.by, **extra)
        self.unsettled.pop(item.message_id, None)  # the store has heard of it again
        if outcome(claim) == CLAIMED:
            item.delivery, item.attempts = delivery, int(claim.job.get("attempts") or 1)
            item.checkpoints = claim.job.get("checkpoints") or None  # ctx.checkpoints
            self.claimed[id(item)] = item
        elif outcome(claim) in (EXHAUSTED, COMPLETED, CANCELLED) and self.on_ended is not None:
            # EXHAUSTED: the claim failed the job. COMPLETED: a redelivery of a job whose
            # poller died after the handler saved its result, maybe before its callback
            # was recorded (recording it again is a no-op). CANCELLED: cancelled while
            # queued, its message now received.
            await self.on_ended(env.job_id, env.payload)
        return claim

    @property
    def by(self) -> str:
        """Who claims, for the job's history: ``"hostname pid/poller N"``."""
        return f"{socket.gethostname()} {os.getpid()}/poller {self.context.index}"

    def busy_delay_s(self, claim: Any) -> float:
        """Until the other delivery's lease ends (at least a second)."""
        until = claim.lease_until
        left = (until - self.wall()).total_seconds() if until else self.interval_s
        return max(BUSY_MIN_S, left)

    async def settle(self, item: InFlight, decision: Decision,
                     delay_s: float = 0) -> BaseException | None:
        """Record the message's outcome on the job: completed (when the handler did not),
        queued again (visible again after ``delay_s``, the delay SQS is given), released
        with its attempt refunded (deferred: ``Deferred``'s reason as its message), or
        failed with the reason. Guarded by the item's delivery (the store
        refuses a delivery that lost its claim). The store's outage, or None."""
        self.claimed.pop(id(item), None)
        with self.progress_lock:  # a late progress must not follow the settle
            self.pending_progress.pop(item.envelope.job_id, None)
        if item.lease_lost:
            return None  # another delivery or a rescue holds the job now: not ours to settle
        job_id, now = item.envelope.job_id, self.wall()
        try:
            if decision.action is Action.ACK:
                await self.call("complete", job_id, now, delivery=item.delivery)
            elif decision.action is Action.CANCEL:  # processing -> cancelled
                await self.call("cancel_held", job_id, now, delivery=item.delivery)
            elif decision.action is Action.DEFER:  # processing -> queued, attempt refunded
                reason = getattr(decision.error, "reason", None) or reason_of(decision.error)
                await self.call("release", job_id, item.delivery, now, reason,
                                event="deferred", delay_s=delay_s)
            elif decision.action is Action.RETRY:
                await self.call("requeue", job_id, reason_of(decision.error), now,
                                delivery=item.delivery, delay_s=delay_s)
            else:
                await self.call("fail", job_id, reason_of(decision.error), now,
                                delivery=item.delivery)
        except DependencyUnavailable as exc:
            self.remember_unsettled(item)
            log.error("job.settle_failed", extra={
                **item.log_fields(), "action": decision.action.value, "error": str(exc)[:500]})
            return exc
        if self.on_ended is not None and decision.action not in (Action.RETRY, Action.DEFER):
            await self.on_ended(job_id, item.envelope.payload)  # never raises
        return None

    async def hand_back(self, items: list[InFlight], reason: str) -> None:
        """Messages handed back (shutdown, grace over): a job whose handler never started
        is released (its attempt refunded); one cut off while running is queued again."""
        for item in items:
            if self.claimed.pop(id(item), None) is None or item.lease_lost:
                continue
            job_id, now = item.envelope.job_id, self.wall()
            try:
                if item.started:
                    await self.call("requeue", job_id, f"handed back: {reason}", now,
                                    delivery=item.delivery)
                else:
                    await self.call("release", job_id, item.delivery, now, reason)
            except DependencyUnavailable as exc:
                # Its lease runs out soon; the next delivery takes the job over.
                self.remember_unsettled(item)
                log.error("job.settle_failed", extra={
                    **item.log_fields(), "action": "hand_back", "error": str(exc)[:500]})

    def remember_unsettled(self, item: InFlight) -> None:
        self.unsettled[item.message_id] = item.delivery
        while len(self.unsettled) > UNSETTLED_MAX:
            self.unsettled.pop(next(iter(self.unsettled)))

    # -- leases ----------------------------------------------------------------------

    async def run(self) -> None:
        """Until cancelled: renew the held leases every ``interval_s``, and write the
        handlers' pending progress every ``progress_interval_s`` (one call each), in two
        loops: a slow progress write never delays a renewal."""
        await asyncio.gather(self.renew_loop(), self.progress_loop())

    async def renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.renew()

    async def progress_loop(self) -> None:
        while True:
            await asyncio.sleep(self.progress_interval_s)
            await self.flush_progress()

    # -- progress --------------------------------------------------------------------

    def note_progress(self, job_id: str, delivery: str | None, percent: int, message: str,
                      estimated: bool) -> None:
        """A handler's latest progress of its job (``pipeline/progress.py``), from its
        thread; the next ``flush_progress`` writes it with every other job's."""
        with self.progress_lock:
            self.pending_progress[job_id] = (job_id, delivery, percent, message, estimated)

    def drop_progress(self, job_id: str) -> None:
        """Forget ``job_id``'s pending progress: its handler writes a later step itself
        (``ctx.progress``), which an older streamed value must not follow."""
        with self.progress_lock:
            self.pending_progress.pop(job_id, None)

    async def flush_progress(self) -> None:
        """One ``progress_many`` store call for every job with progress pending."""
        with self.progress_lock:
            updates, self.pending_progress = list(self.pending_progress.values()), {}
        if not updates:
            return
        try:
            await self.call_in(self.progress_pool, "progress_many", updates, self.wall())
        except DependencyUnavailable as exc:  # the next update of each job tries again
            log.warning("job.progress_failed", extra={"count": len(updates),
                                                      "error": str(exc)[:500]})
            return
        except Exception as exc:  # noqa: BLE001 - best effort: never the end of the ledger's loop
            log.error("ledger.progress_failed", extra={
                "count": len(updates), "error": f"{type(exc).__name__}: {str(exc)[:500]}"})
            return
        self.progress_writes += 1

    async def renew(self) -> None:
        """One ``renew_leases`` call for every held claim; a claim the store no longer
        shows under this delivery is lost (``job.lease_lost``), never settled from here."""
        held = [i for i in self.claimed.values() if not i.lease_lost]
        if not held:
            return
        now = self.wall()
        lease_until = now + timedelta(seconds=max(self.lease_s(i.queue) for i in held))
        pairs = [(i.envelope.job_id, i.delivery) for i in held]
        try:
            still = await self.call_in(self.renew_pool, "renew_leases", pairs, lease_until,
                                       now)
        except DependencyUnavailable as exc:
            log.error("job.lease_renew_failed", extra={"count": len(held),
                                                       "error": str(exc)[:500]})
            return
        self.renewals += 1
        cancels = getattr(still, "cancel_requested", ())  # a store without cancellation
        for item in held:
            if item.envelope.job_id in cancels and item.envelope.job_id in still:
                self.on_cancel(item)
            if item.envelope.job_id not in still and id(item) in self.claimed:
                item.lease_lost = True
                self.claimed.pop(id(item), None)
                log.warning("job.lease_lost", extra=item.log_fields())

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.renew_pool.shutdown(wait=False, cancel_futures=True)
        self.progress_pool.shutdown(wait=False, cancel_futures=True)


def redriven(item: InFlight) -> bool:
    """Whether the message came back from a DLQ: only then may a failed job run again."""
    return any(name in item.attributes for name in REDRIVE_MARKS)


def outcome(claim: Any) -> str:
    """A claim's outcome as its value (``ClaimOutcome`` is an enum of strings)."""
    return getattr(claim.outcome, "value", claim.outcome)
