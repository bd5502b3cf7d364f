"""Job store backends for the contract suite.

``backend`` runs each test against every backend:

- ``sqlite``: the embedded store on a file under tmp_path.
- ``mongodb-standin-mongomock``: ``MongoStore`` over mongomock, an in-memory STAND-IN
  for MongoDB. It checks what we send (filters, keys, ObjectIds), not what a server
  would do with it (atomicity, index races).
- ``mongodb-real``: ``MongoStore`` over the server at ``VIP_TEST_MONGODB_URI``, in a
  database of its own that is dropped afterwards; skipped when that is not set.
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from vip_worker.store import JobStore
from vip_worker.store.mongo import MongoStore
from vip_worker.store.sqlite import SqliteStore

REAL_MONGODB_ENV = "VIP_TEST_MONGODB_URI"
BACKEND_IDS = ["memory-testing-helper", "sqlite", "mongodb-standin-mongomock", "mongodb-real"]
MONGO_IDS = BACKEND_IDS[2:]


@dataclass
class Backend:
    """A store under test, a way to open another one on the same data, and the raw data."""

    id: str
    open: Callable[[], JobStore]
    db: Any = None  # the raw pymongo/mongomock database (MongoDB backends)
    path: str = ""  # the file (sqlite)
    opened: list[JobStore] = field(default_factory=list)

    @property
    def is_mongo(self) -> bool:
        return self.db is not None

    def new_store(self) -> JobStore:
        store = self.open()
        self.opened.append(store)
        return store

    def raw(self, collection: str) -> list[dict[str, Any]]:
        """Every stored document of ``collection`` as the backend holds it."""
        if self.is_mongo:
            return list(self.db[collection].find())
        if not self.path:  # the in-memory store: read through its own connection
            conn = self.open()._connection()
            return [json.loads(row[0]) for row in conn.execute(f'SELECT doc FROM "{collection}"')]
        conn = sqlite3.connect(self.path)
        try:
            return [json.loads(row[0]) for row in conn.execute(f'SELECT doc FROM "{collection}"')]
        finally:
            conn.close()

    def close(self) -> None:
        for store in self.opened:
            store.close()


def make_backend(kind: str, tmp_path) -> tuple[Backend, Callable[[], None]]:
    if kind == "memory-testing-helper":
        from vip_worker.testing import MemoryStore

        shared = MemoryStore()  # one database: every "new" store is the same one
        return Backend(kind, lambda: shared), shared.close
    if kind == "sqlite":
        path = str(tmp_path / "state" / "jobs.sqlite3")
        return Backend(kind, lambda: SqliteStore(path), path=path), lambda: None
    if kind == "mongodb-standin-mongomock":
        import mongomock

        client = mongomock.MongoClient(tz_aware=True)
        db = client["vip_test"]
        return Backend(kind, lambda: MongoStore(database=db.name, client=client), db=db), \
            client.close
    uri = os.environ.get(REAL_MONGODB_ENV)
    if not uri:
        pytest.skip(f"set {REAL_MONGODB_ENV} to run the contract against a real MongoDB")
    import pymongo

    name = f"vip_test_{uuid.uuid4().hex[:12]}"
    client = pymongo.MongoClient(uri, tz_aware=True, serverSelectionTimeoutMS=5000)

    def drop() -> None:
        client.drop_database(name)
        client.close()

    return Backend(kind, lambda: MongoStore(uri, database=name), db=client[name]), drop


@pytest.fixture(params=BACKEND_IDS)
def backend(request, tmp_path):
    backend, cleanup = make_backend(request.param, tmp_path)
    yield backend
    backend.close()
    cleanup()


@pytest.fixture(params=MONGO_IDS)
def mongo_backend(request, tmp_path):
    backend, cleanup = make_backend(request.param, tmp_path)
    yield backend
    backend.close()
    cleanup()


@pytest.fixture
def store(backend) -> JobStore:
    return backend.new_store()
