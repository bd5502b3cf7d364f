"""The MongoDB job store: the collections the existing app reads.

Keys follow the app: a jobId of 24 lowercase hex digits is an ``ObjectId`` in
the job's ``_id`` and in content documents' ``jobId`` (the app's
``insertOne`` made it); any other jobId is stored as the string. ``userId`` is
stored as given. Documents handed back have ``_id``, ``jobId`` and ``userId``
as strings and timezone-aware datetimes, like the SQLite store's.

Concurrency: every conditional write is one atomic server-side operation.
``claim`` is a ``find_one_and_update`` whose filter is the claim condition, so
of two deliveries racing for a job exactly one matches; a missing job is
inserted, and losing that insert to another delivery (``DuplicateKeyError`` on
``_id``) re-reads and re-evaluates. Content collections carry a unique index
on ``jobId``, so a redelivered ``save_result`` updates the one document.

pymongo's client is thread-safe and pools connections: one ``MongoStore`` per
poller process, created after fork, serves all of its handler threads.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
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

from vip_worker.store import STATUSES, Claim, ClaimOutcome, StoreUnavailable
from vip_worker.store.sqlite import (
    COMPLETED_MESSAGE,
    PROCESSING_MESSAGE,
    claimable,
    new_job,
    utc,
)

DEFAULT_DATABASE = "vipcontent"
SERVER_SELECTION_TIMEOUT_MS = 5000
OBJECT_ID_RE = re.compile(r"^[0-9a-f]{24}$")
# ConnectionFailure covers AutoReconnect, NetworkTimeout, NotPrimaryError and
# ServerSelectionTimeoutError: the server is unreachable or changing primaries.
TRANSIENT_ERRORS = (ConnectionFailure, ExecutionTimeout, WTimeoutError)
TRANSIENT_LABELS = ("RetryableWriteError", "TransientTransactionError")
# Rounds of claim's read-and-retry loop; each extra round means a concurrent writer
# changed the job between our two reads, so a handful is plenty.
CLAIM_ROUNDS = 5


def to_key(job_id: str) -> ObjectId | str:
    """The stored form of a jobId: an ObjectId when it is one, else the string."""
    return ObjectId(job_id) if OBJECT_ID_RE.match(job_id) else job_id


def aware(value: Any) -> Any:
    """Datetimes anywhere in ``value`` made timezone-aware UTC (a client made
    without ``tz_aware=True`` hands back naive ones)."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value
    if isinstance(value, dict):
        return {k: aware(v) for k, v in value.items()}
    if isinstance(value, list):
        return [aware(v) for v in value]
    return value


