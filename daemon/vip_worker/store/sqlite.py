"""The embedded job store: one SQLite file in WAL mode, shared by every poller process.

Over 400 lines because it is one backend of one interface, kept whole beside mongo.py;
the schema and its migration are in sqlite_schema.py, the rules in ledger.py.

Each collection is a table named after it. A row holds the whole document as
JSON (``doc``) beside the columns the queries need: the key (``id``, the
jobId; ``job_id`` UNIQUE in content tables), ``status`` and ``created_at``, and
for jobs ``lease_until``, ``delivery`` and ``queued_at``, generated from ``doc``
(``store/sqlite_schema.py``, which also migrates older files and holds the JSON
codec).
Datetimes inside ``doc`` are written ``{"$date": "2025-01-15T10:30:00.000Z"}``
(ISO 8601 UTC, millisecond precision like MongoDB's) and come back as
timezone-aware UTC datetimes, so documents look the same from both backends.

Concurrency:

- between processes, every read-decide-write runs in ``BEGIN IMMEDIATE``: the
  transaction takes the database's write lock before it reads, so two pollers
  claiming one job are serialized and the second sees the first's claim.
  Waiting for that lock is bounded by ``busy_timeout_s``.
- within a process, handler threads share ONE connection guarded by a lock
  (``check_same_thread=False``). SQLite allows one writer at a time anyway, so
  connections per thread would only add concurrent reads, while costing a
  connection per pool thread (``concurrency`` may be thousands), connections
  that ``close()`` cannot reach from another thread, and threads spinning in
  SQLite's sleep-and-retry busy handler instead of queueing on a lock.
- a connection is never used across ``fork`` (SQLite forbids it): a store used
  in a process other than the one that opened it opens a fresh connection and
  abandons the inherited one untouched.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime, timedelta
from typing import Any

from vip_worker.store import (
    STATUSES,
    Cancel,
    Claim,
    ClaimOutcome,
    LeaseRenewal,
    RescueOutcome,
    StoreUnavailable,
    history,
    ledger,
)
from vip_worker.store.buckets import DEFAULT_RETENTION_H, SqliteBuckets
from vip_worker.store.cancel import cancelled_changes, decide_cancel
from vip_worker.store.checkpoints import SqliteCheckpoints
from vip_worker.store.fleet import SqliteFleet
from vip_worker.store.history import appended
from vip_worker.store.ledger import new_job, utc
from vip_worker.store.outbox import SqliteOutbox
from vip_worker.store.progress import SqliteProgress
from vip_worker.store.quota import SqliteQuota
from vip_worker.store.search import SqliteSearch
from vip_worker.store.sqlite_schema import (
    check_version,
    create_content_table,
    create_schema,
    decode,
    encode,
    immediate,
    iso,
)
from vip_worker.store.usage import SqliteUsage, usage_changes

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DEFAULT_BUSY_TIMEOUT_S = 10.0
# renew_leases' pairs per UPDATE: 3 host parameters each (the id twice, the delivery),
# plus 2, under SQLite's oldest default limit of 999 (SQLITE_MAX_VARIABLE_NUMBER < 3.32).
RENEW_CHUNK = 300


def check_name(name: str) -> str:
    """A collection name usable as a table name, unquoted: ``[A-Za-z_][A-Za-z0-9_]*``."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(f"{name!r} is not a valid table name ([A-Za-z_][A-Za-z0-9_]*)")
    return name


# An in-memory database (vip_worker.testing.MemoryStore): one process only.
MEMORY = ":memory:"


