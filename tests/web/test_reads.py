"""GET a job without the thread hop (store/sqlite_reader.py) and without FastAPI's
response_model pass (app.job_response): the same answers as before, and a busy reader
falls back to the store's own read."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

import pytest

from tests.support.web import ARTICLE
from vip_worker.store.sqlite import SqliteStore
from vip_worker.store.sqlite_reader import Busy, SqliteReader
from vip_worker.web import models
from vip_worker.web.app import job_view

NOW = datetime(2026, 12, 4, 17, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture
def store(tmp_path):
    made = SqliteStore(tmp_path / "jobs.sqlite3")
    yield made
    made.close()


@pytest.fixture
def reader(store):
    made = SqliteReader.for_store(store)
    yield made
    made.close()


def test_the_reader_reads_what_the_store_reads_and_none_for_a_missing_job(store, reader):
    store.create_job("j1", "u1", "articles", ARTICLE, NOW)
    assert reader.get_job("j1") == store.get_job("j1")
    assert reader.get_job("j1")["createdAt"] == NOW.replace(microsecond=123000)
    assert reader.get_job("nope") is None


def test_the_reader_sees_each_committed_write_at_once(store, reader):
    store.create_job("j1", "u1", "articles", ARTICLE, NOW)
    assert reader.get_job("j1")["status"] == "queued"  # its connection is open now
    store.claim("j1", user_id="u1", type="articles", params=ARTICLE, message_id="m1",
                lease_s=60, now=NOW)
    store.progress("j1", 40, "writing", NOW)
    job = reader.get_job("j1")
    assert (job["status"], job["progress"], job["message"]) == ("processing", 40, "writing")


def test_a_reader_in_use_by_another_thread_says_busy_instead_of_waiting(store, reader):
    store.create_job("j1", "u1", "articles", ARTICLE, NOW)
    with reader._lock:  # another thread mid-read
        with pytest.raises(Busy):
            reader.get_job("j1")
    assert reader.get_job("j1")["_id"] == "j1"


def test_a_replaced_file_is_busy_once_then_read_afresh(tmp_path, store, reader):
    store.create_job("j1", "u1", "articles", ARTICLE, NOW)
    assert reader.get_job("j1") is not None
    assert reader._conn is not None  # open
    other = SqliteStore(tmp_path / "other.sqlite3")
    other.create_job("j2", "u2", "articles", ARTICLE, NOW)
    other.close()
    reader.close()
    reader.path = str(tmp_path / "empty.sqlite3")
    sqlite3.connect(reader.path).close()  # a file without the jobs table
    with pytest.raises(Busy, match="no such table"):
        reader.get_job("j1")
    assert reader._conn is None  # dropped: the next read reopens
    reader.path = str(tmp_path / "other.sqlite3")
    assert reader.get_job("j2")["userId"] == "u2"


def test_the_reader_is_read_only(store, reader):
    store.create_job("j1", "u1", "articles", ARTICLE, NOW)
    reader.get_job("j1")
    with pytest.raises(sqlite3.OperationalError, match="readonly|read-only|query_only"):
        reader._conn.execute(f'DELETE FROM "{store.jobs}"')


def test_only_an_sqlite_file_store_gets_a_reader():
    memory = SqliteStore(":memory:")
    try:
        assert SqliteReader.for_store(memory) is None
    finally:
        memory.close()
    assert SqliteReader.for_store(object()) is None  # MongoStore: network reads stay pooled


def expected(api, job_id: str) -> dict:
    """What response_model=models.Job made of the stored job (FastAPI's own pass)."""
    job = api.store.get_job(job_id)
    return models.Job(**job_view(job, api.settings)).model_dump(mode="json")


def test_get_answers_exactly_what_the_response_model_gave(web_api):
    api = web_api()
    queued = api.post("/api/content/generate", ARTICLE, api.as_user("u1")).json()["jobId"]
    done = api.post("/api/content/generate", ARTICLE, api.as_user("u1")).json()["jobId"]
    now = datetime.now(UTC).replace(microsecond=0)  # whole seconds: "...:00Z" in JSON
    api.store.claim(done, user_id="u1", type="articles", params=ARTICLE, message_id="m1",
                    lease_s=60, now=now)
    api.store.progress(done, 50, "half way: ünïcode ✓", now)
    api.store.save_result(done, "generated_content", {"title": "T"}, now)
    for job_id in (queued, done):
        response = api.get(f"/api/content/jobs/{job_id}", api.as_user("u1"))
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.json() == expected(api, job_id)
    assert response.json()["completedAt"].endswith("Z")


def test_a_busy_reader_falls_back_to_the_stores_read(web_api, web_store):
    api = web_api()
    job_id = api.post("/api/content/generate", ARTICLE, api.as_user("u1")).json()["jobId"]
    jobs = api.server.app.state.jobs
    assert api.get(f"/api/content/jobs/{job_id}", api.as_user("u1")).status_code == 200
    if web_store == "sqlite":
        assert isinstance(jobs._reader, SqliteReader)  # the loop read is in use
    else:
        assert jobs._reader is None

    class Refusing:
        calls = 0

        def get_job(self, job_id):
            Refusing.calls += 1
            raise Busy("stub")

        def close(self):
            pass

    jobs._reader = Refusing()
    response = api.get(f"/api/content/jobs/{job_id}", api.as_user("u1"))
    assert response.status_code == 200 and response.json() == expected(api, job_id)
    assert api.get(f"/api/content/jobs/{job_id}", api.as_user("u2")).status_code == 404
    assert Refusing.calls == 2


def test_the_reader_holds_no_snapshot_between_reads(store, reader, tmp_path):
    """A read transaction left open would keep WAL checkpoints from finishing."""
    store.create_job("j1", "u1", "articles", ARTICLE, NOW)
    assert reader.get_job("j1") is not None
    store.progress("j1", 10, "more frames in the WAL", NOW)
    checkpointer = sqlite3.connect(store.path, timeout=0.1)
    try:
        busy, _, _ = checkpointer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        checkpointer.close()
    assert busy == 0
