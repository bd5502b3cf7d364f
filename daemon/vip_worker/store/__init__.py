"""The job store: where jobs, their progress and their results live; the daemon's ledger.

One interface (``JobStore``), two backends:

- ``MongoStore`` (``store/mongo.py``, pymongo): chosen when ``mongodb_uri`` (env
  ``MONGODB_URI``) is set; this is what the existing app reads.
- ``SqliteStore`` (``store/sqlite.py``): the embedded default, one file under
  ``state_dir`` in WAL mode, safe with several poller processes.

The rules both apply (what a claim, a settle, a release or a rescue does to a job) are
written once, in ``store/ledger.py``.

Documents look the same in both (the app's fields, camelCase):

jobs (``jobs_collection``), keyed by the message's ``jobId``::

    {"_id": jobId, "userId", "type",
     "status": queued|processing|completed|failed|cancelled,
     "progress": 0..100, "message": "Generating content...", "attempts": int,
     "error": str|None, "createdAt", "updatedAt", "startedAt", "completedAt",
     "params": {...the request payload...}, "messageId": SQS MessageId of the claim,
     "leaseUntil": datetime of the claim's lease,
     "delivery": the claim's delivery token, "queue": the queue it came from,
     "lostClaims": int, "rescues": int, "rescuedAt", "queuedAt",
     "cancelRequestedAt", "cancelledAt",
     "callback": the completion callback's outbox entry (``store/outbox.py``),
     "checkpoints": {name: JSON value} (``store/checkpoints.py``),
     "usage": {"tokensIn", "tokensOut", "images", "model", "cost"} (``store/usage.py``),
     "progressEstimated": bool (progress estimated from durations, not measured),
     "history": [the job's timeline, the last 200 transitions (``store/history.py``)]}

- ``delivery``: an opaque token per receive of a message (the caller's, e.g. a hash of
  the receipt handle), set by each claim; it tells two deliveries of one message apart.
  It stays after the claim settles, like ``messageId``.
- ``queue``: the queue the claiming message came from (kept when a claim names none),
  so a rescue knows where to send the message again.
- ``lostClaims``: claims that never settled: their lease ran out with the job still
  ``processing`` (the poller died or froze), counted by the claim or the rescue that
  finds it so. Reset by a claim from ``failed`` (a redriven dead letter starts afresh).
- ``rescues``, ``rescuedAt``: how many times, and when last, a sweeper re-sent the job.
- ``cancelRequestedAt``, ``cancelledAt``: when a cancellation was asked for
  (``request_cancel``), and when the job became ``cancelled`` (``store/cancel.py``).
- ``history``: one entry per transition ``{"at", "event", "attempt", "by", "reason"}``
  (created, claimed with "host pid/poller N", progress steps, requeued, released,
  deferred, rescued, cancel_requested, cancelled, completed, failed, retried, callback),
  appended in the same write as the transition, capped at 200 (``store/history.py``).
- ``queuedAt``: when the job last became ``queued``: its creation, a ``requeue`` (plus
  its retry delay: when the message is visible again), a ``release`` or a rescue. The
  app's own documents lack it; their ``createdAt`` stands in.

content (``content_collection`` for articles, ``media_collection`` for images),
exactly one document per ``jobId`` (a unique key), with ``jobId``, ``userId``,
``createdAt`` and the generated fields.

Delivery is at least once, so every write is idempotent:

- ``claim`` is a conditional update. It succeeds from ``queued`` or ``failed``
  (a redriven message runs its job again; with ``redriven=False`` a ``failed`` job
  is not claimed but answers ``ClaimOutcome.FAILED``: only a redrive restarts it),
  from ``processing`` whose lease has expired or is absent, or from ``processing``
  claimed by an earlier delivery of the same SQS message. With a ``delivery`` token on
  both the claim and the job, the deliveries are compared instead of the message ids:
  another delivery of the same message under a live lease is ``BUSY``; the same
  delivery claiming again is idempotent (``CLAIMED``, the lease renewed, no attempt
  counted). A missing job is created (another app produced the message). A
  ``completed`` job returns ``ClaimOutcome.COMPLETED``: the redelivered message is a
  no-op.
- ``max_attempts`` on a claim bounds lost claims only: a claim that would take the
  job once ``lostClaims`` (counting the expired lease it finds) reaches it fails the
  job ("its poller died N times while running it") and returns ``EXHAUSTED``, so a
  message that kills its poller every time still ends. Attempts that settled (a
  requeue after a transient error) are the caller's to bound, as before.
- ``requeue``, ``fail`` and ``progress`` guarded by ``message_id`` and/or ``delivery``
  act only for the claim's holder: a delivery whose lease ran out must not settle a
  job another delivery (or a rescue) took since. ``save_result`` is not guarded: a
  result is the job's result whoever computed it.
- ``save_result`` upserts the content keyed by jobId, then marks the job
  completed: a redelivery can never leave two content documents.

Cancellation (``request_cancel``; the rules in ``store/cancel.py``): a ``queued`` job
becomes ``cancelled`` at once; a ``processing`` one gets ``cancelRequestedAt`` and stays
with its holder, which ``renew_leases`` tells (``LeaseRenewal.cancel_requested``) and which
ends it with ``cancel_held``; a claim of a ``cancelled`` job, or of a requested one nobody
holds any more, answers ``ClaimOutcome.CANCELLED`` (the message is deleted unrun).

Leases and orphans (the daemon decides attempts from the store, not from SQS's
receive count):

- ``renew_leases`` extends, in one write per call, the leases a poller still holds
  and tells it which ones it lost.
- ``release`` hands a claim back without spending an attempt.
- ``expired_leases`` and ``stale_queued`` find orphans (each one indexed query);
  ``rescue`` is a compare-and-set on the state the sweeper saw, so of several
  sweepers exactly one acts on an orphan: it re-sends the job's message, or the job
  is failed once its attempts are spent.

Beside the jobs, for the dashboard (each in its own module, mixed into both backends):

- per-minute buckets (``store/buckets.py``): ``bump_minutes`` (one write per call) and
  ``read_minutes``, kept ``metrics_retention_h`` hours;
- the fleet registry (``store/fleet.py``): ``report_daemon`` (one upsert) and
  ``daemons``; ``fleet.is_lost`` decides who stopped reporting;
- job search and retry (``store/search.py``): ``search_jobs``, ``retry_job``.

Times are timezone-aware UTC datetimes in and out.

Over 400 lines because the whole contract (every method both backends implement, with its
rules) is written in this one place.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Protocol

from vip_worker.errors import DependencyUnavailable

STATUSES = ("queued", "processing", "completed", "failed", "cancelled")


class ClaimOutcome(enum.Enum):
    CLAIMED = "claimed"  # this delivery now owns the job: run it
    COMPLETED = "completed"  # already done: delete the message, do nothing
    BUSY = "busy"  # another delivery holds a live lease: retry later
    # Only with max_attempts: lost claims reached it, the job is now failed. Do not run
    # it; the message is done with (delete it).
    EXHAUSTED = "exhausted"
    # Only with redriven=False: the job is failed and this message is not a redrive of
    # its dead letter (a duplicate, or the failed message itself back after its DLQ send
    # or delete failed). Do not run it; dead-letter it again (or delete it).
    FAILED = "failed"
    # The job is cancelled (now, if it had a cancel request nobody held): do not run it,
    # delete the message.
    CANCELLED = "cancelled"


class CancelOutcome(enum.StrEnum):
    """What ``request_cancel`` did."""

    CANCELLED = "cancelled"  # queued -> cancelled, at once
    REQUESTED = "requested"  # processing: marked; it ends cancelled when its holder stops
    REFUSED = "refused"  # completed, failed or cancelled already: nothing changed
    NOT_FOUND = "not_found"  # no such job (or, with user_id, not that user's)


@dataclass(frozen=True)
class Cancel:
    outcome: CancelOutcome
    job: dict[str, Any] | None  # the job document after the request


class LeaseRenewal(set):
    """``renew_leases``' answer: the job ids still held (a ``set``), and in
    ``cancel_requested`` those of them with a cancel request (the same round trip)."""

    def __init__(self, held=(), cancel_requested=()) -> None:
        super().__init__(held)
        self.cancel_requested = frozenset(cancel_requested)


class RescueOutcome(enum.StrEnum):
    """What the sweeper that won a ``rescue`` must do (a ``StrEnum``: ``== "resend"`` holds)."""

    RESEND = "resend"  # the job is queued again: send its message again
    FAILED = "failed"  # the job is failed for good: nothing to send


@dataclass(frozen=True)
class Claim:
    outcome: ClaimOutcome
    job: dict[str, Any] | None  # the job document after the claim attempt
    lease_until: datetime | None = None  # when outcome is BUSY: when the other lease ends


class StoreUnavailable(DependencyUnavailable):
    """The store could not be reached or written: a transient failure of ours.

    The handler retries the message; a job is never marked failed for an outage
    of its own store.
    """


class JobStore(Protocol):
    def create_job(self, job_id: str, user_id: str, type: str, params: dict[str, Any],
                   now: datetime, *, queue: str | None = None) -> bool:
        """Insert a ``queued`` job (``queuedAt`` = ``now``); False (and no change) if it
        exists already. ``queue``: where its message is sent, for a later rescue."""

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        """The job document, or None."""

    def list_jobs(self, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Jobs newest first (by ``createdAt``), optionally only those in ``status``."""

    def user_jobs(self, user_id: str, status: str | None = None, limit: int = 50,
                  after: tuple[datetime, str] | None = None) -> list[dict[str, Any]]:
        """The jobs of ``user_id``, newest first by (``createdAt``, ``_id``), optionally
        only those in ``status``; with ``after`` (the ``createdAt`` and ``_id`` of the
        last job of the previous page), only the jobs that come after it in that order
        (the job API's cursor)."""

    def claim(self, job_id: str, *, user_id: str, type: str, params: dict[str, Any],
              message_id: str, lease_s: float, now: datetime, delivery: str | None = None,
              queue: str | None = None, max_attempts: int | None = None,
              redriven: bool | None = None, unsettled: str | None = None,
              by: str | None = None) -> Claim:
        """Take the job for this delivery (see the module docstring); sets ``processing``,
        ``startedAt`` (first claim only), ``attempts`` += 1 (from ``failed``: 1, a redriven
        job starts afresh), ``error`` = None, ``progress``
        0, ``messageId``, ``delivery``, ``queue`` (when given), ``leaseUntil`` = now +
        ``lease_s``; ``lostClaims`` += 1 when it takes over an expired lease.

        :param delivery: this receive's token; the same token again is idempotent.
        :param max_attempts: lost claims allowed; reached: ``EXHAUSTED``, job failed.
        :param redriven: whether the message came back from a dead-letter queue. False:
            a ``failed`` job is not claimed (``FAILED``, no change). True or None (a
            caller that cannot tell): a ``failed`` job starts afresh.
        :param unsettled: the delivery token of an earlier delivery of this same message
            whose handler ended but whose settle a store outage lost: a job still
            ``processing`` under it is taken over at once, its lease live or not, with
            no lost claim counted (no poller died).
        :param by: who claims, ``"hostname pid/poller N"``: the ``claimed`` history entry's.
        """

    def progress(self, job_id: str, percent: int, message: str, now: datetime, *,
                 delivery: str | None = None) -> None:
        """Record progress of a ``processing`` job (no-op for any other status, and with
        ``delivery``, while another delivery holds the claim)."""

    def save_result(self, job_id: str, collection: str, content: dict[str, Any],
                    now: datetime, *, delivery: str | None = None) -> None:
        """Upsert ``content`` (plus jobId, userId, createdAt) keyed by jobId into
        ``collection``, then mark the job ``completed``, progress 100, lease cleared
        (and its ``usage`` = the content's ``usage``, when that is a dict).
        ``delivery`` does not guard it: a stale delivery's result is saved (into the one
        content document) and completes the job, idempotently. A ``cancelled`` job is left
        alone, nothing saved (an abandoned handler's late result)."""

    def complete(self, job_id: str, now: datetime, *, delivery: str) -> bool:
        """The daemon's completion of a job whose handler returned without saving a
        result: ``processing`` -> ``completed``, progress 100, lease cleared, no content.
        Only while ``delivery`` holds the claim (a job the handler completed already, or
        another delivery took, is left alone); True when it did."""

    def requeue(self, job_id: str, error: str, now: datetime, *,
                message_id: str | None = None, delivery: str | None = None,
                delay_s: float = 0) -> None:
        """A transient failure: ``processing`` back to ``queued`` with the error as its
        message, ``queuedAt`` = now + ``delay_s`` (when its message is visible again: a
        job waiting out a retry delay is not stale before it ends). With ``message_id``,
        only while that message holds the claim: a delivery whose lease ran out must not
        settle a job another message claimed since. With ``delivery``, only while that
        delivery holds it (a job never claimed under a delivery: the ``message_id`` guard
        alone)."""

    def fail(self, job_id: str, error: str, now: datetime, *,
             message_id: str | None = None, delivery: str | None = None) -> None:
        """A permanent failure or the last attempt: ``failed`` with ``error`` (never
        from ``completed``). ``message_id``, ``delivery``: as for ``requeue``; a job no
        message ever claimed (a payload refused before the claim) is failed by any
        message."""

    def release(self, job_id: str, delivery: str, now: datetime, reason: str, *,
                event: str = "released", delay_s: float = 0) -> bool:
        """The holder hands the job back unrun (a quota deferral, shutdown before any
        work): ``processing`` -> ``queued``, ``attempts`` -= 1 (never below 0), lease
        cleared, progress 0, ``message`` = ``reason``, ``queuedAt`` = now + ``delay_s``
        (when its message is due again: a deferral's wait is not staleness). Only while
        ``delivery`` holds the claim; True when it did. ``event``: the history entry's
        (``"deferred"`` for a deferral)."""

    def renew_leases(self, held: Sequence[tuple[str, str]], lease_until: datetime,
                     now: datetime) -> set[str]:
        """Extend to ``lease_until`` (``updatedAt`` = now) the lease of every job of the
        (job_id, delivery) pairs that is still ``processing`` under that delivery, an
        expired lease included (nobody took it), in one write per call (SQLite: per
        300 pairs, in one transaction). Returns the job ids still held: a missing one
        was lost (settled, taken over by another delivery, or rescued). A
        ``LeaseRenewal``: its ``cancel_requested`` names the held jobs with a cancel
        request."""

    def request_cancel(self, job_id: str, now: datetime, *,
                       user_id: str | None = None) -> Cancel:
        """Ask for the job's cancellation: ``queued`` -> ``cancelled`` (``cancelledAt``),
        ``processing``: ``cancelRequestedAt`` = now (kept by a repeated request), the job
        left to its holder; ``completed``, ``failed``, ``cancelled``: ``REFUSED``. With
        ``user_id``, another user's job is ``NOT_FOUND``."""

    def cancel_held(self, job_id: str, now: datetime, *, delivery: str) -> bool:
        """The holder stopped for a cancellation: ``processing`` -> ``cancelled``, lease
        cleared. Only while ``delivery`` holds the claim; True when it did."""

    def expired_leases(self, now: datetime, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` ``processing`` jobs whose ``leaseUntil`` < ``now``, the oldest
        lease first (a processing job without a lease is not ours and never listed)."""

    def stale_queued(self, created_before: datetime, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` ``queued`` jobs queued (``queuedAt``, else ``createdAt``)
        before ``created_before``, oldest first: created, requeued, released or rescued
        that long ago and not claimed since (their message may be lost)."""

    def rescue(self, job: Mapping[str, Any], now: datetime, *, resend: bool, reason: str,
               max_attempts: int, hold_s: float = 0) -> RescueOutcome | None:
        """Act on an orphan as a sweeper saw it (``job``, from ``expired_leases`` or
        ``stale_queued``): a compare-and-set on its ``status``, ``leaseUntil``,
        ``queuedAt``, ``delivery`` and ``attempts``, so of sweepers racing on the same
        state exactly one wins; the losers (and a state no longer an orphan) get None.

        The winner's job: lease cleared, ``lostClaims`` += 1 if it was ``processing``;
        then ``attempts >= max_attempts`` or not ``resend`` (nowhere to send it):
        ``failed`` with ``"<reason>; gave up after N attempts"`` -> ``FAILED``; else
        ``queued``, ``rescues`` += 1, ``rescuedAt`` = ``queuedAt`` = now, ``message`` =
        ``error`` = ``reason``, progress 0 -> ``RESEND``: the caller sends the message
        again from the job's ``type``, ``userId``, ``params`` and ``queue``. With
        ``hold_s`` > 0 the re-sent job keeps a hold: ``leaseUntil`` = now + ``hold_s``
        under the delivery ``"lifeline"``, and a claim by any other delivery is ``BUSY``
        until it ends (the holder it was rescued from may still be running).

        :raises ValueError: ``job`` is neither ``processing`` nor ``queued``.
        """

    # -- the callback outbox (store/outbox.py: the rules, the entry's fields) ------

    def add_callback(self, job_id: str, url: str, now: datetime, *,
                     first_at: datetime | None = None) -> dict[str, Any] | None:
        """Record a terminal job's callback to ``url`` as its ``callback`` entry, due at
        ``first_at`` (default ``now``); None when the job has not ended or already has an
        entry for its status."""

    def due_callbacks(self, now: datetime, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` jobs whose pending callback is due, the earliest first."""

    def hold_callback(self, job_id: str, seen_next_at: datetime, until: datetime) -> bool:
        """Take a due entry for one attempt: a compare-and-set of ``nextAt``."""

    def callback_attempted(self, job_id: str, callback_id: str, ok: bool,
                           next_at: datetime | None, error: str | None,
                           now: datetime) -> bool:
        """Record one attempt: delivered (``ok``), due again at ``next_at``, or given up."""

    # -- the dashboard (store/buckets.py, store/fleet.py, store/search.py) ---------

    def bump_minutes(self, rows: Sequence[Any]) -> None:
        """Add ``MinuteRow`` s to their per-minute buckets: ONE store write per call."""

    def read_minutes(self, series: str, since: datetime, until: datetime | None = None,
                     labels: dict | None = None) -> list[dict[str, Any]]:
        """Buckets of ``series`` in [``since``, ``until``), oldest first, each
        ``{"series", "labels", "minute", **values}``; ``labels``: a subset to match."""

    def report_daemon(self, daemon_id: str, record: dict[str, Any], now: datetime) -> None:
        """Upsert the daemon's fleet record (``lastSeen`` = now): one write."""

    def daemons(self) -> list[dict[str, Any]]:
        """Every daemon's fleet record (``fleet.is_lost`` tells the lost ones)."""

    def search_jobs(self, *, job_id: str | None = None, user_id: str | None = None,
                    status: str | None = None, type: str | None = None,
                    since: datetime | None = None, until: datetime | None = None,
                    after: tuple[datetime, str] | None = None,
                    limit: int = 50) -> list[dict[str, Any]]:
        """Jobs matching every filter given, newest first by (``createdAt``, ``_id``),
        ``after`` as ``user_jobs``' cursor; without their ``history``."""

    def retry_job(self, job_id: str, now: datetime) -> dict[str, Any] | None:
        """A ``failed`` job -> ``queued`` afresh (compare-and-set), the job after; the
        caller re-sends its message. None (nothing changed) for any other status."""

    # -- the quota governor (store/quota.py: the rules, the record's fields) ----------

    def acquire_permit(self, provider: str, permit: str, now: datetime, *, user: str = "",
                       tokens: int = 0, limits: Any) -> Any:
        """One call to ``provider`` under ``limits`` (``QuotaLimits``), in one round trip:
        a ``Grant`` (granted, or refused with the reason and when to ask again)."""

    def report_call(self, provider: str, permit: str, now: datetime, *, outcome: str,
                    tokens: int | None = None, retry_after_s: float | None = None,
                    limits: Any) -> None:
        """The call under ``permit`` ended: release it, correct its tokens, update the
        breaker, pause the provider (``outcome`` "throttled") for ``retry_after_s``."""

    def quota_record(self, provider: str) -> dict[str, Any] | None:
        """The provider's governor record, or None."""

    # -- checkpoints (store/checkpoints.py) and spending (store/usage.py) -------------

    def checkpoint(self, job_id: str, name: str, value: Any, now: datetime, *,
                   delivery: str | None = None) -> bool:
        """Set the job's ``checkpoints.<name>`` to ``value`` (JSON, at most
        ``MAX_CHECKPOINT_BYTES``) while it is ``processing`` (and, with ``delivery``, held
        by it); True when written. :raises CheckpointError: a bad name or value."""

    def progress_many(self, updates: Sequence[tuple[str, str | None, int, str, bool]],
                      now: datetime) -> int:
        """Write many jobs' latest progress in one write (``store/progress.py``): each
        (job_id, delivery, percent, message, estimated) sets ``progress``, ``message``,
        ``progressEstimated`` of a ``processing`` job its delivery holds; how many."""

    def add_spend(self, user_id: str, day: date, amount: float, now: datetime) -> float:
        """Add ``amount`` to what ``user_id`` spent on the UTC ``day`` (one atomic
        increment); the new total."""

    def spent(self, user_id: str, day: date) -> float:
        """What ``user_id`` spent on ``day``; 0.0 when nothing was recorded."""

    def get_content(self, collection: str, job_id: str) -> list[dict[str, Any]]:
        """Every content document of the job in ``collection`` (tests check it is one)."""

    def close(self) -> None:
        """Release connections."""
