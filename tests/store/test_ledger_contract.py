"""The job store as the daemon's ledger (``vip_worker.store``), run against every backend:
delivery tokens on claims, lost claims and ``EXHAUSTED``, batch lease renewal, settles
guarded by delivery, ``release``, the orphan queries and ``rescue``.

Then what only one backend can show: SQLite's migration of an older file, MongoDB's
indexes and the app's documents without ``queuedAt``.
"""

from __future__ import annotations

import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import mongomock
import pytest

from vip_worker.store import ClaimOutcome, RescueOutcome
from vip_worker.store.sqlite import SqliteStore

T0 = datetime(2025, 1, 15, 10, 30, tzinfo=UTC)
LEASE_S = 60
CONTENT = "generated_content"
QUEUE = "articles-queue"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def claim(store, job_id="job-1", delivery="d1", message_id="m1", now=T0, lease_s=LEASE_S,
          **extra):
    return store.claim(job_id, user_id="u1", type="articles", params={"topic": "t"},
                       message_id=message_id, lease_s=lease_s, now=now, delivery=delivery,
                       **extra)


def fields(job, *names):
    return tuple(job.get(name) for name in names)


# -- claims: deliveries, lost claims, EXHAUSTED ---------------------------------------


def test_claim_records_delivery_queue_and_counters(store):
    result = claim(store, queue=QUEUE)
    assert result.outcome is ClaimOutcome.CLAIMED
    job = store.get_job("job-1")
    assert fields(job, "delivery", "queue", "lostClaims", "rescues", "queuedAt") == (
        "d1", QUEUE, 0, 0, T0)
    store.requeue("job-1", "transient", at(1), delivery="d1")
    claim(store, delivery="d2", now=at(2))  # a claim naming no queue keeps the known one
    assert fields(store.get_job("job-1"), "delivery", "queue") == ("d2", QUEUE)


def test_create_job_records_queue_and_queued_at(store):
    store.create_job("job-1", "u1", "articles", {}, T0, queue=QUEUE)
    job = store.get_job("job-1")
    assert fields(job, "queue", "queuedAt", "lostClaims", "rescues", "delivery") == (
        QUEUE, T0, 0, 0, None)


def test_second_delivery_of_the_same_message_waits_for_the_first_lease(store):
    claim(store, delivery="d1")
    busy = claim(store, delivery="d2", now=at(10))  # same message_id, another receive
    assert busy.outcome is ClaimOutcome.BUSY and busy.lease_until == at(LEASE_S)
    assert fields(store.get_job("job-1"), "delivery", "attempts") == ("d1", 1)
    taken = claim(store, delivery="d2", now=at(LEASE_S + 1))  # d1's poller died
    assert taken.outcome is ClaimOutcome.CLAIMED
    job = store.get_job("job-1")
    assert fields(job, "delivery", "attempts", "lostClaims", "leaseUntil") == (
        "d2", 2, 1, at(2 * LEASE_S + 1))


def test_the_same_delivery_claiming_again_is_idempotent(store):
    claim(store, delivery="d1")
    again = claim(store, delivery="d1", now=at(10))
    assert again.outcome is ClaimOutcome.CLAIMED
    assert fields(again.job, "attempts", "lostClaims", "startedAt", "leaseUntil") == (
        1, 0, T0, at(10 + LEASE_S))
    late = claim(store, delivery="d1", now=at(500))  # its own lease ran out: still its own
    assert late.outcome is ClaimOutcome.CLAIMED
    assert fields(store.get_job("job-1"), "attempts", "lostClaims") == (1, 0)


def test_without_a_delivery_on_either_side_the_message_id_decides(store):
    claim(store, delivery="d1")
    legacy = claim(store, delivery=None, now=at(10))  # an older caller, same message
    assert legacy.outcome is ClaimOutcome.CLAIMED
    assert fields(legacy.job, "delivery", "attempts", "lostClaims") == (None, 2, 0)
    other = claim(store, delivery="d3", message_id="m2", now=at(20))
    assert other.outcome is ClaimOutcome.BUSY


