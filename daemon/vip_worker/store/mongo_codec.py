"""How jobs look in MongoDB and how the store hands them back: jobIds that are ObjectIds
(as the app's ``insertOne`` made them), timezone-aware datetimes. Shared by the store
(``mongo.py``) and its callback outbox (``outbox.py``)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from bson import ObjectId

OBJECT_ID_RE = re.compile(r"^[0-9a-f]{24}$")


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