def shown(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    """A document as the store hands it back: ids as strings, datetimes aware."""
    if doc is None:
        return None
    doc = aware(doc)
    for field in ("_id", "jobId", "userId"):
        if isinstance(doc.get(field), ObjectId):
            doc[field] = str(doc[field])
    return doc


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


class MongoStore:
    """``JobStore`` on MongoDB; see the module docstring for keys and concurrency.

    :param uri: the connection string; unused when ``client`` is given, except for
        its default database.
    :param database: the database; empty: the URI's, else ``vipcontent``.
    :param client: a ready client (tests pass ``mongomock.MongoClient``); the caller
        keeps ownership and ``close()`` leaves it open.
    """

    def __init__(self, uri: str = "", database: str = "", jobs_collection: str = "jobs",
                 content_collection: str = "generated_content",
                 media_collection: str = "media", client: Any = None) -> None:
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

    # -- JobStore ---------------------------------------------------------------

    def create_job(self, job_id: str, user_id: str, type: str, params: dict[str, Any],
                   now: datetime) -> bool:
        job = new_job(job_id, user_id, type, params, utc(now))
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
        with self._errors():
            cursor = self._jobs.find(query).sort("createdAt", pymongo.DESCENDING).limit(limit)
            return [shown(doc) for doc in cursor]

    def claim(self, job_id: str, *, user_id: str, type: str, params: dict[str, Any],
              message_id: str, lease_s: float, now: datetime) -> Claim:
        now = utc(now)
        key = to_key(job_id)
        # The claim condition of ``claimable``, evaluated by the server.
        condition = {"_id": key, "$or": [
            {"status": {"$in": ["queued", "failed"]}},
            {"status": "processing", "leaseUntil": {"$lt": now}},
            {"status": "processing", "leaseUntil": None},  # missing or null: no live lease
            {"status": "processing", "messageId": message_id},
        ]}
        taken = {
            "status": "processing", "progress": 0, "message": PROCESSING_MESSAGE, "error": None,
            "messageId": message_id, "leaseUntil": utc(now + timedelta(seconds=lease_s)),
            "updatedAt": now,
        }
        current = None
        with self._errors():
            for _ in range(CLAIM_ROUNDS):
                # queued | failed | processing (lease expired or ours) -> processing
                job = self._jobs.find_one_and_update(
                    condition, {"$set": taken, "$inc": {"attempts": 1}},
                    return_document=pymongo.ReturnDocument.AFTER)
                if job is not None:
                    if job.get("startedAt") is None:
                        # First claim only. Only this claim's holder gets here, so a
                        # second conditional write is race-free.
                        self._jobs.update_one({"_id": key, "startedAt": None},
                                              {"$set": {"startedAt": now}})
                        job["startedAt"] = now
                    return Claim(ClaimOutcome.CLAIMED, shown(job))
                current = self._jobs.find_one({"_id": key})
                if current is None:
                    # Another app produced the message without creating the job. -> processing
                    job = {**new_job(job_id, user_id, type, params, now), **taken,
                           "_id": key, "attempts": 1, "startedAt": now}
                    try:
                        self._jobs.insert_one(job)
                    except DuplicateKeyError:
                        continue  # another delivery created it meanwhile: re-evaluate
                    return Claim(ClaimOutcome.CLAIMED, shown(job))
                current = shown(current)
                if current.get("status") == "completed":
                    return Claim(ClaimOutcome.COMPLETED, current)
                if not claimable(current, message_id, now):
                    break
                # Claimable now: it changed between our two reads. Try again.
        return Claim(ClaimOutcome.BUSY, current,
                     lease_until=current.get("leaseUntil") if current else None)

    def progress(self, job_id: str, percent: int, message: str, now: datetime) -> None:
        update = {"progress": max(0, min(100, int(percent))), "message": message,
                  "updatedAt": utc(now)}
        with self._errors():
            self._jobs.update_one({"_id": to_key(job_id), "status": "processing"},
                                  {"$set": update})

    def save_result(self, job_id: str, collection: str, content: dict[str, Any],
                    now: datetime) -> None:
        now = utc(now)
        key = to_key(job_id)
        with self._errors():
            target = self._content(collection)
            job = self._jobs.find_one({"_id": key}, {"userId": 1})
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
            # processing -> completed
            self._jobs.update_one({"_id": key}, {"$set": {
                "status": "completed", "progress": 100, "message": COMPLETED_MESSAGE,
                "error": None, "completedAt": now, "updatedAt": now, "leaseUntil": None}})

    def requeue(self, job_id: str, error: str, now: datetime, *,
                message_id: str | None = None) -> None:
        self._settle(job_id, "queued", error, utc(now), message_id)

    def fail(self, job_id: str, error: str, now: datetime, *,
             message_id: str | None = None) -> None:
        self._settle(job_id, "failed", error, utc(now), message_id)

    def _settle(self, job_id: str, status: str, error: str, now: datetime,
                message_id: str | None) -> None:
        """processing -> queued, or anything but completed -> failed.

        Only a job still ``processing`` goes back to ``queued``: a twin delivery that
        fails transiently must not undo the ``failed`` its twin wrote (nor a completion).
        With ``message_id``, only the message holding the claim settles the job, or any
        message when none ever claimed it (a message refused before its claim: a bad
        payload, too many receives).
        """
        allowed = "processing" if status == "queued" else {"$ne": "completed"}
        query: dict[str, Any] = {"_id": to_key(job_id), "status": allowed}
        if message_id is not None:
            # Another message may have claimed it since; None also matches a missing field.
            query["messageId"] = {"$in": [message_id, None]}
        with self._errors():
            self._jobs.update_one(
                query,
                {"$set": {"status": status, "error": error, "message": error,
                          "leaseUntil": None, "updatedAt": now}})

    def get_content(self, collection: str, job_id: str) -> list[dict[str, Any]]:
        key = to_key(job_id)
        # Also the string form: documents written by hand or by older code.
        query = {"jobId": {"$in": [key, job_id]}} if key != job_id else {"jobId": job_id}
        with self._errors():
            return [shown(doc) for doc in self._db[collection].find(query)]

    def close(self) -> None:
        if self._owns_client:
            self._client.close()