class SqliteStore(SqliteOutbox, SqliteBuckets, SqliteFleet, SqliteSearch, SqliteQuota,
                  SqliteCheckpoints, SqliteUsage, SqliteProgress):
    """``JobStore`` on one SQLite file; see the module docstring for concurrency."""

    def __init__(self, path: str | os.PathLike[str], jobs_collection: str = "jobs",
                 content_collection: str = "generated_content",
                 media_collection: str = "media", *,
                 busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
                 metrics_retention_h: float = DEFAULT_RETENTION_H) -> None:
        self.metrics_retention_h = metrics_retention_h
        self.path = os.fspath(path)
        self.jobs = check_name(jobs_collection)
        self.collections = {check_name(content_collection), check_name(media_collection)}
        if self.jobs in self.collections:
            raise ValueError(f"{self.jobs!r} cannot hold both jobs and content")
        self.busy_timeout_s = busy_timeout_s
        check_version()
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        # Connections inherited over fork, kept referenced so that garbage collection
        # never closes them here (closing one in the child is as unsafe as using it).
        self._inherited: list[sqlite3.Connection] = []
        with self._lock, self._errors():
            self._connection()

    # -- connection and transactions --------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        """The open connection, (re)opened when missing or inherited over fork."""
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        self._drop_connection()
        if self.path != MEMORY:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        # isolation_level=None: no implicit transactions; we BEGIN and COMMIT ourselves.
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None,
                               check_same_thread=False)
        try:
            self._enable_wal(conn)
            create_schema(conn, self.jobs, self.collections)
        except BaseException:
            conn.close()
            raise
        self._conn, self._pid = conn, os.getpid()
        return conn

    def _drop_connection(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            with suppress(sqlite3.Error):
                self._conn.close()
        elif self._conn is not None:
            self._inherited.append(self._conn)  # opened before fork: abandoned, not closed
        self._conn = None

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        """Switch the file to WAL (a no-op once it is: the mode is persistent).

        SQLite does not call the busy handler for this switch: pollers opening a new
        file together get "database is locked" at once. Retry until the busy timeout.
        """
        if self.path == MEMORY:
            return  # one connection, one process: no WAL needed (nor possible)
        deadline = time.monotonic() + self.busy_timeout_s
        delay_s = 0.005
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(delay_s)
                delay_s = min(delay_s * 2, 0.1)
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot use WAL (journal_mode is {mode})")

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """SQLite's and the file system's failures -> ``StoreUnavailable``.

        On any failure but a busy database the connection is dropped and the next
        call reopens it, which recovers from a replaced file or a remounted directory.
        """
        try:
            yield
        except (sqlite3.OperationalError, OSError) as exc:
            if "locked" not in str(exc):  # busy is no fault of the connection: keep it
                self._drop_connection()
            raise StoreUnavailable(f"sqlite {self.path}: {exc}") from exc

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors():
            yield self._connection()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A ``BEGIN IMMEDIATE`` transaction: the write lock is held from the first read,
        so the decision the body takes is still true when it commits."""
        with self._lock, self._errors():
            with immediate(self._connection()) as conn:
                yield conn

    def _load_job(self, conn: sqlite3.Connection, job_id: str) -> dict[str, Any] | None:
        row = conn.execute(f'SELECT doc FROM "{self.jobs}" WHERE id = ?', (job_id,)).fetchone()
        return decode(row[0]) if row else None

    def _save_job(self, conn: sqlite3.Connection, job: dict[str, Any]) -> None:
        conn.execute(
            f'INSERT INTO "{self.jobs}" (id, status, created_at, doc) VALUES (?, ?, ?, ?) '
            "ON CONFLICT(id) DO UPDATE SET status = excluded.status, doc = excluded.doc",
            (job["_id"], job["status"], iso(job["createdAt"]), encode(job)),
        )

    # -- JobStore ---------------------------------------------------------------

    def create_job(self, job_id: str, user_id: str, type: str, params: dict[str, Any],
                   now: datetime, *, queue: str | None = None) -> bool:
        job = new_job(job_id, user_id, type, params, utc(now), queue)
        with self._write() as conn:
            cursor = conn.execute(
                f'INSERT INTO "{self.jobs}" (id, status, created_at, doc) VALUES (?, ?, ?, ?) '
                "ON CONFLICT(id) DO NOTHING",
                (job_id, job["status"], iso(now), encode(job)),
            )
            return cursor.rowcount == 1

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        with self._read() as conn:
            return self._load_job(conn, job_id)

    def list_jobs(self, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        if limit < 1 or (status is not None and status not in STATUSES):
            return []
        where, args = ("WHERE status = ? ", [status]) if status else ("", [])
        return self._select(f"{where}ORDER BY created_at DESC, rowid DESC LIMIT ?",
                            (*args, limit))

    def user_jobs(self, user_id: str, status: str | None = None, limit: int = 50,
                  after: tuple[datetime, str] | None = None) -> list[dict[str, Any]]:
        if limit < 1 or (status is not None and status not in STATUSES):
            return []
        where, args = "WHERE user_id = ? ", [user_id]  # the generated column, indexed
        if status:
            where, args = where + "AND status = ? ", [*args, status]
        if after is not None:
            stamp = iso(after[0])
            where += "AND created_at <= ? AND (created_at < ? OR id < ?) "  # an index range
            args += [stamp, stamp, after[1]]
        return self._select(f"{where}ORDER BY created_at DESC, id DESC LIMIT ?", (*args, limit))

    def _select(self, clauses: str, args: tuple[Any, ...]) -> list[dict[str, Any]]:
        with self._read() as conn:
            rows = conn.execute(f'SELECT doc FROM "{self.jobs}" {clauses}', args).fetchall()
        return [decode(row[0]) for row in rows]

    def claim(self, job_id: str, *, user_id: str, type: str, params: dict[str, Any],
              message_id: str, lease_s: float, now: datetime, delivery: str | None = None,
              queue: str | None = None, max_attempts: int | None = None,
              redriven: bool | None = None, unsettled: str | None = None,
              by: str | None = None) -> Claim:
        now = utc(now)
        with self._write() as conn:
            # Another app may have produced the message without creating the job.
            job = self._load_job(conn, job_id) or new_job(job_id, user_id, type, params, now)
            decision = ledger.decide_claim(
                job, message_id=message_id, delivery=delivery, queue=queue,
                lease_until=utc(now + timedelta(seconds=lease_s)),
                max_attempts=max_attempts, now=now, redriven=redriven,
                unsettled=unsettled)
            if decision.changes is None:
                busy = decision.outcome is ClaimOutcome.BUSY
                return Claim(decision.outcome, job,
                             lease_until=job.get("leaseUntil") if busy else None)
            step = history.claim_entry(job, decision.outcome, decision.changes, now, by)
            job.update(decision.changes)  # the transition is commented in decide_claim
            if step is not None:
                job["history"] = appended(job, step)
            self._save_job(conn, job)
            return Claim(decision.outcome, job)

    def progress(self, job_id: str, percent: int, message: str, now: datetime, *,
                 delivery: str | None = None) -> None:
        with self._write() as conn:
            job = self._load_job(conn, job_id)
            if job is None or job.get("status") != "processing":
                return
            if not ledger.may_settle(job, None, delivery):
                return
            percent = max(0, min(100, int(percent)))
            step = history.step_of(message)
            if history.is_new_step(job, message):  # a step, not every percent
                job["history"] = appended(job, history.progress_entry(percent, message,
                                                                       utc(now)))
            job.update(progress=percent, message=message, progressStep=step,
                       progressEstimated=False, updatedAt=utc(now))  # a measured step
            self._save_job(conn, job)

    def save_result(self, job_id: str, collection: str, content: dict[str, Any],
                    now: datetime, *, delivery: str | None = None) -> None:
        # ``delivery`` does not guard a result (the JobStore contract): accepted, unused.
        now = utc(now)
        table = check_name(collection)
        with self._write() as conn:
            if table not in self.collections:
                create_content_table(conn, table)
            job = self._load_job(conn, job_id)
            if job is not None and job.get("status") == "cancelled":
                return  # an abandoned handler's late result: the job stays cancelled
            row = conn.execute(f'SELECT doc FROM "{table}" WHERE job_id = ?',
                               (job_id,)).fetchone()
            # A redelivery updates the one document (MongoDB's $set / $setOnInsert).
            doc = decode(row[0]) if row else {"_id": uuid.uuid4().hex[:24], "createdAt": now}
            doc.update({k: v for k, v in content.items() if k not in ("_id", "createdAt")})
            doc["jobId"] = job_id
            doc["userId"] = job["userId"] if job and "userId" in job else content.get("userId")
            conn.execute(
                f'INSERT INTO "{table}" (id, job_id, created_at, doc) VALUES (?, ?, ?, ?) '
                "ON CONFLICT(job_id) DO UPDATE SET doc = excluded.doc",
                (doc["_id"], job_id, iso(doc["createdAt"]), encode(doc)),
            )
            if job is not None:
                if job.get("status") != "completed":  # a redelivered result: no new step
                    job["history"] = appended(job, history.entry("completed", now))
                # processing -> completed
                job.update(ledger.completed_changes(now), **usage_changes(content))
                self._save_job(conn, job)

    def complete(self, job_id: str, now: datetime, *, delivery: str) -> bool:
        with self._write() as conn:
            job = self._load_job(conn, job_id)
            if job is None or not ledger.holds(job, delivery):
                return False
            job.update(ledger.completed_changes(utc(now)))  # processing -> completed
            job["history"] = appended(job, history.entry("completed", utc(now)))
            self._save_job(conn, job)
            return True

    def requeue(self, job_id: str, error: str, now: datetime, *,
                message_id: str | None = None, delivery: str | None = None,
                delay_s: float = 0) -> None:
        self._settle(job_id, "queued", error, utc(now), message_id, delivery, delay_s)

    def fail(self, job_id: str, error: str, now: datetime, *,
             message_id: str | None = None, delivery: str | None = None) -> None:
        self._settle(job_id, "failed", error, utc(now), message_id, delivery)

    def _settle(self, job_id: str, status: str, error: str, now: datetime,
                message_id: str | None, delivery: str | None, delay_s: float = 0) -> None:
        """processing -> queued, or anything but completed -> failed.

        Only a job still ``processing`` goes back to ``queued``: a twin delivery that
        fails transiently must not undo the ``failed`` its twin wrote (nor a completion).
        With ``message_id`` / ``delivery``, only the claim's holder settles the job
        (``ledger.may_settle``), or any message when none ever claimed it (a message
        refused before its claim: a bad payload, too many receives).
        """
        with self._write() as conn:
            job = self._load_job(conn, job_id)
            if job is None or job.get("status") == "completed":
                return
            if status == "queued" and job.get("status") != "processing":
                return
            if not ledger.may_settle(job, message_id, delivery):
                return  # another delivery claimed the job since
            job.update(status=status, error=error, message=error, leaseUntil=None,
                       updatedAt=now)
            if status == "queued":
                job["queuedAt"] = utc(now + timedelta(seconds=delay_s))  # visible again
            event = "requeued" if status == "queued" else "failed"
            job["history"] = appended(job, history.entry(event, now, reason=error))
            self._save_job(conn, job)

    def release(self, job_id: str, delivery: str, now: datetime, reason: str, *,
                event: str = "released", delay_s: float = 0) -> bool:
        now = utc(now)
        step = history.entry(event, now, reason=reason)
        with self._write() as conn:
            job = self._load_job(conn, job_id)
            if job is None or not ledger.holds(job, delivery):
                return False
            job.update(ledger.release_changes(job, reason, now, delay_s))  # processing -> queued
            job["history"] = appended(job, step)
            self._save_job(conn, job)
            return True

    def renew_leases(self, held: Sequence[tuple[str, str]], lease_until: datetime,
                     now: datetime) -> set[str]:
        lease, updated = (json.dumps({"$date": iso(t)}) for t in (lease_until, now))
        still: set[str] = set()
        cancels: set[str] = set()
        if not held:
            return LeaseRenewal()
        with self._write() as conn:  # every chunk in one transaction
            for start in range(0, len(held), RENEW_CHUNK):
                chunk = held[start:start + RENEW_CHUNK]
                ids = ", ".join("?" * len(chunk))
                pairs = ", ".join("(?, ?)" for _ in chunk)
                # `id IN` first: it lets SQLite search the primary key for each pair.
                where = (f"WHERE status = 'processing' AND id IN ({ids}) "
                         f"AND (id, delivery) IN (VALUES {pairs})")
                args = [job_id for job_id, _ in chunk] + [v for pair in chunk for v in pair]
                conn.execute(f'UPDATE "{self.jobs}" SET doc = json_set(doc, '
                             f"'$.leaseUntil', json(?), '$.updatedAt', json(?)) {where}",
                             (lease, updated, *args))
                for job_id, requested in conn.execute(
                        f"SELECT id, json_extract(doc, '$.cancelRequestedAt') "
                        f'FROM "{self.jobs}" {where}', args):
                    still.add(job_id)
                    if requested is not None:
                        cancels.add(job_id)
        return LeaseRenewal(still, cancels)

    def request_cancel(self, job_id: str, now: datetime, *,
                       user_id: str | None = None) -> Cancel:
        now = utc(now)
        with self._write() as conn:
            job = self._load_job(conn, job_id)
            outcome, changes = decide_cancel(job, now, user_id)
            if changes is not None:
                job.update(changes)  # the transition is commented in decide_cancel
                job["history"] = appended(job, history.cancel_entry(changes, now))
                self._save_job(conn, job)
            return Cancel(outcome, job)

    def cancel_held(self, job_id: str, now: datetime, *, delivery: str) -> bool:
        with self._write() as conn:
            job = self._load_job(conn, job_id)
            if job is None or not ledger.holds(job, delivery):
                return False
            job.update(cancelled_changes(job, utc(now)))  # processing -> cancelled
            job["history"] = appended(job, history.entry("cancelled", utc(now)))
            self._save_job(conn, job)
            return True

    def expired_leases(self, now: datetime, limit: int) -> list[dict[str, Any]]:
        return self._select("WHERE status = 'processing' AND lease_until < ? "
                            "ORDER BY lease_until, rowid LIMIT ?", (iso(now), max(0, limit)))

    def stale_queued(self, created_before: datetime, limit: int) -> list[dict[str, Any]]:
        return self._select("WHERE status = 'queued' AND queued_at < ? "
                            "ORDER BY queued_at, rowid LIMIT ?",
                            (iso(created_before), max(0, limit)))

    def rescue(self, job: Mapping[str, Any], now: datetime, *, resend: bool, reason: str,
               max_attempts: int, hold_s: float = 0) -> RescueOutcome | None:
        now = utc(now)
        if not ledger.rescuable(job, now):
            return None
        with self._write() as conn:
            current = self._load_job(conn, str(job["_id"]))
            if current is None or any(current.get(f) != job.get(f)
                                      for f in ledger.RESCUE_PINNED):
                return None  # another sweeper, a claim or a settle got there first
            outcome, changes = ledger.rescue_changes(current, now, resend=resend,
                                                     reason=reason, max_attempts=max_attempts,
                                                     hold_s=hold_s)
            step = history.rescue_entry(current, outcome, changes, now)
            current.update(changes)  # the transition is commented in rescue_changes
            current["history"] = appended(current, step)
            self._save_job(conn, current)
            return outcome

    def get_content(self, collection: str, job_id: str) -> list[dict[str, Any]]:
        table = check_name(collection)
        with self._read() as conn:
            exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                                  "AND name = ?", (table,)).fetchone()
            if not exists:
                return []
            rows = conn.execute(f'SELECT doc FROM "{table}" WHERE job_id = ?',
                                (job_id,)).fetchall()
        return [decode(row[0]) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._drop_connection()
