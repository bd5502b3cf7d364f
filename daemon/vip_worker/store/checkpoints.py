"""Checkpoints: small JSON results a handler saves on its job, kept across attempts.

A handler calls ``ctx.checkpoint(name, value)`` after a step that must not be paid for
twice (the bundled plugins: right after the generation call succeeds, before saving its
result); a later attempt of the same job finds the value in ``ctx.checkpoints``, loaded
with its claim, and skips the step. The job's ``checkpoints`` field holds them::

    {"checkpoints": {"<name>": <JSON value>, ...}}

The rules are written once here (``check_checkpoint``: a name and a size the store
accepts); ``SqliteCheckpoints`` and ``MongoCheckpoints`` are the two backends' methods
(mixed into ``SqliteStore`` and ``MongoStore``), each one write: SQLite one
``BEGIN IMMEDIATE`` transaction, MongoDB one ``update_one`` with ``$set`` of
``checkpoints.<name>``.

A checkpoint is written only while the job is ``processing`` and, with ``delivery``,
only while that delivery holds the claim (``ledger.may_settle``): a delivery that lost
its claim must not change what the new holder reads. Checkpoints are never cleared:
a redriven job reuses them too (the generated content is still the content asked for).
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from vip_worker.store import ledger
from vip_worker.store.ledger import utc
from vip_worker.store.mongo_codec import to_key

FIELD = "checkpoints"
# A generated article of the service's maximum 20,000 words is ~150 KB of JSON.
MAX_CHECKPOINT_BYTES = 256 * 1024
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class CheckpointError(ValueError):
    """A checkpoint the store cannot keep: a bad name, not JSON, or too large. The
    message names the checkpoint."""


def check_checkpoint(name: str, value: Any) -> int:
    """The checkpoint's encoded size in bytes, once its name and value are acceptable.

    :raises CheckpointError: the name is not ``[A-Za-z0-9_-]{1,64}`` (a dot or a ``$``
        would be a path in MongoDB), the value is not JSON (NaN, a datetime, an object),
        or it encodes to more than ``MAX_CHECKPOINT_BYTES``.
    """
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise CheckpointError(f"checkpoint name {name!r} must match [A-Za-z0-9_-]{{1,64}}")
    try:
        size = len(json.dumps(value, allow_nan=False, ensure_ascii=False).encode())
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {name!r} is not JSON: {exc}") from None
    if size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"checkpoint {name!r} is {size} bytes "
                              f"(limit {MAX_CHECKPOINT_BYTES})")
    return size


def saved(job: dict[str, Any] | None) -> dict[str, Any]:
    """The checkpoints of a job document (none: an empty dict)."""
    return dict((job or {}).get(FIELD) or {})


class SqliteCheckpoints:
    """``checkpoint`` on the SQLite store (mixed into ``SqliteStore``)."""

    def checkpoint(self, job_id: str, name: str, value: Any, now: datetime, *,
                   delivery: str | None = None) -> bool:
        check_checkpoint(name, value)
        with self._write() as conn:
            job = self._load_job(conn, job_id)
            if job is None or job.get("status") != "processing":
                return False
            if not ledger.may_settle(job, None, delivery):
                return False
            job[FIELD] = {**saved(job), name: value}
            job["updatedAt"] = utc(now)
            self._save_job(conn, job)
            return True


class MongoCheckpoints:
    """``checkpoint`` on the MongoDB store (mixed into ``MongoStore``)."""

    def checkpoint(self, job_id: str, name: str, value: Any, now: datetime, *,
                   delivery: str | None = None) -> bool:
        from vip_worker.store.mongo import guard  # mongo.py imports this module

        check_checkpoint(name, value)
        query = {"_id": to_key(job_id), "status": "processing", **guard(None, delivery)}
        with self._errors():
            result = self._jobs.update_one(
                query, {"$set": {f"{FIELD}.{name}": value, "updatedAt": utc(now)}})
        return bool(result.matched_count)
