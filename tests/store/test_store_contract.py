"""The job store's contract (``vip_worker.store``), run against every backend.

Backends (see tests/fixtures/store.py): ``sqlite``, ``mongodb-standin-mongomock`` (mongomock, a
stand-in for MongoDB) and ``mongodb-real`` (only with ``VIP_TEST_MONGODB_URI``).
Then what only one backend can show: SQLite across processes, failures mapped to
``StoreUnavailable``, and the factory.
"""

from __future__ import annotations

import multiprocessing
import socket
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import mongomock
import pytest
from bson import ObjectId
from pymongo.errors import (
    AutoReconnect,
    ConnectionFailure,
    NetworkTimeout,
    OperationFailure,
    ServerSelectionTimeoutError,
)

from vip_worker import config
from vip_worker.errors import ConfigError
from vip_worker.store import ClaimOutcome, StoreUnavailable
from vip_worker.store import mongo as mongo_module
from vip_worker.store.factory import open_store, sqlite_path
from vip_worker.store.mongo import MongoStore, uri_database
from vip_worker.store.sqlite import SqliteStore

T0 = datetime(2025, 1, 15, 10, 30, tzinfo=UTC)
LEASE_S = 60
OID = "507f1f77bcf86cd799439011"  # a jobId as the existing app makes them
CONTENT, MEDIA = "generated_content", "media"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def claim(store, job_id="job-1", message_id="m1", now=T0, lease_s=LEASE_S):
    return store.claim(job_id, user_id="u1", type="articles", params={"topic": "t"},
                       message_id=message_id, lease_s=lease_s, now=now)


# -- the contract, on every backend --------------------------------------------------


def test_create_job_is_idempotent(store):
    assert store.create_job("job-1", "u1", "articles", {"topic": "t"}, T0) is True
    assert store.create_job("job-1", "u2", "images", {"topic": "other"}, at(5)) is False
    job = store.get_job("job-1")
    assert job["_id"] == "job-1" and job["userId"] == "u1" and job["type"] == "articles"
    assert job["status"] == "queued" and job["attempts"] == 0 and job["progress"] == 0
    assert job["params"] == {"topic": "t"}
    assert job["createdAt"] == T0 and job["createdAt"].utcoffset() == timedelta(0)
    assert store.get_job("missing") is None


def test_list_jobs_newest_first_with_status_filter(store):
    for i, job_id in enumerate(["a", "b", "c"]):
        store.create_job(job_id, "u1", "articles", {}, at(i))
    claim(store, "b")
    assert [j["_id"] for j in store.list_jobs()] == ["c", "b", "a"]
    assert [j["_id"] for j in store.list_jobs(status="queued")] == ["c", "a"]
    assert [j["_id"] for j in store.list_jobs(status="processing")] == ["b"]
    assert store.list_jobs(status="completed") == []
    assert [j["_id"] for j in store.list_jobs(limit=2)] == ["c", "b"]


def test_user_jobs_pages_one_users_jobs_newest_first(store):
    # Two jobs share a createdAt: the _id breaks the tie, so no page skips or repeats one.
    for job_id, user, second in [("a", "u1", 0), ("b", "u2", 1), ("c", "u1", 1),
                                 ("d", "u1", 1), ("e", "u1", 2)]:
        store.create_job(job_id, user, "articles", {}, at(second))
    claim(store, "c")
    assert [j["_id"] for j in store.user_jobs("u1")] == ["e", "d", "c", "a"]
    first = store.user_jobs("u1", limit=2)
    assert [j["_id"] for j in first] == ["e", "d"]
    last = first[-1]
    rest = store.user_jobs("u1", limit=2, after=(last["createdAt"], last["_id"]))
    assert [j["_id"] for j in rest] == ["c", "a"]
    assert [j["_id"] for j in store.user_jobs("u1", status="processing")] == ["c"]
    assert store.user_jobs("u3") == [] and store.user_jobs("u1", status="bogus") == []
    assert store.user_jobs("u1", limit=0) == []


