"""The cancellation rules both backends apply: what ``request_cancel`` does to a job, and
what a cancelled job's fields become. Pure functions on a job document, as
``store/ledger.py``'s rules are."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from vip_worker.store import CancelOutcome

CANCELLED_MESSAGE = "Cancelled"
FINISHED = ("completed", "failed", "cancelled")
# The fields a request_cancel decision reads (MongoDB's compare-and-set pins them).
CANCEL_PINNED = ("status", "cancelRequestedAt")


def cancelled_changes(job: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """queued | processing -> cancelled: lease cleared, ``cancelledAt`` = now (a request's
    time is kept; a job cancelled at once gets now for both)."""
    return {"status": "cancelled", "message": CANCELLED_MESSAGE, "leaseUntil": None,
            "cancelRequestedAt": job.get("cancelRequestedAt") or now, "cancelledAt": now,
            "updatedAt": now}


def decide_cancel(job: Mapping[str, Any] | None, now: datetime, user_id: str | None
                  ) -> tuple[CancelOutcome, dict[str, Any] | None]:
    """What ``request_cancel`` does to ``job`` (None: missing); the changes to write, or
    None to write nothing."""
    if job is None or (user_id is not None and str(job.get("userId")) != user_id):
        return CancelOutcome.NOT_FOUND, None
    status = job.get("status")
    if status == "processing":
        if job.get("cancelRequestedAt") is not None:
            return CancelOutcome.REQUESTED, None  # asked already: the first time stays
        # processing: marked; its holder ends it (cancel_held) when the renewal tells it
        return CancelOutcome.REQUESTED, {"cancelRequestedAt": now, "updatedAt": now}
    if status in FINISHED:
        return CancelOutcome.REFUSED, None
    # queued (or a status the app invented, never run by us) -> cancelled
    return CancelOutcome.CANCELLED, cancelled_changes(job, now)
