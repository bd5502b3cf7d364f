"""The job store: where jobs, their progress and their results live.

One interface (``JobStore``), two backends:

- ``MongoStore`` (``store/mongo.py``, pymongo): chosen when ``mongodb_uri`` (env
  ``MONGODB_URI``) is set; this is what the existing app reads.
- ``SqliteStore`` (``store/sqlite.py``): the embedded default, one file under
  ``state_dir`` in WAL mode, safe with several poller processes.

Documents look the same in both (the app's fields, camelCase):

jobs (``jobs_collection``), keyed by the message's ``jobId``::

    {"_id": jobId, "userId", "type", "status": queued|processing|completed|failed,
     "progress": 0..100, "message": "Generating content...", "attempts": int,
     "error": str|None, "createdAt", "updatedAt", "startedAt", "completedAt",
     "params": {...the request payload...}, "messageId": SQS MessageId of the claim,
     "leaseUntil": datetime of the claim's lease}

content (``content_collection`` for articles, ``media_collection`` for images),
exactly one document per ``jobId`` (a unique key), with ``jobId``, ``userId``,
``createdAt`` and the generated fields.

Delivery is at least once, so every write is idempotent:

- ``claim`` is a conditional update. It succeeds from ``queued`` or ``failed``
  (a redriven message runs its job again), from ``processing`` whose lease has
  expired, or from ``processing`` claimed by an earlier delivery of the same SQS
  message (SQS redelivers only after the earlier holder stopped heartbeating).
  A missing job is created (another app produced the message). A ``completed``
  job returns ``ClaimOutcome.COMPLETED``: the redelivered message is a no-op.
- ``save_result`` upserts the content keyed by jobId, then marks the job
  completed: a redelivery can never leave two content documents.

Times are timezone-aware UTC datetimes in and out.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from vip_worker.errors import DependencyUnavailable

STATUSES = ("queued", "processing", "completed", "failed")


class ClaimOutcome(enum.Enum):
    CLAIMED = "claimed"  # this delivery now owns the job: run it
    COMPLETED = "completed"  # already done: delete the message, do nothing
    BUSY = "busy"  # another delivery holds a live lease: retry later


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
                   now: datetime) -> bool:
        """Insert a ``queued`` job; False (and no change) if it exists already."""

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        """The job document, or None."""

    def list_jobs(self, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Jobs newest first (by ``createdAt``), optionally only those in ``status``."""

    def claim(self, job_id: str, *, user_id: str, type: str, params: dict[str, Any],
              message_id: str, lease_s: float, now: datetime) -> Claim:
        """Take the job for this delivery (see the module docstring); sets ``processing``,
        ``startedAt`` (first claim only), ``attempts`` += 1, ``error`` = None, ``progress`` 0."""

    def progress(self, job_id: str, percent: int, message: str, now: datetime) -> None:
        """Record progress of a ``processing`` job (no-op for any other status)."""

    def save_result(self, job_id: str, collection: str, content: dict[str, Any],
                    now: datetime) -> None:
        """Upsert ``content`` (plus jobId, userId, createdAt) keyed by jobId into
        ``collection``, then mark the job ``completed``, progress 100."""

    def requeue(self, job_id: str, error: str, now: datetime, *,
                message_id: str | None = None) -> None:
        """A transient failure: ``processing`` back to ``queued`` with the error as its
        message. With ``message_id``, only while that message holds the claim: a
        delivery whose lease ran out must not settle a job another message claimed since."""

    def fail(self, job_id: str, error: str, now: datetime, *,
             message_id: str | None = None) -> None:
        """A permanent failure or the last attempt: ``failed`` with ``error`` (never
        from ``completed``). ``message_id``: as for ``requeue``; a job no message ever
        claimed (a payload refused before the claim) is failed by any message."""

    def get_content(self, collection: str, job_id: str) -> list[dict[str, Any]]:
        """Every content document of the job in ``collection`` (tests check it is one)."""

    def close(self) -> None:
        """Release connections."""