def test_mongo_indexes_user_jobs(mongo_backend):
    mongo_backend.new_store()
    keys = [index["key"] for index in mongo_backend.db["jobs"].index_information().values()]
    assert [("userId", 1), ("createdAt", -1), ("_id", -1)] in keys


def test_claim_queued_job(store):
    store.create_job("job-1", "u1", "articles", {"topic": "t"}, T0)
    result = claim(store, now=at(1))
    assert result.outcome is ClaimOutcome.CLAIMED and result.lease_until is None
    for job in (result.job, store.get_job("job-1")):
        assert job["status"] == "processing" and job["attempts"] == 1
        assert job["startedAt"] == at(1) and job["startedAt"].tzinfo is not None
        assert job["messageId"] == "m1" and job["leaseUntil"] == at(1 + LEASE_S)
        assert job["error"] is None and job["progress"] == 0


def test_claim_of_completed_job_changes_nothing(store):
    claim(store)
    store.save_result("job-1", CONTENT, {"title": "x"}, at(1))
    before = store.get_job("job-1")
    result = claim(store, message_id="m2", now=at(2))
    assert result.outcome is ClaimOutcome.COMPLETED
    assert store.get_job("job-1") == before


def test_claim_under_another_delivery_live_lease_is_busy(store):
    claim(store, message_id="m1")
    result = claim(store, message_id="m2", now=at(10))
    assert result.outcome is ClaimOutcome.BUSY and result.lease_until == at(LEASE_S)
    job = store.get_job("job-1")
    assert job["messageId"] == "m1" and job["attempts"] == 1


def test_redelivery_of_same_message_claims_again(store):
    claim(store, message_id="m1")
    result = claim(store, message_id="m1", now=at(10))
    assert result.outcome is ClaimOutcome.CLAIMED
    assert result.job["attempts"] == 2 and result.job["startedAt"] == T0  # first claim's
    assert result.job["leaseUntil"] == at(10 + LEASE_S)


def test_expired_lease_is_claimed(store):
    claim(store, message_id="m1")
    result = claim(store, message_id="m2", now=at(LEASE_S + 1))
    assert result.outcome is ClaimOutcome.CLAIMED
    assert result.job["messageId"] == "m2" and result.job["attempts"] == 2


def test_claim_of_missing_job_creates_it_processing(store):
    result = store.claim("new-job", user_id="u9", type="images", params={"prompt": "p"},
                         message_id="m1", lease_s=LEASE_S, now=T0)
    assert result.outcome is ClaimOutcome.CLAIMED
    job = store.get_job("new-job")
    assert job["userId"] == "u9" and job["type"] == "images" and job["params"] == {"prompt": "p"}
    assert job["status"] == "processing" and job["attempts"] == 1
    assert job["createdAt"] == T0 and job["startedAt"] == T0
    assert job == result.job


def test_claim_of_failed_job_runs_it_again(store):
    claim(store)
    store.fail("job-1", "generation refused", at(1))
    result = claim(store, message_id="m2", now=at(2))
    assert result.outcome is ClaimOutcome.CLAIMED
    assert result.job["status"] == "processing" and result.job["error"] is None
    # Redriven: it starts afresh, with max_attempts again (the daemon counts from here).
    assert result.job["attempts"] == 1


def test_progress_only_while_processing(store):
    store.create_job("job-1", "u1", "articles", {}, T0)
    store.progress("job-1", 30, "Too early", at(1))
    assert store.get_job("job-1")["progress"] == 0
    claim(store, now=at(2))
    store.progress("job-1", 40, "Generating content...", at(3))
    job = store.get_job("job-1")
    assert (job["progress"], job["message"], job["updatedAt"]) == (
        40, "Generating content...", at(3))
    store.save_result("job-1", CONTENT, {"title": "x"}, at(4))
    store.progress("job-1", 50, "Too late", at(5))
    assert store.get_job("job-1")["progress"] == 100
    store.progress("missing", 10, "nobody", at(6))  # no-op, no error