def test_lost_claims_reaching_max_attempts_exhaust_the_job(store):
    assert claim(store, delivery="d1", max_attempts=2).outcome is ClaimOutcome.CLAIMED
    second = claim(store, delivery="d2", now=at(100), max_attempts=2)
    assert second.outcome is ClaimOutcome.CLAIMED and second.job["lostClaims"] == 1
    third = claim(store, delivery="d3", now=at(200), max_attempts=2)
    assert third.outcome is ClaimOutcome.EXHAUSTED
    job = store.get_job("job-1")
    assert third.job == job
    assert fields(job, "status", "error", "message", "lostClaims", "attempts", "leaseUntil",
                  "delivery") == (
        "failed", "its poller died 2 times while running it",
        "its poller died 2 times while running it", 2, 2, None, "d2")


def test_without_max_attempts_lost_claims_only_count(store):
    for i in range(4):
        assert claim(store, delivery=f"d{i}", now=at(100 * i)).outcome is ClaimOutcome.CLAIMED
    assert fields(store.get_job("job-1"), "lostClaims", "attempts") == (3, 4)


def test_a_redriven_exhausted_job_starts_afresh(store):
    claim(store, delivery="d1", max_attempts=1)
    assert claim(store, delivery="d2", now=at(100), max_attempts=1).outcome is \
        ClaimOutcome.EXHAUSTED
    redriven = claim(store, delivery="d3", now=at(200), max_attempts=1)
    assert redriven.outcome is ClaimOutcome.CLAIMED
    assert fields(redriven.job, "status", "lostClaims", "error") == ("processing", 0, None)


def test_a_claim_exhausted_does_not_touch_a_live_or_completed_job(store):
    claim(store, delivery="d1")
    claim(store, delivery="d2", now=at(100))  # lostClaims 1
    assert claim(store, delivery="d3", now=at(110), max_attempts=1).outcome is \
        ClaimOutcome.BUSY  # d2's lease lives
    store.save_result("job-1", CONTENT, {"title": "x"}, at(120))
    assert claim(store, delivery="d4", now=at(500), max_attempts=1).outcome is \
        ClaimOutcome.COMPLETED


# -- leases renewed in batch ------------------------------------------------------------


def count_writes(backend, store, monkeypatch) -> list[str]:
    """The writes the store sends from now on: SQL UPDATEs, or MongoDB update calls."""
    seen: list[str] = []
    if backend.is_mongo:
        for name in ("update_one", "update_many", "find_one_and_update", "replace_one"):
            original = getattr(mongomock.collection.Collection, name)

            def spy(self, *args, _name=name, _original=original, **kwargs):
                seen.append(_name)
                return _original(self, *args, **kwargs)

            monkeypatch.setattr(mongomock.collection.Collection, name, spy)
    else:
        store._connection().set_trace_callback(
            lambda sql: seen.append("UPDATE") if sql.lstrip().upper().startswith("UPDATE")
            else None)
    return seen


def test_renew_leases_extends_only_held_claims_in_one_write(backend, store, monkeypatch):
    if backend.id == "mongodb-real":
        pytest.skip("counts mongomock's calls")
    held = []
    for i in range(500):
        claim(store, f"job-{i}", delivery=f"d{i}", message_id=f"m{i}")
        held.append((f"job-{i}", f"d{i}"))
    claim(store, "job-0", delivery="other", message_id="m0", now=at(LEASE_S + 1))  # taken over
    store.requeue("job-1", "transient", at(2), delivery="d1")  # settled
    store.save_result("job-2", CONTENT, {"title": "x"}, at(3))  # settled
    writes = count_writes(backend, store, monkeypatch)
    still = store.renew_leases(held + [("missing", "dx")], at(300), now=at(70))
    assert still == {f"job-{i}" for i in range(3, 500)}
    # One write per call (SQLite: one UPDATE per 300 pairs, in one transaction).
    assert writes == (["update_many"] if backend.is_mongo else ["UPDATE", "UPDATE"])
    assert fields(store.get_job("job-499"), "leaseUntil", "updatedAt") == (at(300), at(70))
    assert store.get_job("job-0")["leaseUntil"] == at(2 * LEASE_S + 1)  # the other's, kept
    assert store.get_job("job-1")["leaseUntil"] is None
    assert store.renew_leases([], at(300), now=at(70)) == set()


def test_renew_revives_an_expired_lease_nobody_took(store):
    claim(store, delivery="d1")
    assert store.renew_leases([("job-1", "d1")], at(400), now=at(300)) == {"job-1"}
    assert claim(store, delivery="d2", now=at(350)).outcome is ClaimOutcome.BUSY
    assert store.expired_leases(at(350), 10) == []


