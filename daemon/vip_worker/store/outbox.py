"""The callback outbox: a job's completion callback, recorded on the job until delivered.

When a job ends (a status in ``TERMINAL``), the daemon records an outbox entry on it
(``add_callback``) before any attempt to POST it to the job's callback URL, so neither a
failed delivery nor a poller that dies mid-POST loses it: a sweep (``due_callbacks``)
finds every entry whose next attempt is due. The entry is the job's ``callback`` field::

    {"id": "<jobId>:<status>", "url", "status", "state": pending|delivered|gave_up,
     "attempts": int, "nextAt": datetime|None (None unless pending), "createdAt",
     "lastError": str|None, "deliveredAt": datetime|None}

``id`` is the idempotency id sent with every attempt (``X-VIP-Delivery``): one per job
and terminal status (and run, for a job retried from the dashboard:
``<jobId>:<status>:<n>``), so a receiver that sees it twice knows it is the same event.

A sender takes an entry for one attempt with ``hold_callback``, a compare-and-set on the
``nextAt`` it saw that pushes ``nextAt`` past the attempt, so of several sweepers exactly
one sends; if it dies mid-POST the entry comes due again when the hold runs out.

The rules are written once here; ``SqliteOutbox`` and ``MongoOutbox`` are the two
backends' methods (mixed into ``SqliteStore`` and ``MongoStore``), each query indexed:
SQLite's generated column ``callback_at`` (``sqlite_schema``), MongoDB's ``callback.nextAt``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from vip_worker.store import history
from vip_worker.store.ledger import utc

# Statuses a job ends in; "cancelled" is among them for the cancellation work.
TERMINAL = ("completed", "failed", "cancelled")
PENDING, DELIVERED, GAVE_UP = "pending", "delivered", "gave_up"
ERROR_MAX = 500


def delivery_id(job_id: str, status: str, retries: int = 0) -> str:
    """One per job, terminal status and run: a job retried from the dashboard
    (``retries`` > 0, ``store/search.retry_job``) ends anew, a new event."""
    return f"{job_id}:{status}" if not retries else f"{job_id}:{status}:{retries}"


def new_entry(job: Mapping[str, Any], url: str, now: datetime,
              first_at: datetime) -> dict[str, Any] | None:
    """The outbox entry a terminal ``job`` gets, or None: not terminal, or it has one for
    its status already (the same end recorded twice is one callback)."""
    status = job.get("status")
    if status not in TERMINAL:
        return None
    current = job.get("callback") or {}
    if current.get("status") == status:
        return None
    run = job.get("retries") or 0
    return {"id": delivery_id(str(job["_id"]), status, run), "url": url, "status": status,
            "state": PENDING, "attempts": 0, "nextAt": first_at, "createdAt": now,
            "lastError": None, "deliveredAt": None}


def attempted(entry: Mapping[str, Any], ok: bool, next_at: datetime | None,
              error: str | None, now: datetime) -> dict[str, Any]:
    """The entry after one attempt: delivered, due again at ``next_at``, or given up
    (not ``ok`` and no ``next_at``)."""
    entry = dict(entry)
    entry.update(attempts=(entry.get("attempts") or 0) + 1,
                 lastError=(error or "")[:ERROR_MAX] or None)
    if ok:  # pending -> delivered
        entry.update(state=DELIVERED, nextAt=None, deliveredAt=now, lastError=None)
    elif next_at is None:  # pending -> gave_up
        entry.update(state=GAVE_UP, nextAt=None)
    else:  # pending -> pending, due again
        entry["nextAt"] = utc(next_at)
    return entry


def callback_entry(entry: Mapping[str, Any], now: datetime) -> dict[str, Any] | None:
    """The history entry of an attempt that ended the entry (delivered or given up), or
    None (due again: no step on the timeline)."""
    if entry.get("state") == DELIVERED:
        return history.entry("callback", now, reason="delivered")
    if entry.get("state") == GAVE_UP:
        return history.entry("callback", now, reason=f"gave up: {entry.get('lastError')}")
    return None


class SqliteOutbox:
    """The outbox on ``SqliteStore`` (its ``_write``, ``_load_job``, ``_save_job``)."""

    def add_callback(self, job_id: str, url: str, now: datetime, *,
                     first_at: datetime | None = None) -> dict[str, Any] | None:
        """Record the terminal job's callback to ``url``, due at ``first_at`` (default
        ``now``); the entry written, or None (not terminal, or recorded already)."""
        now = utc(now)
        with self._write() as conn:
            job = self._load_job(conn, job_id)
            entry = job and new_entry(job, url, now, utc(first_at or now))
            if entry:
                job["callback"] = entry
                self._save_job(conn, job)
            return entry

    def due_callbacks(self, now: datetime, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` jobs whose pending callback is due (``nextAt`` <= ``now``),
        the earliest first."""
        from vip_worker.store.sqlite_schema import iso

        return self._select("WHERE callback_at IS NOT NULL AND callback_at <= ? "
                            "ORDER BY callback_at, rowid LIMIT ?", (iso(now), max(0, limit)))

    def hold_callback(self, job_id: str, seen_next_at: datetime, until: datetime) -> bool:
        """Take the pending entry for one attempt: ``nextAt`` = ``until``, only while it
        is still ``seen_next_at`` (of racing senders, one gets True)."""
        with self._write() as conn:
            job = self._load_job(conn, job_id)
            entry = (job or {}).get("callback") or {}
            if entry.get("state") != PENDING or entry.get("nextAt") != utc(seen_next_at):
                return False
            job["callback"] = {**entry, "nextAt": utc(until)}
            self._save_job(conn, job)
            return True

    def callback_attempted(self, job_id: str, callback_id: str, ok: bool,
                           next_at: datetime | None, error: str | None,
                           now: datetime) -> bool:
        """Record one attempt of the pending entry ``callback_id`` (see ``attempted``);
        False when the job holds no such pending entry."""
        with self._write() as conn:
            job = self._load_job(conn, job_id)
            entry = (job or {}).get("callback") or {}
            if entry.get("id") != callback_id or entry.get("state") != PENDING:
                return False
            job["callback"] = attempted(entry, ok, next_at, error, utc(now))
            step = callback_entry(job["callback"], utc(now))
            if step is not None:
                job["history"] = history.appended(job, step)
            self._save_job(conn, job)
            return True


