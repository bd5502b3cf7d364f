"""A job read by primary key on the caller's own thread: the job API's GET without a thread hop.

``SqliteStore.get_job`` runs in a thread pool in the web (its connection is shared under a
lock that a writer may hold for ``busy_timeout_s``). The read itself is one indexed SELECT
of one row, tens of microseconds, while handing it to a pool thread and back costs several
times that in CPU and, under load, GIL hand-offs between the event loop and the pool thread
(each up to ``sys.getswitchinterval()``, 5 ms) that show in the latency's tail.

``SqliteReader`` reads on the thread that calls it, safely:

- its connection is its own (``query_only``), never the store's, so no lock of this process
  is waited for: a ``threading.Lock`` taken without blocking, and a caller that finds it
  held (another thread reading) gets ``None`` and reads through the store instead;
- in WAL mode a reader does not wait for writers; SQLite's rare busy moments for readers
  (a WAL being reset or recovered) wait at most ``busy_timeout_s`` (20 ms), after which the
  read reports ``Busy`` and the caller reads through the store, as before;
- only a file store: ``:memory:`` has one connection, and MongoDB reads are network calls.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from typing import Any

from vip_worker.store.sqlite_schema import decode

READ_BUSY_S = 0.02


class Busy(Exception):
    """The read could not be done here now: read through the store."""


class SqliteReader:
    def __init__(self, path: str, jobs_table: str, busy_timeout_s: float = READ_BUSY_S) -> None:
        self.path = path
        self.query = f'SELECT doc FROM "{jobs_table}" WHERE id = ?'  # checked by the store
        self.busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0

    @classmethod
    def for_store(cls, store: Any) -> SqliteReader | None:
        """A reader of ``store``'s jobs, or None when it is not an SQLite file store."""
        from vip_worker.store.sqlite import MEMORY, SqliteStore

        if not isinstance(store, SqliteStore) or store.path == MEMORY:
            return None
        return cls(store.path, store.jobs)

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        """The job, or None when there is none; ``Busy`` when it cannot be read here now."""
        if not self._lock.acquire(blocking=False):
            raise Busy("another thread is reading")
        try:
            conn = self._connection()
            # fetchall steps the statement to its end, so its read transaction ends here
            # and no snapshot is held between GETs (it would stall WAL checkpoints).
            rows = conn.execute(self.query, (job_id,)).fetchall()
        except (sqlite3.Error, OSError) as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                self._drop()  # a replaced file or a dropped table: reopen next time
            raise Busy(str(exc)) from exc
        finally:
            self._lock.release()
        return decode(rows[0][0]) if rows else None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        self._conn = None  # one inherited over fork is abandoned, never used nor closed
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA query_only = 1")
        self._conn, self._pid = conn, os.getpid()
        return conn

    def _drop(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None

    def close(self) -> None:
        with self._lock:
            self._drop()
