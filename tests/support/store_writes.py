"""Count a job store's writes, as the store sends them (not its method calls).

- SQLite: write transactions (``BEGIN IMMEDIATE`` statements, from the connection's
  trace callback).
- MongoDB: calls of a collection's write methods (``bulk_write``, ``update_one``, ...),
  through a proxy of the store's database.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

MONGO_WRITES = ("bulk_write", "insert_one", "insert_many", "update_one", "update_many",
                "replace_one", "find_one_and_update", "delete_one", "delete_many")


class Writes:
    def __init__(self) -> None:
        self.calls: list[str] = []

    @property
    def count(self) -> int:
        return len(self.calls)


class _Collection:
    def __init__(self, collection: Any, writes: Writes) -> None:
        self._collection, self._writes = collection, writes

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._collection, name)
        if name in MONGO_WRITES:
            def call(*args: Any, **kwargs: Any) -> Any:
                self._writes.calls.append(f"{self._collection.name}.{name}")
                return attr(*args, **kwargs)
            return call
        return attr


class _Database:
    def __init__(self, db: Any, writes: Writes) -> None:
        self._db, self._writes = db, writes

    def __getitem__(self, name: str) -> _Collection:
        return _Collection(self._db[name], self._writes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


@contextmanager
def counted_writes(store: Any) -> Iterator[Writes]:
    """Count ``store``'s writes inside the block (a SqliteStore or a MongoStore)."""
    writes = Writes()
    if hasattr(store, "_db"):  # MongoStore
        db, jobs = store._db, store._jobs
        store._db, store._jobs = _Database(db, writes), _Collection(jobs, writes)
        try:
            yield writes
        finally:
            store._db, store._jobs = db, jobs
        return
    conn = store._connection()

    def trace(statement: str) -> None:
        if statement.strip().upper().startswith("BEGIN"):
            writes.calls.append(statement)

    conn.set_trace_callback(trace)
    try:
        yield writes
    finally:
        conn.set_trace_callback(None)
