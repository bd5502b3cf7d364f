"""The message envelope the existing app sends, and its parser.

The app sends one JSON object per message::

    {"jobId": "...", "userId": "...", "type": "articles",
     "timestamp": "2025-01-15T10:30:00Z", "payload": {...}}

``parse_envelope`` either returns an ``Envelope`` or raises ``MalformedMessage``
naming the first problem; the consumer dead-letters such messages at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from vip_worker.errors import MalformedMessage

REQUIRED = {"jobId": str, "userId": str, "type": str, "timestamp": str, "payload": dict}
MAX_ID_LEN = 256


@dataclass(frozen=True, slots=True)
class Envelope:
    """One parsed message, as handed to a handler.

    ``extra`` keeps unknown top-level fields: the app may add some, and they are
    not an error.
    """

    job_id: str
    user_id: str
    type: str
    timestamp: str
    payload: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    def to_body(self) -> str:
        """The body in the app's exact message format (camelCase keys)."""
        doc = {
            "jobId": self.job_id,
            "userId": self.user_id,
            "type": self.type,
            "timestamp": self.timestamp,
            "payload": self.payload,
        }
        doc.update(self.extra)
        return json.dumps(doc, separators=(",", ":"))


def parse_envelope(body: str) -> Envelope:
    """Parse and validate a message body; raise ``MalformedMessage`` with the reason."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise MalformedMessage(f"body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise MalformedMessage(f"body must be a JSON object, got {type(doc).__name__}")
    for key, kind in REQUIRED.items():
        if key not in doc:
            raise MalformedMessage(f"missing field {key!r}")
        if not isinstance(doc[key], kind):
            raise MalformedMessage(
                f"field {key!r} must be {kind.__name__}, got {type(doc[key]).__name__}"
            )
    for key in ("jobId", "userId", "type"):
        if not doc[key] or len(doc[key]) > MAX_ID_LEN:
            raise MalformedMessage(f"field {key!r} must be 1..{MAX_ID_LEN} characters")
    try:
        datetime.fromisoformat(doc["timestamp"])
    except ValueError:
        raise MalformedMessage(
            f"field 'timestamp' is not an ISO 8601 time: {doc['timestamp'][:64]!r}"
        ) from None
    # Every required key is present: more keys than those are the app's extras.
    extra = ({k: v for k, v in doc.items() if k not in REQUIRED}
             if len(doc) > len(REQUIRED) else {})
    return Envelope(
        job_id=doc["jobId"],
        user_id=doc["userId"],
        type=doc["type"],
        timestamp=doc["timestamp"],
        payload=doc["payload"],
        extra=extra,
    )