# -- settles guarded by delivery ------------------------------------------------------


def test_a_stale_delivery_does_not_settle_the_job(backend, store):
    claim(store, delivery="d1", lease_s=5)
    claim(store, delivery="d2", now=at(10))  # the same message, received again
    store.progress("job-1", 50, "d1: late progress", at(11), delivery="d1")
    store.requeue("job-1", "d1: late transient", at(12), message_id="m1", delivery="d1")
    store.fail("job-1", "d1: late permanent", at(13), message_id="m1", delivery="d1")
    job = store.get_job("job-1")
    assert fields(job, "status", "delivery", "progress", "error", "message") == (
        "processing", "d2", 0, None, "Processing")
    store.progress("job-1", 40, "Generating content...", at(14), delivery="d2")
    assert store.get_job("job-1")["progress"] == 40
    # A result is the job's whoever computed it: saved once, the job completed.
    store.save_result("job-1", CONTENT, {"title": "from d1"}, at(15), delivery="d1")
    store.save_result("job-1", CONTENT, {"title": "from d2"}, at(16), delivery="d2")
    assert store.get_job("job-1")["status"] == "completed"
    assert [d["title"] for d in store.get_content(CONTENT, "job-1")] == ["from d2"]
    assert len(backend.raw(CONTENT)) == 1


def test_the_holding_delivery_settles_the_job(store):
    claim(store, delivery="d1")
    store.requeue("job-1", "transient", at(1), message_id="m1", delivery="d1")
    job = store.get_job("job-1")
    assert fields(job, "status", "queuedAt", "leaseUntil") == ("queued", at(1), None)
    claim(store, delivery="d2", now=at(2))
    store.fail("job-1", "bad request", at(3), message_id="m1", delivery="d2")
    assert fields(store.get_job("job-1"), "status", "error") == ("failed", "bad request")


def test_a_job_never_claimed_under_a_delivery_is_failed_by_any(store):
    store.create_job("job-1", "u1", "articles", {}, T0)
    store.fail("job-1", "invalid payload", at(1), message_id="m1", delivery="d1")
    assert store.get_job("job-1")["status"] == "failed"


def test_complete_completes_only_for_the_holding_delivery(backend, store):
    claim(store, delivery="d1")
    assert store.complete("job-1", at(1), delivery="d2") is False
    assert store.get_job("job-1")["status"] == "processing"
    assert store.complete("job-1", at(2), delivery="d1") is True
    job = store.get_job("job-1")
    assert fields(job, "status", "progress", "leaseUntil", "completedAt", "error") == (
        "completed", 100, None, at(2), None)
    assert store.get_content(CONTENT, "job-1") == []  # no content: the handler's own
    assert store.complete("job-1", at(3), delivery="d1") is False  # completed already
    assert store.get_job("job-1")["completedAt"] == at(2)
    assert store.complete("missing", at(4), delivery="d1") is False


# -- release ----------------------------------------------------------------------------


def test_release_refunds_the_attempt_only_for_the_holder(store):
    claim(store, delivery="d1")
    assert store.release("job-1", "d2", at(1), "not mine") is False
    assert fields(store.get_job("job-1"), "status", "attempts") == ("processing", 1)
    assert store.release("job-1", "d1", at(2), "Waiting for quota") is True
    job = store.get_job("job-1")
    assert fields(job, "status", "attempts", "leaseUntil", "message", "queuedAt",
                  "updatedAt", "progress") == (
        "queued", 0, None, "Waiting for quota", at(2), at(2), 0)
    assert store.release("job-1", "d1", at(3), "again") is False  # no longer held
    assert claim(store, delivery="d3", now=at(4)).job["attempts"] == 1
    assert store.release("missing", "d1", at(5), "nothing") is False


# -- orphans: the sweep's queries and rescue --------------------------------------------


def test_expired_leases_oldest_first_within_limit(store):
    for job_id, lease_s in (("a", 30), ("b", 60), ("c", 10), ("live", 500)):
        claim(store, job_id, delivery=f"d-{job_id}", lease_s=lease_s)
    store.create_job("queued", "u1", "articles", {}, T0)
    claim(store, "done", delivery="d-done", lease_s=5)
    store.save_result("done", CONTENT, {"title": "x"}, at(1))
    assert [j["_id"] for j in store.expired_leases(at(100), 10)] == ["c", "a", "b"]
    assert [j["_id"] for j in store.expired_leases(at(100), 2)] == ["c", "a"]
    assert [j["_id"] for j in store.expired_leases(at(20), 10)] == ["c"]
    assert store.expired_leases(at(100), 0) == []


