"""A received message while this poller holds it (received, maybe running, not yet settled)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vip_worker.config import QueueSettings
from vip_worker.message import Envelope
from vip_worker.sqs.limits import MAX_VISIBILITY_S

# Stop extending this long before SQS's 12-hour visibility cap.
CAP_MARGIN_S = 60.0


@dataclass(slots=True, eq=False)
class InFlight:
    queue: QueueSettings
    message_id: str
    receipt: str
    body: str
    receive_count: int
    received_at: float  # monotonic
    visible_until: float  # monotonic; moved forward by each heartbeat
    group_id: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    envelope: Envelope | None = None
    started: bool = False
    lost: bool = False  # SQS refused our receipt handle: stop extending it
    capped: bool = False  # the 12-hour cap left nothing to extend
    # Set once, by whoever decides the message's fate first (the handler's
    # outcome, or the shutdown's hand-back). Later deciders do nothing.
    settled: bool = False

    @classmethod
    def from_sqs(cls, queue: QueueSettings, raw: dict[str, Any], now: float) -> InFlight:
        attrs = raw.get("Attributes", {})
        return cls(
            queue=queue,
            message_id=raw["MessageId"],
            receipt=raw["ReceiptHandle"],
            body=raw.get("Body", ""),
            receive_count=int(attrs.get("ApproximateReceiveCount", "1")),
            received_at=now,
            visible_until=now + queue.visibility_timeout_s,
            group_id=attrs.get("MessageGroupId"),
            attributes=raw.get("MessageAttributes", {}),
        )

    @property
    def cap_at(self) -> float:
        """When SQS's 12-hour limit, counted from this receive, nears."""
        return self.received_at + MAX_VISIBILITY_S - CAP_MARGIN_S

    def settle(self) -> bool:
        """Claim the right to decide this message's fate; False if already decided."""
        if self.settled:
            return False
        self.settled = True
        return True

    def log_fields(self) -> dict[str, Any]:
        env = self.envelope
        return {
            "message_id": self.message_id,
            "job_id": env.job_id if env else None,
            "type": env.type if env else None,
            "queue": self.queue.name,
            "receive_count": self.receive_count,
        }
