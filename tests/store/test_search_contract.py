"""Job search and retry (``store/search.py``) on every backend: each filter, the cursor
(no job skipped or repeated across pages), the index each query reads (SQLite's plans),
and ``retry_job``'s compare-and-set."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta

import pytest

from vip_worker.store.sqlite import SqliteStore

T0 = datetime(2025, 1, 15, 10, 30, tzinfo=UTC)
OID = "507f1f77bcf86cd799439011"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def seed(store):
    """a..f: two users, two types, statuses queued, processing, failed; c and d share a
    createdAt (the _id breaks the tie)."""
    for job_id, user, type_, second in [("a", "u1", "articles", 0), ("b", "u2", "images", 1),
                                        ("c", "u1", "images", 2), ("d", "u1", "articles", 2),
                                        ("e", "u2", "articles", 3), ("f", "u1", "articles", 4)]:
        store.create_job(job_id, user, type_, {"n": job_id}, at(second))
    store.claim("d", user_id="u1", type="articles", params={}, message_id="m", lease_s=60,
                now=at(5), delivery="dd")
    store.fail("e", "broken", at(5))


def ids(jobs):
    return [j["_id"] for j in jobs]


def test_each_filter_newest_first(store):
    seed(store)
    assert ids(store.search_jobs()) == ["f", "e", "d", "c", "b", "a"]
    assert ids(store.search_jobs(job_id="c")) == ["c"]
    assert ids(store.search_jobs(job_id="zz")) == []
    assert ids(store.search_jobs(user_id="u1")) == ["f", "d", "c", "a"]
    assert ids(store.search_jobs(status="processing")) == ["d"]
    assert ids(store.search_jobs(type="images")) == ["c", "b"]
    assert ids(store.search_jobs(user_id="u1", type="articles", status="queued")) == ["f", "a"]
    assert ids(store.search_jobs(since=at(2), until=at(4))) == ["e", "d", "c"]
    assert ids(store.search_jobs(user_id="u2", status="failed")) == ["e"]
    assert store.search_jobs(status="nonsense") == []
    assert store.search_jobs(limit=0) == []


def test_found_jobs_leave_their_history_out(store):
    seed(store)
    [job] = store.search_jobs(job_id="d")
    assert "history" not in job and job["status"] == "processing"
    assert store.get_job("d")["history"]


def test_the_cursor_pages_without_a_gap_or_a_repeat(store):
    seed(store)
    seen, after = [], None
    while True:
        page = store.search_jobs(user_id="u1", limit=2, after=after)
        if not page:
            break
        seen += ids(page)
        after = (page[-1]["createdAt"], page[-1]["_id"])
    assert seen == ["f", "d", "c", "a"]
    assert ids(store.search_jobs(after=(at(2), "d"), limit=10)) == ["c", "b", "a"]


def test_object_id_job_ids_are_found(store):
    store.create_job(OID, OID, "articles", {}, T0)
    assert ids(store.search_jobs(job_id=OID)) == [OID]
    assert ids(store.search_jobs(user_id=OID)) == [OID]


def test_retry_job_turns_a_failed_job_queued_afresh(store):
    seed(store)
    store.claim("e", user_id="u2", type="articles", params={}, message_id="m2", lease_s=60,
                now=at(6), delivery="de", redriven=True)
    store.fail("e", "broken again", at(7), delivery="de")
    job = store.retry_job("e", at(8))
    assert (job["status"], job["attempts"], job["error"], job["queuedAt"]) == (
        "queued", 0, None, at(8))
    assert store.get_job("e")["history"][-1]["event"] == "retried"
    assert store.retry_job("e", at(9)) is None  # queued now: the compare-and-set fails
    for job_id in ("a", "d", "missing"):  # queued, processing, no such job
        assert store.retry_job(job_id, at(9)) is None
    assert store.get_job("d")["status"] == "processing"
    claimed = store.claim("e", user_id="u2", type="articles", params={}, message_id="m3",
                          lease_s=60, now=at(10), delivery="de2", redriven=False)
    assert claimed.job["status"] == "processing" and claimed.job["attempts"] == 1


@pytest.mark.parametrize("filters", [
    {"user_id": "u1"}, {"user_id": "u1", "status": "queued"}, {"type": "articles"},
    {"type": "articles", "status": "failed"}, {"status": "queued"}, {},
    {"job_id": "x"}, {"since": T0, "until": at(9)},
])
def test_sqlite_searches_read_an_index(tmp_path, filters):
    store = SqliteStore(tmp_path / "jobs.sqlite3")
    store.create_job("x", "u1", "articles", {}, T0)
    conn = store._connection()
    captured = []
    conn.set_trace_callback(captured.append)
    store.search_jobs(**filters)
    conn.set_trace_callback(None)
    [sql] = [s for s in captured if s.startswith("SELECT")]
    plan = " / ".join(row[3] for row in sqlite3.connect(store.path).execute(
        f"EXPLAIN QUERY PLAN {sql}"))
    # An index finds the rows and gives their order (at most ties sorted: the "RIGHT
    # PART"); a whole sort or a table scan would read every job.
    assert "USING INDEX" in plan and "B-TREE FOR ORDER BY" not in plan, plan
    store.close()