def test_save_result_twice_leaves_one_content_document(backend, store):
    claim(store)
    store.save_result("job-1", CONTENT, {"title": "first", "body": "b"}, at(1))
    store.save_result("job-1", CONTENT, {"title": "second"}, at(2))  # a redelivery
    docs = store.get_content(CONTENT, "job-1")
    assert len(docs) == 1 and len(backend.raw(CONTENT)) == 1
    doc = docs[0]
    assert doc["title"] == "second" and doc["body"] == "b"
    assert doc["jobId"] == "job-1" and doc["userId"] == "u1" and doc["createdAt"] == at(1)
    assert isinstance(doc["_id"], str)
    job = store.get_job("job-1")
    assert job["status"] == "completed" and job["progress"] == 100
    assert job["completedAt"] == at(2) and job["error"] is None
    assert store.get_content(MEDIA, "job-1") == []


def test_save_result_to_media_collection(store):
    claim(store, "img-1")
    store.save_result("img-1", MEDIA, {"url": "https://example.invalid/i.png"}, at(1))
    assert [d["url"] for d in store.get_content(MEDIA, "img-1")] == [
        "https://example.invalid/i.png"]
    assert store.get_content(CONTENT, "img-1") == []


def test_requeue_and_fail_record_the_error(store):
    claim(store, "job-1")
    store.requeue("job-1", "service unavailable", at(1))
    job = store.get_job("job-1")
    assert (job["status"], job["error"], job["message"]) == (
        "queued", "service unavailable", "service unavailable")
    assert job["updatedAt"] == at(1)
    claim(store, "job-1", message_id="m2", now=at(2))
    store.fail("job-1", "bad request", at(3))
    job = store.get_job("job-1")
    assert (job["status"], job["error"]) == ("failed", "bad request")


def test_completed_job_is_never_requeued_or_failed(store):
    claim(store)
    store.save_result("job-1", CONTENT, {"title": "x"}, at(1))
    store.requeue("job-1", "late retry", at(2))
    store.fail("job-1", "late failure", at(3))
    job = store.get_job("job-1")
    assert job["status"] == "completed" and job["error"] is None


def test_a_failed_job_is_never_requeued(store):
    # A twin delivery failing transiently must not undo the failure its twin recorded.
    claim(store)
    store.fail("job-1", "bad request", at(1))
    store.requeue("job-1", "late transient error", at(2))
    job = store.get_job("job-1")
    assert (job["status"], job["error"]) == ("failed", "bad request")


def test_only_the_message_holding_the_claim_settles_the_job(store):
    # m1's lease ran out while its handler still ran; a second message for the same
    # job (a duplicate send) claimed it. m1's late failure must not touch the job.
    claim(store, "job-1", message_id="m1", now=T0, lease_s=5)
    claim(store, "job-1", message_id="m2", now=at(10))
    store.requeue("job-1", "m1: late transient error", at(11), message_id="m1")
    store.fail("job-1", "m1: late permanent error", at(12), message_id="m1")
    job = store.get_job("job-1")
    assert (job["status"], job["messageId"], job["error"]) == ("processing", "m2", None)
    store.requeue("job-1", "m2: transient", at(13), message_id="m2")
    assert store.get_job("job-1")["status"] == "queued"
    claim(store, "job-1", message_id="m2", now=at(14))
    store.fail("job-1", "m2: bad request", at(15), message_id="m2")
    assert store.get_job("job-1")["status"] == "failed"


def test_a_message_refused_before_any_claim_still_fails_the_job(store):
    # A bad payload or too many receives: the job is failed before any message claimed
    # it, so no messageId is stored; the failure must still land (or the job stays
    # "queued" for ever).
    store.create_job("job-1", "u1", "articles", {"topic": "t"}, T0)
    store.fail("job-1", "invalid payload: no prompt", at(1), message_id="m1")
    job = store.get_job("job-1")
    assert (job["status"], job["error"]) == ("failed", "invalid payload: no prompt")