class MongoOutbox:
    """The outbox on ``MongoStore`` (its ``_jobs``, ``_errors``, ``_find``): each write a
    compare-and-set on the entry's ``id``, ``state`` and ``nextAt``."""

    def _index_callbacks(self) -> None:
        self._jobs.create_index([("callback.nextAt", 1)])  # due_callbacks

    def add_callback(self, job_id: str, url: str, now: datetime, *,
                     first_at: datetime | None = None) -> dict[str, Any] | None:
        from vip_worker.store.mongo_codec import to_key

        now = utc(now)
        with self._errors():
            job = self._jobs.find_one({"_id": to_key(job_id)})
            entry = job and new_entry({**job, "_id": job_id}, url, now, utc(first_at or now))
            if not entry:
                return None
            seen = (job.get("callback") or {}).get("id")
            done = self._jobs.update_one(
                {"_id": job["_id"], "status": job["status"], "callback.id": seen},
                {"$set": {"callback": entry}})
        return entry if done.matched_count else None

    def due_callbacks(self, now: datetime, limit: int) -> list[dict[str, Any]]:
        # {$lte: now} never matches null: only pending entries have a nextAt.
        return self._find({"callback.nextAt": {"$lte": utc(now)}},
                          [("callback.nextAt", 1)], limit)

    def hold_callback(self, job_id: str, seen_next_at: datetime, until: datetime) -> bool:
        from vip_worker.store.mongo_codec import to_key

        query = {"_id": to_key(job_id), "callback.state": PENDING,
                 "callback.nextAt": utc(seen_next_at)}
        with self._errors():
            return bool(self._jobs.update_one(
                query, {"$set": {"callback.nextAt": utc(until)}}).matched_count)

    def callback_attempted(self, job_id: str, callback_id: str, ok: bool,
                           next_at: datetime | None, error: str | None,
                           now: datetime) -> bool:
        from vip_worker.store.mongo_codec import shown, to_key

        query = {"_id": to_key(job_id), "callback.id": callback_id,
                 "callback.state": PENDING}
        with self._errors():
            job = shown(self._jobs.find_one(query))
            if job is None:
                return False
            entry = attempted(job["callback"], ok, next_at, error, utc(now))
            query["callback.nextAt"] = job["callback"].get("nextAt")
            step = callback_entry(entry, utc(now))
            update = {"$set": {"callback": entry}, **(history.push(step) if step else {})}
            return bool(self._jobs.update_one(query, update).matched_count)
