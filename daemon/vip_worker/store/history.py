"""A job's timeline: the ``history`` field, one entry per ledger transition.

Each entry::

    {"at": datetime, "event": <one of EVENTS>, "attempt": int|None,
     "by": "host pid/poller N"|None, "reason": str|None}

plus ``progress`` and ``message`` on ``progress`` entries. An entry is appended IN THE
SAME WRITE as its transition (SQLite: in the rewritten ``doc``; MongoDB: a ``$push`` with
``$slice`` beside the ``$set``), never by a second round trip, and the list keeps the
last ``HISTORY_MAX`` entries.

Which transition writes which entry is decided here (``claim_entry``, ``cancel_entry``)
or named where the backend writes the transition: ``created`` (create_job, or a claim
that creates the job), ``claimed`` (each attempt, with its ``by``; not the idempotent
re-claim of one delivery), ``progress`` (only when the message's step changes:
``step_of``, the text with its numbers masked, so "Writing... 120 of 800 words" and
"Writing... 160 of 800 words" are one step, and a streamed job's timeline keeps its
claims instead of 200 progress lines),
``requeued`` and ``failed`` (with the error as ``reason``), ``released`` (or
``deferred``, ``release``'s ``event``), ``rescued``, ``cancel_requested``,
``cancelled``, ``completed``, ``callback`` (delivered or given up), ``retried``
(``retry_job``). ``attempt`` is the job's attempt number where the writer knows it
(claims, rescues), else None.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from vip_worker.store import ClaimOutcome

HISTORY_MAX = 200
REASON_MAX = 500
EVENTS = ("created", "claimed", "progress", "requeued", "released", "deferred", "rescued",
          "cancel_requested", "cancelled", "completed", "failed", "retried", "callback")


NUMBERS = re.compile(r"\d+")


def step_of(message: str | None) -> str:
    """The step a progress message names: its text with every number masked (the
    job's ``progressStep``; a new step is a ``progress`` history entry)."""
    return NUMBERS.sub("#", message or "")[:REASON_MAX]


def is_new_step(job: Mapping[str, Any], message: str) -> bool:
    """Whether ``message`` begins a new step of ``job``'s progress: neither its current
    message nor its current step (``progressStep``, cleared by each claim)."""
    return message != job.get("message") and step_of(message) != job.get("progressStep")


def entry(event: str, now: datetime, *, attempt: int | None = None, by: str | None = None,
          reason: str | None = None, **extra: Any) -> dict[str, Any]:
    """One history entry (``reason`` cut to ``REASON_MAX`` characters).

    :raises ValueError: ``event`` is not one of ``EVENTS``.
    """
    if event not in EVENTS:
        raise ValueError(f"history event {event!r} is not one of {', '.join(EVENTS)}")
    return {"at": now, "event": event, "attempt": attempt, "by": by,
            "reason": None if reason is None else str(reason)[:REASON_MAX], **extra}


def appended(job: Mapping[str, Any], *entries: dict[str, Any]) -> list[dict[str, Any]]:
    """The job's history with ``entries`` added, capped (SQLite's rewrite of ``doc``)."""
    return [*(job.get("history") or []), *entries][-HISTORY_MAX:]


def push(*entries: dict[str, Any]) -> dict[str, Any]:
    """MongoDB's update clause appending ``entries``, capped, in the transition's write."""
    return {"$push": {"history": {"$each": list(entries), "$slice": -HISTORY_MAX}}}


def claim_entry(job: Mapping[str, Any], outcome: ClaimOutcome, changes: Mapping[str, Any],
                now: datetime, by: str | None) -> dict[str, Any] | None:
    """The entry a claim decision that writes ``changes`` adds to ``job`` (as it was
    read), or None (the same delivery claiming again: only its lease renewed)."""
    if outcome is ClaimOutcome.EXHAUSTED:
        return entry("failed", now, attempt=job.get("attempts"), by=by,
                     reason=changes.get("error"))
    if outcome is ClaimOutcome.CANCELLED:
        return entry("cancelled", now, by=by, reason="cancel requested while held")
    if changes.get("status") != "processing":
        return None
    reason = "redriven" if job.get("status") == "failed" else None
    return entry("claimed", now, attempt=changes.get("attempts"), by=by, reason=reason)


def cancel_entry(changes: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The entry ``request_cancel``'s ``changes`` add: cancelled, or cancel_requested."""
    return entry("cancelled" if changes.get("status") == "cancelled" else "cancel_requested",
                 now)


def progress_entry(percent: int, message: str, now: datetime) -> dict[str, Any]:
    # Capped as a reason is: 200 entries are rewritten with every SQLite write of the job.
    return entry("progress", now, progress=percent, message=message[:500])


def rescue_entry(job: Mapping[str, Any], outcome: Any, changes: Mapping[str, Any],
                 now: datetime) -> dict[str, Any]:
    """The entry a won rescue (``RescueOutcome``) of ``job`` (as read) adds."""
    event = "rescued" if outcome == "resend" else "failed"
    return entry(event, now, attempt=job.get("attempts"), by="lifeline",
                 reason=changes.get("error"))