def test_object_id_job_ids_round_trip_as_strings(backend, store):
    claim(store, OID)
    store.save_result(OID, CONTENT, {"title": "x"}, at(1))
    claim(store, "not-an-object-id")
    assert store.get_job(OID)["_id"] == OID
    assert [j["_id"] for j in store.list_jobs()].count(OID) == 1
    assert store.get_content(CONTENT, OID)[0]["jobId"] == OID
    raw_ids = {str(doc["_id"]): doc["_id"] for doc in backend.raw("jobs")}
    (content,) = backend.raw(CONTENT)
    if backend.is_mongo:  # stored the way the existing app stores them
        assert isinstance(raw_ids[OID], ObjectId) and isinstance(content["jobId"], ObjectId)
        assert raw_ids["not-an-object-id"] == "not-an-object-id"
        assert content["userId"] == "u1"  # as given: a string
    else:
        assert raw_ids[OID] == OID and content["jobId"] == OID


def test_threads_sharing_a_store_claim_a_job_once(store):
    """Handler threads of one poller racing. mongomock serializes writes with a lock of
    its own, so there it checks our retry paths; MongoDB's atomicity needs mongodb-real."""
    store.create_job("job-1", "u1", "articles", {}, T0)
    workers = 8
    barrier = threading.Barrier(workers)

    def race(job_id: str, i: int) -> ClaimOutcome:
        barrier.wait()
        return claim(store, job_id, message_id=f"m{i}").outcome

    with ThreadPoolExecutor(workers) as pool:
        for job_id in ("job-1", "missing-job"):  # an existing job, then one to create
            outcomes = list(pool.map(race, [job_id] * workers, range(workers)))
            assert outcomes.count(ClaimOutcome.CLAIMED) == 1, (job_id, outcomes)
            assert outcomes.count(ClaimOutcome.BUSY) == workers - 1
            assert store.get_job(job_id)["attempts"] == 1


# -- what only MongoDB has: the existing app's documents ------------------------------


def test_mongo_claims_a_job_the_app_created(mongo_backend):
    store = mongo_backend.new_store()
    oid = ObjectId()
    mongo_backend.db["jobs"].insert_one({"_id": oid, "userId": "u1", "status": "queued",
                                         "topic": "Fantasy Football", "createdAt": T0})
    result = claim(store, str(oid), now=at(1))
    assert result.outcome is ClaimOutcome.CLAIMED
    job = store.get_job(str(oid))
    assert job["_id"] == str(oid) and job["topic"] == "Fantasy Football"
    assert job["attempts"] == 1 and job["startedAt"] == at(1)


def test_mongo_processing_job_without_lease_is_claimable(mongo_backend):
    """The app's own worker marked it processing with no lease: nobody holds it for us."""
    store = mongo_backend.new_store()
    mongo_backend.db["jobs"].insert_one({"_id": ObjectId(OID), "status": "processing",
                                         "createdAt": T0})
    assert claim(store, OID).outcome is ClaimOutcome.CLAIMED


@pytest.mark.parametrize("uri, expected", [
    ("mongodb://127.0.0.1:27017/appdb", "appdb"),
    ("mongodb://user:p%40ss@h1:1,h2:2/app%5Fdb?replicaSet=rs0", "app_db"),
    ("mongodb+srv://user:pw@cluster.example.invalid/?retryWrites=true", ""),
    ("mongodb://127.0.0.1", ""),
])
def test_uri_database(uri, expected):
    assert uri_database(uri) == expected


# -- SQLite across processes --------------------------------------------------------


def claim_in_child(path, job_ids, message_id, barrier, results):
    """A poller process: its own store, opened after fork; one barrier per claim."""
    try:
        barrier.wait()
        store = SqliteStore(path)  # both children open (and maybe create) the file at once
        for job_id in job_ids:
            barrier.wait()
            results.put((job_id, claim(store, job_id, message_id=message_id).outcome.value))
        store.close()
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the test
        results.put(("error", repr(exc)))


