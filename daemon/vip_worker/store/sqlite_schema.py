"""The embedded store's tables and indexes, and the migration of older files.

A jobs row is ``id`` (the jobId), ``status``, ``created_at`` and ``doc`` (the whole
document as JSON), plus the columns the ledger's queries need, GENERATED from ``doc``
(VIRTUAL: computed on read, stored only in their indexes):

- ``lease_until``: ``doc.leaseUntil`` (ISO 8601 text, NULL when none);
- ``delivery``: ``doc.delivery``;
- ``queued_at``: ``doc.queuedAt``, else ``created_at`` (rows written before it existed);
- ``callback_at``: ``doc.callback.nextAt``, a pending callback's next attempt (``outbox``);
- ``user_id``, ``type``: ``doc.userId``, ``doc.type`` (``search_jobs``, ``user_jobs``).

Beside the jobs, the dashboard's tables (``create_metrics_tables``): ``metrics_minutes``
(``store/buckets.py``) and ``daemons`` (``store/fleet.py``).

Generated rather than written beside ``doc``, so the two cannot drift apart: not even
when a poller still running the previous version rewrites ``doc`` during an upgrade.
An older file gets them by ``ALTER TABLE ADD COLUMN`` when opened (no backfill to run:
they are computed). Needs SQLite 3.31 (generated columns).

Datetimes inside ``doc`` are written ``{"$date": "2025-01-15T10:30:00.000Z"}``: fixed
width, so text order is time order, in ``doc`` and in the generated columns alike.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import Any

from vip_worker.store.ledger import utc

MIN_SQLITE = (3, 31, 0)
# (name, expression): the jobs table's generated columns, in the order they are added.
GENERATED_COLUMNS = (
    ("lease_until", """json_extract(doc, '$.leaseUntil."$date"')"""),
    ("delivery", "json_extract(doc, '$.delivery')"),
    ("queued_at", """COALESCE(json_extract(doc, '$.queuedAt."$date"'), created_at)"""),
    ("callback_at", """json_extract(doc, '$.callback.nextAt."$date"')"""),
    ("user_id", "json_extract(doc, '$.userId')"),  # search_jobs, user_jobs
    ("type", "json_extract(doc, '$.type')"),  # search_jobs
)


# -- datetimes and JSON -------------------------------------------------------------


def iso(value: datetime) -> str:
    """Fixed-width ISO 8601 UTC, so that text order is time order."""
    value = utc(value)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def encode_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$date": iso(value)}
    raise TypeError(f"cannot store a {type(value).__name__} in the job store")


def decode_object(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and isinstance(obj.get("$date"), str):
        with suppress(ValueError):  # not ours: a caller's own {"$date": ...} stays as it is
            return datetime.fromisoformat(obj["$date"].replace("Z", "+00:00")).astimezone(UTC)
    return obj


def encode(doc: dict[str, Any]) -> str:
    return json.dumps(doc, default=encode_value, ensure_ascii=False, separators=(",", ":"))


def decode(text: str) -> dict[str, Any]:
    return json.loads(text, object_hook=decode_object)


def job_indexes(table: str) -> dict[str, str]:
    """The jobs table's indexes by name: their columns."""
    return {
        f"{table}_status_created": "status, created_at",  # list_jobs by status
        f"{table}_created": "created_at",  # list_jobs
        f"{table}_status_lease": "status, lease_until",  # expired_leases
        f"{table}_status_queued": "status, queued_at",  # stale_queued
        f"{table}_callback_at": "callback_at",  # due_callbacks (store/outbox.py)
        # search_jobs (store/search.py) and user_jobs: newest first by (created_at, id)
        f"{table}_user_created": "user_id, created_at, id",
        f"{table}_type_status_created": "type, status, created_at, id",
        f"{table}_type_created": "type, created_at, id",
    }


def check_version() -> None:
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        raise RuntimeError(
            f"the job store needs SQLite {'.'.join(map(str, MIN_SQLITE))} or newer "
            f"(generated columns); this Python has {sqlite3.sqlite_version}")


def create_schema(conn: sqlite3.Connection, jobs: str, collections: Iterable[str]) -> None:
    """Tables, columns and indexes, created only when missing: opening a store that
    exists must not wait for the write lock (a reader should not queue behind writers)."""
    wanted = {jobs, *job_indexes(jobs), *collections, *METRICS_TABLES}
    have = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    if wanted <= have:
        return
    with immediate(conn):
        # Decided again under the write lock: another poller may have just done it.
        create_jobs_table(conn, jobs)
        for name in collections:
            create_content_table(conn, name)
        create_metrics_tables(conn)


@contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A ``BEGIN IMMEDIATE`` transaction: the write lock taken before the body reads,
    committed after it, rolled back when it raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def create_jobs_table(conn: sqlite3.Connection, t: str) -> None:
    conn.execute(f'CREATE TABLE IF NOT EXISTS "{t}" (id TEXT PRIMARY KEY, '
                 "status TEXT NOT NULL, created_at TEXT NOT NULL, doc TEXT NOT NULL)")
    # table_xinfo, not table_info: only it lists generated columns.
    have = {row[1] for row in conn.execute(f'PRAGMA table_xinfo("{t}")')}
    for name, expression in GENERATED_COLUMNS:
        if name not in have:  # a file from before the ledger: migrate it
            conn.execute(f'ALTER TABLE "{t}" ADD COLUMN {name} TEXT '
                         f"GENERATED ALWAYS AS ({expression}) VIRTUAL")
    for name, columns in job_indexes(t).items():
        conn.execute(f'CREATE INDEX IF NOT EXISTS "{name}" ON "{t}" ({columns})')


def create_content_table(conn: sqlite3.Connection, name: str) -> None:
    conn.execute(f'CREATE TABLE IF NOT EXISTS "{name}" (id TEXT PRIMARY KEY, '
                 "job_id TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL, "
                 "doc TEXT NOT NULL)")


# The dashboard's tables and their indexes (store/buckets.py, store/fleet.py).
METRICS_TABLES = ("metrics_minutes", "metrics_minutes_minute", "daemons")


def create_metrics_tables(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS metrics_minutes (series TEXT NOT NULL, "
                 "minute TEXT NOT NULL, labels TEXT NOT NULL, vals TEXT NOT NULL, "
                 "PRIMARY KEY (series, minute, labels)) WITHOUT ROWID")
    conn.execute("CREATE INDEX IF NOT EXISTS metrics_minutes_minute "
                 "ON metrics_minutes (minute)")  # the prune
    conn.execute("CREATE TABLE IF NOT EXISTS daemons (id TEXT PRIMARY KEY, "
                 "last_seen TEXT NOT NULL, doc TEXT NOT NULL)")
