"""What users spent per UTC day, for the daily budget (``pipeline/usage.py``).

One small table (SQLite ``user_spend``) or collection (MongoDB ``user_spend``), one row
or document per user and day::

    {"_id": "<userId>:<YYYY-MM-DD>", "userId", "day": "YYYY-MM-DD", "spent": float,
     "jobs": int, "updatedAt"}

``add_spend`` is one atomic increment per job completion (SQLite: one upsert in one
``BEGIN IMMEDIATE`` transaction; MongoDB: one ``find_one_and_update`` with ``$inc`` and
``upsert``), so pollers on every host add to the same total without losing a write;
``spent`` reads it back (0.0 for a day with nothing spent). ``SqliteUsage`` and
``MongoUsage`` are mixed into ``SqliteStore`` and ``MongoStore``.
"""

from __future__ import annotations

import sqlite3
from datetime import date, datetime

from vip_worker.store.ledger import utc
from vip_worker.store.sqlite_schema import iso

SPEND = "user_spend"
USAGE = "usage"  # the job's field, and the content document's (pipeline/usage.py)


def usage_changes(content: dict) -> dict:
    """The job fields ``save_result`` sets besides its completion: the content's
    ``usage`` (tokens, images, model, cost), when the generation reported any."""
    usage = content.get(USAGE)
    return {USAGE: usage} if isinstance(usage, dict) else {}


def spend_key(user_id: str, day: date) -> str:
    return f"{user_id}:{day.isoformat()}"


class SqliteUsage:
    """``add_spend`` and ``spent`` on the SQLite store (mixed into ``SqliteStore``)."""

    def _spend_table(self, conn) -> None:
        conn.execute(f'CREATE TABLE IF NOT EXISTS "{SPEND}" (id TEXT PRIMARY KEY, '
                     "user_id TEXT NOT NULL, day TEXT NOT NULL, spent REAL NOT NULL, "
                     "jobs INTEGER NOT NULL, updated_at TEXT NOT NULL)")

    def add_spend(self, user_id: str, day: date, amount: float, now: datetime) -> float:
        """Add ``amount`` to ``user_id``'s spending on ``day``; the new total."""
        with self._write() as conn:
            self._spend_table(conn)
            row = conn.execute(
                f'INSERT INTO "{SPEND}" (id, user_id, day, spent, jobs, updated_at) '
                "VALUES (?, ?, ?, ?, 1, ?) ON CONFLICT(id) DO UPDATE SET "
                "spent = spent + excluded.spent, jobs = jobs + 1, "
                "updated_at = excluded.updated_at RETURNING spent",
                (spend_key(user_id, day), user_id, day.isoformat(), float(amount),
                 iso(utc(now)))).fetchone()
        return float(row[0])

    def spent(self, user_id: str, day: date) -> float:
        """What ``user_id`` spent on ``day`` (0.0: nothing recorded)."""
        with self._read() as conn:
            try:
                row = conn.execute(f'SELECT spent FROM "{SPEND}" WHERE id = ?',
                                   (spend_key(user_id, day),)).fetchone()
            except sqlite3.OperationalError as exc:  # no such table: nothing spent yet
                if "no such table" not in str(exc):
                    raise
                return 0.0
        return float(row[0]) if row else 0.0


class MongoUsage:
    """``add_spend`` and ``spent`` on the MongoDB store (mixed into ``MongoStore``)."""

    def add_spend(self, user_id: str, day: date, amount: float, now: datetime) -> float:
        with self._errors():
            doc = self._db[SPEND].find_one_and_update(
                {"_id": spend_key(user_id, day)},
                {"$inc": {"spent": float(amount), "jobs": 1},
                 "$set": {"updatedAt": utc(now)},
                 "$setOnInsert": {"userId": user_id, "day": day.isoformat()}},
                upsert=True, return_document=True)  # ReturnDocument.AFTER
        return float(doc["spent"])

    def spent(self, user_id: str, day: date) -> float:
        with self._errors():
            doc = self._db[SPEND].find_one({"_id": spend_key(user_id, day)}, {"spent": 1})
        return float(doc["spent"]) if doc else 0.0
