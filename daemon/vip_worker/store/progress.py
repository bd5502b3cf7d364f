"""Progress written in batches: the latest progress of many held jobs in one store write.

A generation that streams (or whose progress is estimated) moves its job's progress
every few seconds; a poller holds many such jobs. Their updates are collected (the
poller's ledger, ``vip_worker/ledger.py``) and written together by ``progress_many``:
SQLite one ``BEGIN IMMEDIATE`` transaction, MongoDB one ``bulk_write``. Each update is::

    (job_id, delivery, percent, message, estimated)

and sets the job's ``progress`` (0..100), ``message``, ``progressEstimated`` (True: the
percentage is estimated from the type's recent durations, not measured) and
``updatedAt``, only while the job is ``processing`` and, with a delivery, held by it
(``ledger.may_settle``): a late batch never touches a job that ended or changed hands.
Nor does it move progress back: an update below the job's progress (a streamed 60 %
written after the handler's own 80 "Saving content...") is skipped (SQLite compares,
MongoDB's filter says ``progress`` not above it). ``progress()``, the handler's own
write, sets what it is told (a new attempt starts again at 10).
A new step (``history.step_of``: the message with its numbers masked) is a ``progress``
entry on the job's timeline, in the same write.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from vip_worker.store import history, ledger
from vip_worker.store.ledger import utc
from vip_worker.store.mongo_codec import to_key

Update = tuple[str, "str | None", int, str, bool]


def progress_changes(percent: int, message: str, estimated: bool, now: datetime
                     ) -> dict[str, Any]:
    return {"progress": max(0, min(100, int(percent))), "message": message,
            "progressEstimated": bool(estimated), "updatedAt": utc(now)}


class SqliteProgress:
    """``progress_many`` on the SQLite store (mixed into ``SqliteStore``)."""

    def progress_many(self, updates: Sequence[Update], now: datetime) -> int:
        """Write each update of a held ``processing`` job, in one transaction; how many."""
        written = 0
        if not updates:
            return 0
        with self._write() as conn:
            for job_id, delivery, percent, message, estimated in updates:
                job = self._load_job(conn, job_id)
                if job is None or job.get("status") != "processing" \
                        or not ledger.may_settle(job, None, delivery):
                    continue
                changes = progress_changes(percent, message, estimated, now)
                if (job.get("progress") or 0) > changes["progress"]:
                    continue  # progress only rises

                step = history.step_of(message)
                if history.is_new_step(job, message):
                    job["history"] = history.appended(
                        job, history.progress_entry(percent, message, utc(now)))
                job.update(changes, progressStep=step)
                self._save_job(conn, job)
                written += 1
        return written


class MongoProgress:
    """``progress_many`` on the MongoDB store (mixed into ``MongoStore``)."""

    def progress_many(self, updates: Sequence[Update], now: datetime) -> int:
        from vip_worker.store.mongo import guard, progress_writes  # mongo.py imports us

        if not updates:
            return 0
        jobs = [progress_writes(
            {"_id": to_key(job_id), "status": "processing", **guard(None, delivery)},
            progress_changes(percent, message, estimated, now),
            history.progress_entry(percent, message, utc(now)), rising=True)
            for job_id, delivery, percent, message, estimated in updates]
        with self._errors():
            return self._progress_writes(jobs)

    def _progress_writes(self, jobs: Sequence[Sequence[tuple[dict, dict]]]) -> int:
        """Each job's conditional updates (``mongo.progress_writes``) in order, all jobs in
        one ordered ``bulk_write``; how many jobs were written."""
        from pymongo import UpdateOne

        if type(self._client).__module__.startswith("mongomock"):
            # mongomock's bulk_write cannot take pymongo 4's UpdateOne (its ``sort``):
            # the tests' stand-in gets the same filters and updates one by one, in order.
            return sum(any(self._jobs.update_one(*write).matched_count for write in writes)
                       for writes in jobs)
        # Ordered: a job's "same step" update runs before its "new step" one, so exactly
        # one of the two matches (the first sets nothing the second's filter reads).
        return self._jobs.bulk_write([UpdateOne(*w) for writes in jobs for w in writes],
                                     ordered=True).matched_count
