"""The MongoDB job store: the collections the existing app reads.

Over 400 lines because each operation of the ``JobStore`` contract is one method here,
its filter and update written out beside the rule it applies (the rules are in
``ledger.py``, ``cancel.py``, ``outbox.py``; the document codec in ``mongo_codec.py``).

Keys follow the app: a jobId of 24 lowercase hex digits is an ``ObjectId`` in
the job's ``_id`` and in content documents' ``jobId`` (the app's
``insertOne`` made it); any other jobId is stored as the string. ``userId`` is
stored as given. Documents handed back have ``_id``, ``jobId`` and ``userId``
as strings and timezone-aware datetimes, like the SQLite store's.

Concurrency: every conditional write is one atomic server-side operation.
``claim`` reads the job, decides with ``ledger.decide_claim`` and writes the
decision with a ``find_one_and_update`` whose filter pins every field the
decision read (a compare-and-set), so of two deliveries racing for a job exactly
one matches and the other reads and decides again; a missing job is inserted,
and losing that insert to another delivery (``DuplicateKeyError`` on ``_id``)
re-reads and re-evaluates. ``rescue`` is one such compare-and-set on the state a
sweeper saw; ``renew_leases`` one ``update_many``; ``release`` refunds the
attempt with ``$inc``. Content collections carry a unique index on ``jobId``, so
a redelivered ``save_result`` updates the one document. The jobs collection gets
``(status, leaseUntil)`` and ``(status, queuedAt)`` for the orphan queries.

pymongo's client is thread-safe and pools connections: one ``MongoStore`` per
poller process, created after fork, serves all of its handler threads.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import unquote

import pymongo
from bson import ObjectId
from pymongo.errors import (
    ConnectionFailure,
    DuplicateKeyError,
    ExecutionTimeout,
    OperationFailure,
    PyMongoError,
    WTimeoutError,
)

from vip_worker.store import (
    STATUSES,
    Cancel,
    CancelOutcome,
    Claim,
    ClaimOutcome,
    LeaseRenewal,
    RescueOutcome,
    StoreUnavailable,
    history,
    ledger,
)
from vip_worker.store.buckets import DEFAULT_RETENTION_H, MongoBuckets
from vip_worker.store.cancel import CANCEL_PINNED, cancelled_changes, decide_cancel
from vip_worker.store.checkpoints import MongoCheckpoints
from vip_worker.store.fleet import MongoFleet
from vip_worker.store.history import push
from vip_worker.store.ledger import new_job, utc
from vip_worker.store.mongo_codec import OBJECT_ID_RE, aware, shown, to_key
from vip_worker.store.outbox import MongoOutbox
from vip_worker.store.progress import MongoProgress
from vip_worker.store.quota_mongo import MongoQuota
from vip_worker.store.search import MongoSearch
from vip_worker.store.usage import MongoUsage, usage_changes

DEFAULT_DATABASE = "vipcontent"
SERVER_SELECTION_TIMEOUT_MS = 5000
# ConnectionFailure covers AutoReconnect, NetworkTimeout, NotPrimaryError and
# ServerSelectionTimeoutError: the server is unreachable or changing primaries.
TRANSIENT_ERRORS = (ConnectionFailure, ExecutionTimeout, WTimeoutError)
TRANSIENT_LABELS = ("RetryableWriteError", "TransientTransactionError")
# Rounds of claim's read-and-retry loop; each extra round means a concurrent writer
# changed the job between our two reads, so a handful is plenty.
CLAIM_ROUNDS = 5
# Indexes of the jobs collection, each (status, <field>): the orphan queries'.
JOB_INDEXES = ("leaseUntil", "queuedAt")


def uri_database(uri: str) -> str:
    """The default database named in a MongoDB URI (``mongodb://h:1/<db>?opts``), or "".

    Parsed here rather than by pymongo's ``parse_uri``, which resolves
    ``mongodb+srv`` names over DNS.
    """
    rest = uri.partition("://")[2].partition("?")[0]
    hosts_and_db = rest.rpartition("@")[2]
    _, slash, database = hosts_and_db.partition("/")
    return unquote(database) if slash else ""


def is_transient(exc: PyMongoError) -> bool:
    return isinstance(exc, TRANSIENT_ERRORS) or any(
        exc.has_error_label(label) for label in TRANSIENT_LABELS)


def progress_writes(query: dict[str, Any], changes: dict[str, Any],
                    step_entry: dict[str, Any], rising: bool = False
                    ) -> list[tuple[dict, dict]]:
    """One job's progress as two conditional updates, applied in order in one round trip:
    the same message or step (most calls) sets the fields; a new step
    (``history.is_new_step``) sets them and appends its history entry. Exactly one of them
    matches. ``rising``: neither matches a job whose progress is above this one."""
    if rising:
        query = {**query, "progress": {"$not": {"$gt": changes["progress"]}}}
    message = changes["message"]
    step = history.step_of(message)
    changes = {**changes, "progressStep": step}
    return [({**query, "$or": [{"message": message}, {"progressStep": step}]},
             {"$set": changes}),
            ({**query, "message": {"$ne": message}, "progressStep": {"$ne": step}},
             {"$set": changes, **push(step_entry)})]


class MongoStore(MongoOutbox, MongoBuckets, MongoFleet, MongoSearch, MongoQuota,
                 MongoCheckpoints, MongoUsage, MongoProgress):
    """``JobStore`` on MongoDB; see the module docstring for keys and concurrency.

    :param uri: the connection string; unused when ``client`` is given, except for
        its default database.
    :param database: the database; empty: the URI's, else ``vipcontent``.
    :param client: a ready client (tests pass ``mongomock.MongoClient``); the caller
        keeps ownership and ``close()`` leaves it open.
    """

    def __init__(self, uri: str = "", database: str = "", jobs_collection: str = "jobs",
                 content_collection: str = "generated_content",
                 media_collection: str = "media", client: Any = None,
                 metrics_retention_h: float = DEFAULT_RETENTION_H) -> None:
        self.metrics_retention_h = metrics_retention_h
        if jobs_collection in (content_collection, media_collection):
            raise ValueError(f"{jobs_collection!r} cannot hold both jobs and content")
        if client is None and not uri:
            raise ValueError("MongoStore needs a URI or a client")
        self._owns_client = client is None
        if client is None:
            options: dict[str, Any] = {"tz_aware": True}
            if "serverselectiontimeoutms" not in uri.lower():
                options["serverSelectionTimeoutMS"] = SERVER_SELECTION_TIMEOUT_MS
            client = pymongo.MongoClient(uri, **options)
        self._client = client
        self._indexed: set[str] = set()
        try:
            self._db = client[database or uri_database(uri) or DEFAULT_DATABASE]
            self._jobs = self._db[jobs_collection]
            for name in (content_collection, media_collection):
                self._content(name)
            self._index_jobs()
        except BaseException:
            self.close()
            raise

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except PyMongoError as exc:
            if is_transient(exc):
                raise StoreUnavailable(f"mongodb: {type(exc).__name__}: {exc}") from exc
            raise

    def _content(self, name: str):
        """The content collection, with its unique ``jobId`` index ensured once."""
        collection = self._db[name]
        if name not in self._indexed:
            with self._errors():
                try:
                    collection.create_index("jobId", unique=True)
                except OperationFailure as exc:
                    if is_transient(exc):
                        raise
                    # Duplicates already present, or a non-unique jobId index of the app's.
                    raise RuntimeError(
                        f"mongodb: cannot create a unique index on {name}.jobId ({exc}); "
                        "remove duplicate content documents or the conflicting index, or "
                        "grant the user createIndex on the collection"
                    ) from exc
            self._indexed.add(name)
        return collection

    def _index_jobs(self) -> None:
        """The sweep's indexes: ``expired_leases`` and ``stale_queued`` each read one;
        ``user_jobs`` (the job API's pages) reads the third."""
        with self._errors():
            try:
                for field in JOB_INDEXES:
                    self._jobs.create_index([("status", pymongo.ASCENDING),
                                             (field, pymongo.ASCENDING)])
                self._jobs.create_index([("userId", pymongo.ASCENDING),
                                         ("createdAt", pymongo.DESCENDING),
                                         ("_id", pymongo.DESCENDING)])
                self._index_callbacks()
                self._index_search()
                self._index_buckets()
                self._index_fleet()
            except OperationFailure as exc:
                if is_transient(exc):
                    raise
                raise RuntimeError(
                    f"mongodb: cannot create the jobs collection's indexes ({exc}); grant "
                    "the user createIndex on it") from exc

    # -- JobStore ---------------------------------------------------------------

    def create_job(self, job_id: str, user_id: str, type: str, params: dict[str, Any],
                   now: datetime, *, queue: str | None = None) -> bool:
        job = new_job(job_id, user_id, type, params, utc(now), queue)
        job["_id"] = to_key(job_id)
        with self._errors():
            try:
                self._jobs.insert_one(job)
            except DuplicateKeyError:
                return False
        return True

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        with self._errors():
            return shown(self._jobs.find_one({"_id": to_key(job_id)}))

    def list_jobs(self, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        if limit < 1 or (status is not None and status not in STATUSES):
            return []
        query = {"status": status} if status else {}
        return self._find(query, [("createdAt", pymongo.DESCENDING)], limit)

    def user_jobs(self, user_id: str, status: str | None = None, limit: int = 50,
                  after: tuple[datetime, str] | None = None) -> list[dict[str, Any]]:
        if limit < 1 or (status is not None and status not in STATUSES):
            return []
        # userId is stored as given: the app's own documents may hold an ObjectId.
        owners = [user_id, ObjectId(user_id)] if OBJECT_ID_RE.match(user_id) else [user_id]
        query: dict[str, Any] = {"userId": {"$in": owners}}
        if status:
            query["status"] = status
        if after is not None:
            stamp, key = utc(after[0]), to_key(after[1])
            query["$or"] = [{"createdAt": {"$lt": stamp}},
                            {"createdAt": stamp, "_id": {"$lt": key}}]
        return self._find(query, [("createdAt", pymongo.DESCENDING), ("_id", pymongo.DESCENDING)],
                          limit)

    def _find(self, query: dict[str, Any], order: list[tuple[str, int]],
              limit: int) -> list[dict[str, Any]]:
        if limit < 1:
            return []  # MongoDB reads limit(0) as "no limit"
        with self._errors():
            return [shown(doc) for doc in self._jobs.find(query).sort(order).limit(limit)]

    def claim(self, job_id: str, *, user_id: str, type: str, params: dict[str, Any],
              message_id: str, lease_s: float, now: datetime, delivery: str | None = None,
              queue: str | None = None, max_attempts: int | None = None,
              redriven: bool | None = None, unsettled: str | None = None,
              by: str | None = None) -> Claim:
        now = utc(now)
        key = to_key(job_id)
        lease_until = utc(now + timedelta(seconds=lease_s))
        current = None
        with self._errors():
            for _ in range(CLAIM_ROUNDS):
                found = self._jobs.find_one({"_id": key})
                # Another app may have produced the message without creating the job.
                current = shown(found) or new_job(job_id, user_id, type, params, now)
                decision = ledger.decide_claim(
                    current, message_id=message_id, delivery=delivery, queue=queue,
                    lease_until=lease_until, max_attempts=max_attempts, now=now,
                    redriven=redriven, unsettled=unsettled)
                if decision.changes is None:
                    busy = decision.outcome is ClaimOutcome.BUSY
                    return Claim(decision.outcome, current,
                                 lease_until=current.get("leaseUntil") if busy else None)
                step = history.claim_entry(current, decision.outcome, decision.changes,
                                           now, by)
                steps = [] if step is None else [step]
                if found is None:
                    job = {**current, **decision.changes, "_id": key,
                           "history": history.appended(current, *steps)}
                    try:
                        self._jobs.insert_one(job)
                    except DuplicateKeyError:
                        continue  # another delivery created it meanwhile: decide again
                    return Claim(decision.outcome, shown(job))
                # The decision holds only while what it read is unchanged: compare-and-set.
                job = self._jobs.find_one_and_update(
                    pinned(key, current, ledger.CLAIM_PINNED),
                    {"$set": decision.changes, **(push(*steps) if steps else {})},
                    return_document=pymongo.ReturnDocument.AFTER)
                if job is not None:
                    return Claim(decision.outcome, shown(job))
                # It changed between our read and our write: decide again.
        return Claim(ClaimOutcome.BUSY, current,
                     lease_until=current.get("leaseUntil") if current else None)

    def progress(self, job_id: str, percent: int, message: str, now: datetime, *,
                 delivery: str | None = None) -> None:
        percent = max(0, min(100, int(percent)))
        query = {"_id": to_key(job_id), "status": "processing", **guard(None, delivery)}
        with self._errors():
            self._progress_writes([progress_writes(query, {
                "progress": percent, "message": message, "progressEstimated": False,
                "updatedAt": utc(now)},
                history.progress_entry(percent, message, utc(now)))])

    def save_result(self, job_id: str, collection: str, content: dict[str, Any],
                    now: datetime, *, delivery: str | None = None) -> None:
        # ``delivery`` does not guard a result (the JobStore contract): accepted, unused.
        now = utc(now)
        key = to_key(job_id)
        with self._errors():
            target = self._content(collection)
            job = self._jobs.find_one({"_id": key}, {"userId": 1, "status": 1})
            if job is not None and job.get("status") == "cancelled":
                return  # an abandoned handler's late result: the job stays cancelled
            fields = {k: v for k, v in content.items() if k not in ("_id", "createdAt")}
            fields["jobId"] = key
            fields["userId"] = job["userId"] if job and "userId" in job else content.get("userId")
            upsert = {"$set": fields, "$setOnInsert": {"createdAt": now}}
            try:
                target.update_one({"jobId": key}, upsert, upsert=True)
            except DuplicateKeyError:
                # Two upserts raced to insert: the loser's retry finds the winner's
                # document and updates it (MongoDB's advice for upserts on a unique key).
                target.update_one({"jobId": key}, upsert, upsert=True)
            # processing -> completed, a history step; a redelivered result: no new step
            done = {**ledger.completed_changes(now), **usage_changes(content)}
            if not self._jobs.update_one(
                    {"_id": key, "status": {"$nin": ["cancelled", "completed"]}},
                    {"$set": done, **push(history.entry("completed", now))}).matched_count:
                self._jobs.update_one({"_id": key, "status": "completed"}, {"$set": done})

    def complete(self, job_id: str, now: datetime, *, delivery: str) -> bool:
        query = {"_id": to_key(job_id), "status": "processing", "delivery": delivery}
        with self._errors():  # processing -> completed, only for the holder
            return bool(self._jobs.update_one(
                query, {"$set": ledger.completed_changes(utc(now)),
                        **push(history.entry("completed", utc(now)))}).matched_count)

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
        (``guard``), or any message when none ever claimed it (a message refused before
        its claim: a bad payload, too many receives).
        """
        allowed = "processing" if status == "queued" else {"$ne": "completed"}
        query: dict[str, Any] = {"_id": to_key(job_id), "status": allowed,
                                 **guard(message_id, delivery)}
        update = {"status": status, "error": error, "message": error, "leaseUntil": None,
                  "updatedAt": now}
        if status == "queued":
            update["queuedAt"] = utc(now + timedelta(seconds=delay_s))  # visible again
        step = history.entry("requeued" if status == "queued" else "failed", now,
                             reason=error)
        with self._errors():
            self._jobs.update_one(query, {"$set": update, **push(step)})

    def release(self, job_id: str, delivery: str, now: datetime, reason: str, *,
                event: str = "released", delay_s: float = 0) -> bool:
        refund = ledger.release_changes({}, reason, utc(now), delay_s)  # its attempts: 0
        step = push(history.entry(event, utc(now), reason=reason))
        query = {"_id": to_key(job_id), "status": "processing", "delivery": delivery}
        with self._errors():
            # processing -> queued, attempts - 1 in the same write (no read-modify-write),
            # else (no attempt recorded) attempts 0: never below 0.
            return bool(self._jobs.update_one(
                {**query, "attempts": {"$gte": 1}},
                {"$set": {k: v for k, v in refund.items() if k != "attempts"},
                 "$inc": {"attempts": -1}, **step}).matched_count
                or self._jobs.update_one(query, {"$set": refund, **step}).matched_count)

    def renew_leases(self, held: Sequence[tuple[str, str]], lease_until: datetime,
                     now: datetime) -> set[str]:
        if not held:
            return LeaseRenewal()
        pairs = [(to_key(job_id), delivery) for job_id, delivery in held]
        # `_id: $in` lets the server walk the _id index; the $or pairs each id with its
        # delivery. One update_many: no read-modify-write per job.
        query = {"status": "processing", "_id": {"$in": [key for key, _ in pairs]},
                 "$or": [{"_id": key, "delivery": delivery} for key, delivery in pairs]}
        with self._errors():
            self._jobs.update_many(query, {"$set": {"leaseUntil": utc(lease_until),
                                                    "updatedAt": utc(now)}})
            docs = list(self._jobs.find(query, {"_id": 1, "cancelRequestedAt": 1}))
        return LeaseRenewal((str(d["_id"]) for d in docs),
                            (str(d["_id"]) for d in docs if d.get("cancelRequestedAt")))

    def request_cancel(self, job_id: str, now: datetime, *,
                       user_id: str | None = None) -> Cancel:
        now, key = utc(now), to_key(job_id)
        with self._errors():
            for _ in range(CLAIM_ROUNDS):
                job = shown(self._jobs.find_one({"_id": key}))
                outcome, changes = decide_cancel(job, now, user_id)
                if changes is None:
                    return Cancel(outcome, job)
                # A compare-and-set on what the decision read (a claim may race it).
                done = self._jobs.find_one_and_update(
                    pinned(key, job, CANCEL_PINNED),
                    {"$set": changes, **push(history.cancel_entry(changes, now))},
                    return_document=pymongo.ReturnDocument.AFTER)
                if done is not None:
                    return Cancel(outcome, shown(done))
        return Cancel(CancelOutcome.REFUSED, job)  # it kept changing under us

    def cancel_held(self, job_id: str, now: datetime, *, delivery: str) -> bool:
        query = {"_id": to_key(job_id), "status": "processing", "delivery": delivery}
        with self._errors():  # processing -> cancelled, only for the holder
            job = self._jobs.find_one(query, {"cancelRequestedAt": 1})
            if job is None:
                return False
            changes = cancelled_changes(aware(job), utc(now))
            return bool(self._jobs.update_one(query, {
                "$set": changes, **push(history.entry("cancelled", utc(now)))}).matched_count)

    def expired_leases(self, now: datetime, limit: int) -> list[dict[str, Any]]:
        # {$lt: now} never matches a null or missing lease: a lease-less job is not ours.
        return self._find({"status": "processing", "leaseUntil": {"$lt": utc(now)}},
                          [("leaseUntil", pymongo.ASCENDING)], limit)

    def stale_queued(self, created_before: datetime, limit: int) -> list[dict[str, Any]]:
        before = utc(created_before)
        # The app's own documents have no queuedAt: their createdAt stands in. They come
        # first (a missing field sorts before any date); ordering by queuedAt alone lets
        # the server merge both clauses' index scans instead of sorting in memory.
        query = {"status": "queued", "$or": [
            {"queuedAt": {"$lt": before}},
            {"queuedAt": None, "createdAt": {"$lt": before}},
        ]}
        return self._find(query, [("queuedAt", pymongo.ASCENDING)], limit)

    def rescue(self, job: Mapping[str, Any], now: datetime, *, resend: bool, reason: str,
               max_attempts: int, hold_s: float = 0) -> RescueOutcome | None:
        now = utc(now)
        if not ledger.rescuable(job, now):
            return None
        outcome, changes = ledger.rescue_changes(job, now, resend=resend, reason=reason,
                                                 max_attempts=max_attempts, hold_s=hold_s)
        query = pinned(to_key(str(job["_id"])), job, ledger.RESCUE_PINNED)
        step = push(history.rescue_entry(job, outcome, changes, now))
        with self._errors():
            # One compare-and-set on the state the sweeper saw: one sweeper matches.
            done = self._jobs.update_one(query, {"$set": changes, **step})
        return outcome if done.matched_count == 1 else None

    def get_content(self, collection: str, job_id: str) -> list[dict[str, Any]]:
        key = to_key(job_id)
        # Also the string form: documents written by hand or by older code.
        query = {"jobId": {"$in": [key, job_id]}} if key != job_id else {"jobId": job_id}
        with self._errors():
            return [shown(doc) for doc in self._db[collection].find(query)]

    def close(self) -> None:
        if self._owns_client:
            self._client.close()


def pinned(key: ObjectId | str, seen: Mapping[str, Any],
           fields: Sequence[str]) -> dict[str, Any]:
    """A filter that matches the job only while ``fields`` hold what was ``seen`` (None
    also matches a missing field, as a document shown without it reads None)."""
    return {"_id": key, **{field: seen.get(field) for field in fields}}


def guard(message_id: str | None, delivery: str | None) -> dict[str, Any]:
    """``ledger.may_settle`` as a filter: only the claim's holder, or anyone when the
    job was never claimed (None also matches a missing field)."""
    query: dict[str, Any] = {}
    if message_id is not None:
        query["messageId"] = {"$in": [message_id, None]}
    if delivery is not None:
        query["$or"] = [{"delivery": None}, {"delivery": delivery, "status": "processing"}]
    return query
