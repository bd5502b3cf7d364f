"""Job search and retry for the dashboard: ``search_jobs`` and ``retry_job``.

``search_jobs`` filters by any of job id, user id, status, type and a ``createdAt`` range
and pages newest first by (``createdAt``, ``_id``) with the same cursor as ``user_jobs``
(``after``: the last job's ``createdAt`` and ``_id``). Each filter combination reads an
index (SQLite: the generated columns ``user_id`` and ``type`` with ``status`` and
``created_at``, see ``sqlite_schema.job_indexes``; MongoDB: ``SEARCH_INDEXES``), so a page
stays fast on 100,000 jobs. Found jobs come without their ``history`` (a list page does
not show it; ``get_job`` has it).

``retry_job``: a ``failed`` job -> ``queued`` afresh (attempts, lost claims and error
cleared, a ``retried`` history entry), a compare-and-set on ``failed``; the caller
re-sends its message. Any other status: None, nothing changed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from vip_worker.store import STATUSES, history
from vip_worker.store.ledger import QUEUED_MESSAGE, utc

MAX_LIMIT = 500
# MongoDB: (field, direction) lists; each ends with (createdAt, _id) descending.
SEARCH_INDEXES = (
    [("status", 1), ("createdAt", -1), ("_id", -1)],
    [("type", 1), ("status", 1), ("createdAt", -1), ("_id", -1)],
    [("createdAt", -1), ("_id", -1)],
)


def retried_changes(now: datetime) -> dict[str, Any]:
    """failed -> queued, afresh: a new run through the ledger (the message re-sent)."""
    return {"status": "queued", "attempts": 0, "lostClaims": 0, "error": None,
            "message": QUEUED_MESSAGE, "progress": 0, "leaseUntil": None,
            "cancelRequestedAt": None, "completedAt": None, "queuedAt": now,
            "updatedAt": now}


def wanted(status: str | None, limit: int) -> bool:
    """Whether a search can find anything (an unknown status finds nothing)."""
    return limit >= 1 and (status is None or status in STATUSES)


class SqliteSearch:
    """On ``SqliteStore`` (its ``_read``, ``_write``, ``_load_job``, ``_save_job``)."""

    def search_jobs(self, *, job_id: str | None = None, user_id: str | None = None,
                    status: str | None = None, type: str | None = None,
                    since: datetime | None = None, until: datetime | None = None,
                    after: tuple[datetime, str] | None = None,
                    limit: int = 50) -> list[dict[str, Any]]:
        """Jobs matching every given filter, newest first by (``createdAt``, ``_id``);
        ``since`` inclusive, ``until`` exclusive; ``limit`` at most ``MAX_LIMIT``."""
        from vip_worker.store.sqlite_schema import decode, iso

        if not wanted(status, limit):
            return []
        where, args = ["1"], []
        for column, value in (("id", job_id), ("user_id", user_id), ("status", status),
                              ("type", type)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if since is not None:
            where.append("created_at >= ?")
            args.append(iso(since))
        if until is not None:
            where.append("created_at < ?")
            args.append(iso(until))
        if after is not None:
            stamp = iso(after[0])
            where.append("(created_at < ? OR (created_at = ? AND id < ?))")
            args += [stamp, stamp, after[1]]
        sql = (f"SELECT json_remove(doc, '$.history') FROM \"{self.jobs}\" "
               f"WHERE {' AND '.join(where)} ORDER BY created_at DESC, id DESC LIMIT ?")
        with self._read() as conn:
            rows = conn.execute(sql, (*args, min(limit, MAX_LIMIT))).fetchall()
        return [decode(row[0]) for row in rows]

    def retry_job(self, job_id: str, now: datetime) -> dict[str, Any] | None:
        now = utc(now)
        with self._write() as conn:
            job = self._load_job(conn, job_id)
            if job is None or job.get("status") != "failed":
                return None
            job.update(retried_changes(now))  # failed -> queued
            job["history"] = history.appended(job, history.entry("retried", now))
            self._save_job(conn, job)
            return job


class MongoSearch:
    """On ``MongoStore`` (its ``_jobs``, ``_errors``)."""

    def _index_search(self) -> None:
        for keys in SEARCH_INDEXES:
            self._jobs.create_index(keys)

    def search_jobs(self, *, job_id: str | None = None, user_id: str | None = None,
                    status: str | None = None, type: str | None = None,
                    since: datetime | None = None, until: datetime | None = None,
                    after: tuple[datetime, str] | None = None,
                    limit: int = 50) -> list[dict[str, Any]]:
        from bson import ObjectId

        from vip_worker.store.mongo_codec import OBJECT_ID_RE, shown, to_key

        if not wanted(status, limit):
            return []
        query: dict[str, Any] = {}
        if job_id is not None:
            query["_id"] = to_key(job_id)
        if user_id is not None:
            # userId is stored as given: the app's own documents may hold an ObjectId.
            query["userId"] = {"$in": [user_id, ObjectId(user_id)]} \
                if OBJECT_ID_RE.match(user_id) else user_id
        if status is not None:
            query["status"] = status
        if type is not None:
            query["type"] = type
        window = {}
        if since is not None:
            window["$gte"] = utc(since)
        if until is not None:
            window["$lt"] = utc(until)
        if window:
            query["createdAt"] = window
        if after is not None:
            stamp, key = utc(after[0]), to_key(after[1])
            query["$or"] = [{"createdAt": {"$lt": stamp}},
                            {"createdAt": stamp, "_id": {"$lt": key}}]
        order = [("createdAt", -1), ("_id", -1)]
        with self._errors():
            docs = self._jobs.find(query, {"history": 0}).sort(order).limit(
                min(limit, MAX_LIMIT))
            return [shown(doc) for doc in docs]

    def retry_job(self, job_id: str, now: datetime) -> dict[str, Any] | None:
        import pymongo

        from vip_worker.store.mongo_codec import shown, to_key

        now = utc(now)
        update = {"$set": retried_changes(now),
                  **history.push(history.entry("retried", now))}
        with self._errors():  # failed -> queued: a compare-and-set on the status
            return shown(self._jobs.find_one_and_update(
                {"_id": to_key(job_id), "status": "failed"}, update,
                return_document=pymongo.ReturnDocument.AFTER))