def test_stale_queued_oldest_first_within_limit(store):
    for i, job_id in enumerate(["j1", "j2", "j3"]):
        store.create_job(job_id, "u1", "articles", {}, at(10 * i))
    claim(store, "j2", now=at(30))
    store.requeue("j2", "transient", at(40), delivery="d1")  # queued again at 40
    claim(store, "busy", delivery="d9", message_id="m9", now=at(0))
    assert [j["_id"] for j in store.stale_queued(at(25), 10)] == ["j1", "j3"]
    assert [j["_id"] for j in store.stale_queued(at(50), 10)] == ["j1", "j3", "j2"]
    assert [j["_id"] for j in store.stale_queued(at(50), 1)] == ["j1"]
    assert store.stale_queued(at(50), 0) == []


def test_one_of_two_sweepers_rescues_an_expired_lease(backend):
    one, two = backend.new_store(), backend.new_store()
    claim(one, delivery="d1", queue=QUEUE)
    (seen,) = one.expired_leases(at(100), 10)
    (also_seen,) = two.expired_leases(at(100), 10)
    outcomes = [s.rescue(job, at(101), resend=True, reason="lease expired", max_attempts=3)
                for s, job in ((one, seen), (two, also_seen))]
    assert outcomes == [RescueOutcome.RESEND, None] and outcomes[0] == "resend"
    job = one.get_job("job-1")
    assert fields(job, "status", "rescues", "rescuedAt", "queuedAt", "message", "leaseUntil",
                  "lostClaims", "attempts", "queue") == (
        "queued", 1, at(101), at(101), "lease expired", None, 1, 1, QUEUE)
    # The stale holder learns it lost the job, and cannot settle it.
    assert one.renew_leases([("job-1", "d1")], at(500), now=at(102)) == set()
    one.fail("job-1", "d1: late failure", at(103), delivery="d1")
    assert one.get_job("job-1")["status"] == "queued"


def test_one_of_two_sweepers_rescues_a_stale_queued_job(backend):
    one, two = backend.new_store(), backend.new_store()
    one.create_job("job-1", "u1", "articles", {"topic": "t"}, T0, queue=QUEUE)
    (seen,) = one.stale_queued(at(600), 10)
    assert one.rescue(seen, at(601), resend=True, reason="message lost",
                      max_attempts=3) is RescueOutcome.RESEND
    assert two.rescue(seen, at(601), resend=True, reason="message lost",
                      max_attempts=3) is None
    job = one.get_job("job-1")
    assert fields(job, "status", "rescues", "queuedAt", "lostClaims") == (
        "queued", 1, at(601), 0)
    assert one.stale_queued(at(600), 10) == []  # rescued: fresh again


def test_rescue_loses_to_a_change_since_the_sweeper_looked(store):
    claim(store, delivery="d1")
    (seen,) = store.expired_leases(at(100), 10)
    store.renew_leases([("job-1", "d1")], at(400), now=at(100))  # the holder came back
    assert store.rescue(seen, at(101), resend=True, reason="x", max_attempts=3) is None
    assert store.get_job("job-1")["status"] == "processing"
    live = store.get_job("job-1")  # not an orphan at all: nobody wins
    assert store.rescue(live, at(101), resend=True, reason="x", max_attempts=3) is None


def test_rescue_fails_a_job_whose_attempts_are_spent(store):
    claim(store, delivery="d1")
    claim(store, delivery="d2", now=at(100))
    (seen,) = store.expired_leases(at(200), 10)
    assert store.rescue(seen, at(201), resend=True, reason="lease expired",
                        max_attempts=2) is RescueOutcome.FAILED
    job = store.get_job("job-1")
    assert fields(job, "status", "error", "message", "rescues", "leaseUntil") == (
        "failed", "lease expired; gave up after 2 attempts",
        "lease expired; gave up after 2 attempts", 0, None)


def test_rescue_without_resend_fails_the_job(store):
    store.create_job("job-1", "u1", "articles", {}, T0)  # no queue known
    (seen,) = store.stale_queued(at(600), 10)
    assert store.rescue(seen, at(601), resend=False, reason="no queue to re-send to",
                        max_attempts=3) == "failed"
    assert store.get_job("job-1")["error"] == "no queue to re-send to; gave up after 0 attempts"


