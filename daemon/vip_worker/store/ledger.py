"""The ledger's rules: what a claim, a settle, a release or a rescue does to a job.

Pure functions on a job document as both backends hand it back (camelCase fields,
timezone-aware UTC datetimes; a field the app's own documents lack reads as None).
Each backend applies the same rule: the SQLite store inside one ``BEGIN IMMEDIATE``
transaction, the MongoDB store as a compare-and-set whose filter pins the fields the
decision read (``CLAIM_PINNED``, ``RESCUE_PINNED``), so the rule is written once here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from vip_worker.store import ClaimOutcome, RescueOutcome, history
from vip_worker.store.cancel import cancelled_changes

QUEUED_MESSAGE = "Queued"
PROCESSING_MESSAGE = "Processing"
COMPLETED_MESSAGE = "Completed"
# The delivery of a rescued job's hold: no claim's token (those are receipt hashes).
RESCUE_DELIVERY = "lifeline"
# The fields a claim decision reads: a concurrent change to any of them voids it.
CLAIM_PINNED = ("status", "leaseUntil", "delivery", "messageId", "attempts", "lostClaims",
                "startedAt", "cancelRequestedAt")
# The state a sweeper saw: a rescue wins only while all of it is unchanged.
RESCUE_PINNED = ("status", "leaseUntil", "queuedAt", "delivery", "attempts")


def utc(value: datetime) -> datetime:
    """Aware UTC, truncated to milliseconds (MongoDB's precision); naive means UTC."""
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def new_job(job_id: str, user_id: str, type: str, params: dict[str, Any], now: datetime,
            queue: str | None = None) -> dict[str, Any]:
    """A ``queued`` job document (the module docstring of ``vip_worker.store``)."""
    return {
        "_id": job_id, "userId": user_id, "type": type, "status": "queued", "progress": 0,
        "message": QUEUED_MESSAGE, "attempts": 0, "error": None, "createdAt": now,
        "updatedAt": now, "startedAt": None, "completedAt": None, "params": params,
        "messageId": None, "leaseUntil": None, "delivery": None, "queue": queue,
        "lostClaims": 0, "rescues": 0, "rescuedAt": None, "queuedAt": now,
        "history": [history.entry("created", now)],
    }


def exhausted_error(lost_claims: int) -> str:
    return f"its poller died {lost_claims} times while running it"


def rescue_error(reason: str, attempts: int) -> str:
    return f"{reason}; gave up after {attempts} attempts"


@dataclass(frozen=True)
class Decision:
    outcome: ClaimOutcome
    changes: dict[str, Any] | None  # the fields to set; None: write nothing


def decide_claim(job: Mapping[str, Any], *, message_id: str, delivery: str | None,
                 queue: str | None, lease_until: datetime, max_attempts: int | None,
                 now: datetime, redriven: bool | None = None,
                 unsettled: str | None = None) -> Decision:
    """What a claim of ``job`` by this delivery does (the contract's ``claim``)."""
    status = job.get("status")
    if status == "completed":
        return Decision(ClaimOutcome.COMPLETED, None)
    if status == "cancelled":
        return Decision(ClaimOutcome.CANCELLED, None)
    if status == "processing" and delivery is not None and job.get("delivery") == delivery:
        # The same delivery again (a claim call retried after an outage): idempotent.
        return Decision(ClaimOutcome.CLAIMED, {"leaseUntil": lease_until, "updatedAt": now})
    lost = job.get("lostClaims") or 0
    attempts = job.get("attempts") or 0
    lease = job.get("leaseUntil")
    if status == "failed" and redriven is False:
        # Not a redrive: a duplicate, or the failed message back after its dead-letter
        # send or delete failed. Never run again (else: fresh attempts, forever).
        return Decision(ClaimOutcome.FAILED, None)
    if status == "failed":
        # A redriven dead letter starts afresh: its earlier deaths and attempts are settled
        # (the daemon decides retries from ``attempts``: it gets max_attempts again).
        lost = attempts = 0
    elif status == "processing" and unsettled is not None \
            and job.get("delivery") == unsettled and job.get("messageId") == message_id:
        pass  # an earlier delivery of this message whose handler ended, its settle lost
        # to a store outage: no poller died, so no lost claim, and no lease to wait out
    elif status == "processing" and lease is not None and lease < now:
        lost += 1  # the holder's poller died or froze: its claim never settled
    elif status == "processing" and lease is not None:
        if not same_message(job, message_id, delivery):
            return Decision(ClaimOutcome.BUSY, None)
    elif status == "queued" and lease is not None and lease >= now \
            and job.get("delivery") != delivery:
        # A rescue's hold (``rescue_changes``): the holder it took the job from may still
        # be running (stalled renewals, clock skew); the re-sent copy waits it out.
        return Decision(ClaimOutcome.BUSY, None)
    elif status not in ("queued", "processing"):  # a status the app invented: not ours
        return Decision(ClaimOutcome.BUSY, None)
    if job.get("cancelRequestedAt") is not None:
        # queued | failed | processing (nobody holds it) -> cancelled: asked while held
        return Decision(ClaimOutcome.CANCELLED, cancelled_changes(job, now))
    if max_attempts is not None and lost >= max_attempts:
        # queued | processing -> failed: a message that kills its poller every time ends
        error = exhausted_error(lost)
        return Decision(ClaimOutcome.EXHAUSTED, {
            "status": "failed", "error": error, "message": error, "lostClaims": lost,
            "leaseUntil": None, "updatedAt": now})
    # queued | failed | processing (lease expired, absent, or this message's) -> processing
    changes = {
        "status": "processing", "progress": 0, "message": PROCESSING_MESSAGE, "error": None,
        "progressStep": None,  # each attempt's steps are on its timeline (history.step_of)
        "progressEstimated": False,  # the last attempt's estimate is not this one's
        "attempts": attempts + 1, "lostClaims": lost,
        "messageId": message_id, "delivery": delivery, "leaseUntil": lease_until,
        "updatedAt": now,
    }
    if queue is not None:
        changes["queue"] = queue
    if job.get("startedAt") is None:
        changes["startedAt"] = now  # the first claim only
    return Decision(ClaimOutcome.CLAIMED, changes)


def same_message(job: Mapping[str, Any], message_id: str, delivery: str | None) -> bool:
    """A live claim this one may take over: an earlier delivery of the same message, told
    by ``messageId`` only when a delivery token is missing on either side (SQS redelivers
    only after the earlier holder stopped heartbeating)."""
    if delivery is not None and job.get("delivery") is not None:
        return False  # two known deliveries: the same one was handled by the caller
    return job.get("messageId") == message_id


def may_settle(job: Mapping[str, Any], message_id: str | None, delivery: str | None) -> bool:
    """Whether a settle (requeue, fail, progress) guarded by ``message_id`` and ``delivery``
    may act on ``job``. ``MongoStore.guard`` writes this same rule as a filter."""
    if message_id is not None and job.get("messageId") not in (None, message_id):
        return False  # another message claimed the job since
    if delivery is not None and job.get("delivery") is not None:
        # Only while this delivery holds the claim: a stale one (its lease ran out and
        # another delivery, or a rescue, took the job) leaves it alone.
        return job.get("status") == "processing" and job.get("delivery") == delivery
    return True  # never claimed under a delivery: the message_id guard alone decides


def holds(job: Mapping[str, Any], delivery: str) -> bool:
    """Whether ``delivery`` holds ``job``'s claim now (``release``, ``renew_leases``)."""
    return job.get("status") == "processing" and job.get("delivery") == delivery


def completed_changes(now: datetime) -> dict[str, Any]:
    """processing -> completed (``save_result``, ``complete``)."""
    return {"status": "completed", "progress": 100, "message": COMPLETED_MESSAGE,
            "error": None, "completedAt": now, "updatedAt": now, "leaseUntil": None}


def release_changes(job: Mapping[str, Any], reason: str, now: datetime,
                    delay_s: float = 0) -> dict[str, Any]:
    """processing -> queued, the claim's attempt refunded (never below 0). ``queuedAt``
    is when its message is visible again (``delay_s`` on: a deferral's wait), so the
    lifeline does not take a job waiting out its deferral for a lost one."""
    return {"status": "queued", "attempts": max(0, (job.get("attempts") or 0) - 1),
            "leaseUntil": None, "progress": 0, "message": reason,
            "queuedAt": now + timedelta(seconds=max(0.0, delay_s)), "updatedAt": now}


def rescue_changes(job: Mapping[str, Any], now: datetime, *, resend: bool, reason: str,
                   max_attempts: int, hold_s: float = 0
                   ) -> tuple[RescueOutcome, dict[str, Any]]:
    """What the sweeper that won the rescue of ``job`` (as it saw it) writes. A re-sent
    job with ``hold_s`` > 0 keeps a lease of that long under ``RESCUE_DELIVERY``: no
    claim takes it (``BUSY``) until the hold ends."""
    changes: dict[str, Any] = {"leaseUntil": None, "updatedAt": now}
    if job.get("status") == "processing":
        # Its lease ran out and nobody settled it: a lost claim, as a claim counts it.
        changes["lostClaims"] = (job.get("lostClaims") or 0) + 1
    attempts = job.get("attempts") or 0
    if not resend or attempts >= max_attempts:
        # queued | processing -> failed
        error = rescue_error(reason, attempts)
        changes.update(status="failed", error=error, message=error)
        return RescueOutcome.FAILED, changes
    # queued | processing -> queued, and the caller sends the message again
    changes.update(status="queued", progress=0, message=reason, error=reason,
                   rescues=(job.get("rescues") or 0) + 1, rescuedAt=now, queuedAt=now)
    if hold_s > 0:
        changes.update(leaseUntil=utc(now + timedelta(seconds=hold_s)),
                       delivery=RESCUE_DELIVERY)
    return RescueOutcome.RESEND, changes


def rescuable(job: Mapping[str, Any], now: datetime) -> bool:
    """A state a sweeper may rescue: ``processing`` under an expired lease, or ``queued``.

    :raises ValueError: the job is in neither status (a sweeper never asks for that).
    """
    status = job.get("status")
    if status not in ("processing", "queued"):
        raise ValueError(f"cannot rescue a {status} job")
    if status == "queued":
        return True
    lease = job.get("leaseUntil")
    return status == "processing" and lease is not None and lease < now