@pytest.mark.parametrize("existing", [False, True], ids=["missing-jobs", "queued-jobs"])
def test_sqlite_processes_claim_a_job_once(tmp_path, existing):
    path = str(tmp_path / "jobs.sqlite3")
    job_ids = [f"job-{i}" for i in range(10)]
    if existing:
        store = SqliteStore(path)
        for job_id in job_ids:
            store.create_job(job_id, "u1", "articles", {}, T0)
        store.close()  # closed before fork: a connection never crosses it
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(2, timeout=20), ctx.Queue()
    children = [ctx.Process(target=claim_in_child, args=(path, job_ids, m, barrier, results))
                for m in ("m1", "m2")]
    for child in children:
        child.start()
    outcomes = [results.get(timeout=30) for _ in range(2 * len(job_ids))]
    for child in children:
        child.join(timeout=10)
    assert not [o for o in outcomes if o[0] == "error"], outcomes
    for job_id in job_ids:
        mine = sorted(outcome for j, outcome in outcomes if j == job_id)
        assert mine == ["busy", "claimed"], (job_id, mine)


def use_inherited_store(store, results):
    try:
        results.put(claim(store, "child-job").outcome.value)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the test
        results.put(repr(exc))


def test_sqlite_store_inherited_over_fork_opens_its_own_connection(tmp_path):
    store = SqliteStore(tmp_path / "jobs.sqlite3")
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    child = ctx.Process(target=use_inherited_store, args=(store, results))
    child.start()
    assert results.get(timeout=30) == "claimed"
    child.join(timeout=10)
    assert store.get_job("child-job")["status"] == "processing"  # the parent's still works
    store.close()


# -- failures -> StoreUnavailable ----------------------------------------------------


def test_sqlite_path_that_is_a_directory_is_unavailable(tmp_path):
    with pytest.raises(StoreUnavailable, match="unable to open"):
        SqliteStore(tmp_path)


def test_sqlite_parent_that_is_a_file_is_unavailable(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreUnavailable):
        SqliteStore(tmp_path / "file" / "jobs.sqlite3")