def test_rescue_refuses_a_settled_job(store):
    claim(store)
    store.save_result("job-1", CONTENT, {"title": "x"}, at(1))
    with pytest.raises(ValueError, match="completed"):
        store.rescue(store.get_job("job-1"), at(2), resend=True, reason="x", max_attempts=3)


def test_a_rescued_lost_claim_counts_toward_exhaustion(store):
    claim(store, delivery="d1")
    (seen,) = store.expired_leases(at(100), 10)
    store.rescue(seen, at(100), resend=True, reason="lease expired", max_attempts=5)
    resent = claim(store, delivery="d2", now=at(101), max_attempts=1)
    assert resent.outcome is ClaimOutcome.EXHAUSTED
    assert resent.job["error"] == "its poller died 1 times while running it"


def test_threads_of_two_stores_rescue_an_orphan_once(backend):
    """SQLite: two stores on one file, serialized by its write lock. mongomock serializes
    writes itself, so there it checks the filter; atomicity needs mongodb-real."""
    stores = [backend.new_store(), backend.new_store()]
    claim(stores[0], delivery="d1")
    (seen,) = stores[0].expired_leases(at(100), 10)
    workers = 8
    barrier = threading.Barrier(workers)

    def sweep(i: int):
        barrier.wait()
        return stores[i % 2].rescue(seen, at(101), resend=True, reason="lease expired",
                                    max_attempts=3)

    with ThreadPoolExecutor(workers) as pool:
        outcomes = list(pool.map(sweep, range(workers)))
    assert outcomes.count(RescueOutcome.RESEND) == 1 and outcomes.count(None) == workers - 1
    assert stores[1].get_job("job-1")["rescues"] == 1


# -- SQLite: a file from before the ledger ----------------------------------------------

OLD_DOC_PROCESSING = ('{"_id":"old-1","userId":"u1","type":"articles","status":"processing",'
                      '"progress":10,"message":"Processing","attempts":1,"error":null,'
                      '"createdAt":{"$date":"2025-01-15T10:30:00.000Z"},'
                      '"updatedAt":{"$date":"2025-01-15T10:30:00.000Z"},'
                      '"startedAt":{"$date":"2025-01-15T10:30:00.000Z"},"completedAt":null,'
                      '"params":{},"messageId":"m1",'
                      '"leaseUntil":{"$date":"2025-01-15T10:31:00.000Z"}}')
OLD_DOC_QUEUED = ('{"_id":"old-2","userId":"u1","type":"articles","status":"queued",'
                  '"progress":0,"message":"Queued","attempts":0,"error":null,'
                  '"createdAt":{"$date":"2025-01-15T10:30:05.000Z"},'
                  '"updatedAt":{"$date":"2025-01-15T10:30:05.000Z"},"startedAt":null,'
                  '"completedAt":null,"params":{},"messageId":null,"leaseUntil":null}')


def make_old_file(path) -> None:
    """The jobs table, its indexes and two rows as the store wrote them before the ledger."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute('CREATE TABLE "jobs" (id TEXT PRIMARY KEY, status TEXT NOT NULL, '
                 "created_at TEXT NOT NULL, doc TEXT NOT NULL)")
    conn.execute('CREATE INDEX "jobs_status_created" ON "jobs" (status, created_at)')
    conn.execute('CREATE INDEX "jobs_created" ON "jobs" (created_at)')
    for name in ("generated_content", "media"):
        conn.execute(f'CREATE TABLE "{name}" (id TEXT PRIMARY KEY, job_id TEXT NOT NULL '
                     "UNIQUE, created_at TEXT NOT NULL, doc TEXT NOT NULL)")
    conn.executemany("INSERT INTO jobs (id, status, created_at, doc) VALUES (?, ?, ?, ?)", [
        ("old-1", "processing", "2025-01-15T10:30:00.000Z", OLD_DOC_PROCESSING),
        ("old-2", "queued", "2025-01-15T10:30:05.000Z", OLD_DOC_QUEUED)])
    conn.close()


def test_sqlite_file_from_before_the_ledger_is_migrated_on_open(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    make_old_file(path)
    store = SqliteStore(path)
    conn = sqlite3.connect(path)
    try:
        columns = {row[1] for row in conn.execute('PRAGMA table_xinfo("jobs")')}
        indexes = {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index'")}
    finally:
        conn.close()
    assert {"lease_until", "delivery", "queued_at"} <= columns
    assert {"jobs_status_lease", "jobs_status_queued"} <= indexes
    assert [j["_id"] for j in store.expired_leases(at(100), 10)] == ["old-1"]
    assert [j["_id"] for j in store.stale_queued(at(100), 10)] == ["old-2"]  # by createdAt
    (seen,) = store.expired_leases(at(100), 10)
    assert store.rescue(seen, at(100), resend=True, reason="lease expired",
                        max_attempts=3) is RescueOutcome.RESEND
    assert fields(store.get_job("old-1"), "status", "lostClaims", "rescues") == (
        "queued", 1, 1)
    store.close()
    SqliteStore(path).close()  # opening it again: nothing left to migrate


def test_sqlite_columns_follow_a_document_written_the_old_way(tmp_path):
    """A poller still running the previous version rewrites only ``doc`` and ``status``:
    the generated columns follow, so the sweep never sees a stale lease."""
    path = tmp_path / "jobs.sqlite3"
    store = SqliteStore(path)
    claim(store, delivery="d1", lease_s=10)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        doc = OLD_DOC_PROCESSING.replace('"old-1"', '"job-1"').replace(
            "10:31:00.000Z", "11:30:00.000Z")  # the old code's claim: a lease an hour on
        conn.execute("INSERT INTO jobs (id, status, created_at, doc) VALUES (?, ?, ?, ?) "
                     "ON CONFLICT(id) DO UPDATE SET status = excluded.status, "
                     "doc = excluded.doc", ("job-1", "processing", "x", doc))
    finally:
        conn.close()
    assert store.expired_leases(at(100), 10) == []
    store.close()


def test_sqlite_renews_in_chunks_under_the_oldest_host_parameter_limit(tmp_path):
    store = SqliteStore(tmp_path / "jobs.sqlite3")
    # SQLite before 3.32 allowed 999 host parameters per statement.
    store._connection().setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
    held = [(f"job-{i}", f"d{i}") for i in range(700)]
    for job_id, delivery in held:
        claim(store, job_id, delivery=delivery, message_id=job_id)
    assert len(store.renew_leases(held, at(300), now=at(10))) == 700
    store.close()


# -- MongoDB: indexes and the app's documents -----------------------------------------------


def test_mongo_creates_the_sweep_indexes(mongo_backend):
    mongo_backend.new_store()
    keys = [index["key"] for index in mongo_backend.db["jobs"].index_information().values()]
    assert [("status", 1), ("leaseUntil", 1)] in keys
    assert [("status", 1), ("queuedAt", 1)] in keys


def test_mongo_stale_queued_finds_the_apps_jobs_without_queued_at(mongo_backend):
    store = mongo_backend.new_store()
    jobs = mongo_backend.db["jobs"]
    jobs.insert_one({"_id": "app-old", "userId": "u1", "status": "queued", "createdAt": T0})
    jobs.insert_one({"_id": "app-new", "userId": "u1", "status": "queued",
                     "createdAt": at(500)})
    store.create_job("ours", "u1", "articles", {}, at(10))
    assert [j["_id"] for j in store.stale_queued(at(100), 10)] == ["app-old", "ours"]
    (app_job, _) = store.stale_queued(at(100), 10)
    assert store.rescue(app_job, at(101), resend=True, reason="message lost",
                        max_attempts=3) is RescueOutcome.RESEND
    assert store.get_job("app-old")["queuedAt"] == at(101)


def test_a_deferral_is_queued_from_when_its_message_is_due_again(store):
    claim(store, delivery="d1")
    assert store.release("job-1", "d1", at(2), "quota:generation:rpm", event="deferred",
                         delay_s=600) is True
    job = store.get_job("job-1")
    assert fields(job, "status", "attempts", "queuedAt") == ("queued", 0, at(602))
    assert job["history"][-1]["event"] == "deferred"
    # The lifeline's stale-queued sweep does not take it for lost while it waits.
    assert store.stale_queued(at(300), 10) == []
    assert [j["_id"] for j in store.stale_queued(at(700), 10)] == ["job-1"]


def test_mongo_release_never_takes_attempts_below_zero(mongo_backend):
    store = mongo_backend.new_store()
    mongo_backend.db["jobs"].insert_one({"_id": "odd", "status": "processing",
                                         "delivery": "d1", "createdAt": T0})  # no attempts
    assert store.release("odd", "d1", at(1), "Waiting for quota") is True
    assert fields(store.get_job("odd"), "status", "attempts") == ("queued", 0)


# -- a failed job runs again only from a redrive of its dead letter -----------------------


def test_a_failed_job_is_not_claimed_by_a_message_that_was_not_redriven(store):
    claim(store)
    store.fail("job-1", "bad request", at(1), delivery="d1")
    result = claim(store, delivery="d2", now=at(2), redriven=False)
    assert result.outcome is ClaimOutcome.FAILED
    job = store.get_job("job-1")
    assert fields(job, "status", "attempts", "delivery", "error") == (
        "failed", 1, "d1", "bad request")
    again = claim(store, delivery="d3", now=at(3), redriven=True)  # a redrive: afresh
    assert again.outcome is ClaimOutcome.CLAIMED
    assert fields(store.get_job("job-1"), "status", "attempts") == ("processing", 1)


def test_redriven_false_claims_a_queued_job_as_before(store):
    assert claim(store, redriven=False).outcome is ClaimOutcome.CLAIMED


def test_a_rescue_with_a_hold_keeps_other_claims_busy_until_it_ends(store):
    claim(store)
    job = store.get_job("job-1")
    assert store.rescue(job, at(LEASE_S + 1), resend=True, reason="lease expired",
                        max_attempts=3, hold_s=30) == RescueOutcome.RESEND
    held = store.get_job("job-1")
    assert fields(held, "status", "delivery", "leaseUntil") == (
        "queued", "lifeline", at(LEASE_S + 31))
    busy = claim(store, delivery="d2", message_id="m2", now=at(LEASE_S + 10))
    assert (busy.outcome, busy.lease_until) == (ClaimOutcome.BUSY, at(LEASE_S + 31))
    assert store.get_job("job-1")["status"] == "queued"
    taken = claim(store, delivery="d2", message_id="m2", now=at(LEASE_S + 32))
    assert taken.outcome is ClaimOutcome.CLAIMED
    assert fields(taken.job, "delivery", "attempts", "lostClaims") == ("d2", 2, 1)


def test_requeue_and_release_leave_no_hold(store):
    claim(store)
    store.requeue("job-1", "transient", at(1), delivery="d1")
    assert claim(store, delivery="d2", now=at(2)).outcome is ClaimOutcome.CLAIMED
    assert store.release("job-1", "d2", at(3), "quota")
    assert claim(store, delivery="d3", now=at(4)).outcome is ClaimOutcome.CLAIMED


def test_a_requeue_with_a_delay_is_queued_from_when_its_message_is_visible_again(store):
    claim(store)
    store.requeue("job-1", "retry later", at(10), delivery="d1", delay_s=7200)
    assert store.get_job("job-1")["queuedAt"] == at(7210)
    assert store.stale_queued(at(7200), 10) == []  # still waiting out its delay
    assert [j["_id"] for j in store.stale_queued(at(7211), 10)] == ["job-1"]


# -- a settle lost to a store outage is no poller death ----------------------------------


def test_a_claim_after_a_settle_lost_to_an_outage_counts_no_lost_claim(store):
    claim(store)  # d1 ran the handler; its settle never reached the store
    live = claim(store, delivery="d2", now=at(10), unsettled="d1")  # lease still live
    assert live.outcome is ClaimOutcome.CLAIMED
    assert fields(live.job, "delivery", "attempts", "lostClaims") == ("d2", 2, 0)
    later = claim(store, delivery="d3", now=at(LEASE_S + 100), unsettled="d2")
    assert fields(later.job, "delivery", "attempts", "lostClaims") == ("d3", 3, 0)


def test_unsettled_names_only_the_same_messages_earlier_delivery(store):
    claim(store)
    other = claim(store, delivery="d2", message_id="m2", now=at(10), unsettled="d1")
    assert other.outcome is ClaimOutcome.BUSY  # another message: the lease stands
    wrong = claim(store, delivery="d3", now=at(LEASE_S + 100), unsettled="dx")
    assert fields(wrong.job, "lostClaims") == (1,)  # expired and not ours: a death