def test_sqlite_write_lock_held_elsewhere_is_unavailable_then_recovers(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    store = SqliteStore(path, busy_timeout_s=0.1)
    store.create_job("job-1", "u1", "articles", {}, T0)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process mid-write, for too long
    try:
        with pytest.raises(StoreUnavailable, match="locked"):
            claim(store)
        assert store.get_job("job-1")["status"] == "queued"  # WAL: readers go on
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert claim(store).outcome is ClaimOutcome.CLAIMED
    store.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_mongo_unreachable_at_open_is_unavailable():
    with pytest.raises(StoreUnavailable, match="ServerSelectionTimeoutError"):
        MongoStore(f"mongodb://127.0.0.1:{closed_port()}/?serverSelectionTimeoutMS=200")


def test_mongo_unreachable_injected_client_is_unavailable():
    import pymongo

    client = pymongo.MongoClient(f"mongodb://127.0.0.1:{closed_port()}",
                                 serverSelectionTimeoutMS=200)
    try:
        with pytest.raises(StoreUnavailable):
            MongoStore(client=client)
    finally:
        client.close()


STORE_CALLS = {
    "create_job": lambda s: s.create_job("j", "u", "articles", {}, T0),
    "get_job": lambda s: s.get_job("j"),
    "list_jobs": lambda s: s.list_jobs(),
    "claim": lambda s: claim(s, "j"),
    "progress": lambda s: s.progress("j", 1, "m", T0),
    "save_result": lambda s: s.save_result("j", CONTENT, {}, T0),
    "requeue": lambda s: s.requeue("j", "e", T0),
    "fail": lambda s: s.fail("j", "e", T0),
    "get_content": lambda s: s.get_content(CONTENT, "j"),
    "release": lambda s: s.release("j", "d", T0, "r"),
    "renew_leases": lambda s: s.renew_leases([("j", "d")], T0, T0),
    "expired_leases": lambda s: s.expired_leases(T0, 10),
    "stale_queued": lambda s: s.stale_queued(T0, 10),
    "rescue": lambda s: s.rescue({"_id": "j", "status": "queued"}, T0, resend=True,
                                 reason="r", max_attempts=3),
}


@pytest.fixture
def broken_mongo(monkeypatch):
    """A store over mongomock whose every collection call then raises ``error``."""

    def make(error: Exception) -> MongoStore:
        store = MongoStore(client=mongomock.MongoClient(tz_aware=True))

        def fail(*args, **kwargs):
            raise error

        for method in ("find", "find_one", "find_one_and_update", "insert_one",
                       "update_one", "update_many", "create_index"):
            monkeypatch.setattr(mongomock.collection.Collection, method, fail)
        return store

    return make


@pytest.mark.parametrize("call", list(STORE_CALLS), ids=list(STORE_CALLS))
def test_mongo_outage_in_every_call_is_unavailable(broken_mongo, call):
    store = broken_mongo(AutoReconnect("connection reset"))
    with pytest.raises(StoreUnavailable, match="AutoReconnect"):
        STORE_CALLS[call](store)


@pytest.mark.parametrize("error", [
    ConnectionFailure("refused"), NetworkTimeout("timed out"),
    ServerSelectionTimeoutError("no servers"),
    OperationFailure("stepped down", code=189, details={"errorLabels": ["RetryableWriteError"]}),
], ids=lambda e: type(e).__name__)
def test_mongo_transient_errors_are_unavailable(broken_mongo, error):
    with pytest.raises(StoreUnavailable):
        claim(broken_mongo(error))


def test_mongo_other_errors_pass_through(broken_mongo):
    with pytest.raises(OperationFailure, match="not authorized"):
        claim(broken_mongo(OperationFailure("not authorized", code=13)))


# -- the factory -----------------------------------------------------------------


def settings_with(**env):
    return config.load(environ={"ARTICLES_QUEUE_URL": "http://127.0.0.1:9/q", **env})


def test_factory_opens_sqlite_at_sqlite_path(tmp_path):
    path = tmp_path / "elsewhere" / "my.db"
    store = open_store(settings_with(VIP_WORKER_SQLITE_PATH=str(path)), environ={})
    assert isinstance(store, SqliteStore) and store.path == str(path) and path.exists()
    store.close()


@pytest.mark.parametrize("env, expected", [
    ({"VIP_WORKER_STATE_DIR": "/srv/state"}, "/srv/state/jobs.sqlite3"),
    ({}, "/var/lib/vip-worker/jobs.sqlite3"),  # from $STATE_DIRECTORY below
])
def test_sqlite_path_from_state_dir(env, expected):
    environ = {"STATE_DIRECTORY": "/var/lib/vip-worker:/var/lib/other"}
    assert sqlite_path(settings_with(**env), environ) == expected


def test_sqlite_path_defaults_to_var_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert sqlite_path(settings_with(), environ={}) == str(tmp_path / "var" / "jobs.sqlite3")


def test_a_bad_table_name_is_refused_when_settings_load(tmp_path):
    with pytest.raises(ConfigError, match="media_collection"):
        settings_with(VIP_WORKER_STATE_DIR=str(tmp_path),
                      VIP_WORKER_MEDIA_COLLECTION="media; DROP TABLE jobs")


@pytest.mark.parametrize("env, database", [
    ({"MONGODB_URI": "mongodb://127.0.0.1:1/appdb"}, "appdb"),
    ({"MONGODB_URI": "mongodb://127.0.0.1:1/appdb", "MONGODB_DATABASE": "other"}, "other"),
    ({"MONGODB_URI": "mongodb://127.0.0.1:1"}, "vipcontent"),
])
def test_factory_opens_mongo_when_uri_set(monkeypatch, env, database):
    made = []

    def client(uri, **options):
        made.append(options)
        return mongomock.MongoClient(uri, **options)

    monkeypatch.setattr(mongo_module.pymongo, "MongoClient", client)
    store = open_store(settings_with(**env), environ={})
    assert isinstance(store, MongoStore) and store._db.name == database
    assert made == [{"tz_aware": True, "serverSelectionTimeoutMS": 5000}]
    store.close()


def test_factory_mongo_unreachable_is_unavailable():
    uri = f"mongodb://127.0.0.1:{closed_port()}/?serverSelectionTimeoutMS=200"
    with pytest.raises(StoreUnavailable):
        open_store(settings_with(MONGODB_URI=uri), environ={})

