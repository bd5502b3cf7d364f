"""A received message while this poller holds it, and its states.

::

    RECEIVED --start--> RUNNING --settle--> SETTLING ----finish--> DONE
        |                  |                                  ^
        +------------------+--settle(HANDED_BACK)--> HANDED_BACK

A message may also go RECEIVED -> SETTLING (a malformed message, dead-lettered
without running). The consumer writes each transition beside its code.
"""

from __future__ import annotations

import enum
import json
import time
from dataclasses import dataclass, field
from typing import Any

from vip_worker.config import QueueSettings
from vip_worker.message import Envelope
from vip_worker.sqs.limits import MAX_VISIBILITY_S

# Stop extending this long before SQS's 12-hour visibility cap.
CAP_MARGIN_S = 60.0
# Set on a message the daemon re-sent (vip_worker.resend): the attempts before it. Not
# ``vip_attempts``: that is a dead-letter copy's count, which a redrive may keep.
PRIOR_ATTEMPTS = "vip_prior_attempts"
# What a re-sent copy carried before it had a name of its own; read only on a message
# with no dead-letter reason (``vip_error_class``), which a re-sent copy never has.
LEGACY_PRIOR_ATTEMPTS, DEAD_LETTER_MARK = "vip_attempts", "vip_error_class"


class State(enum.Enum):
    RECEIVED = "received"  # held (and heartbeated); its handler has not started
    RUNNING = "running"  # its handler runs
    SETTLING = "settling"  # its outcome is decided: the delete, retry or DLQ call is under way
    HANDED_BACK = "handed_back"  # given back with visibility 0 (stop, blocked FIFO group)
    DONE = "done"  # let go: its slot is free, the heartbeat no longer extends it


SETTLED = frozenset({State.SETTLING, State.HANDED_BACK, State.DONE})


@dataclass(slots=True, eq=False)
class InFlight:
    """One received message, from its receive until the consumer lets it go.

    Its fate is settled exactly once (``settle``): whoever decides first (the
    handler's outcome, or a hand-back at shutdown) wins, later deciders do nothing.
    The heartbeat extends ``visible_until`` while it is not settled.
    """

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
    state: State = State.RECEIVED
    started: bool = False  # its handler was called (stays True once handed back)
    lost: bool = False  # SQS refused our receipt handle: stop extending it
    capped: bool = False  # the 12-hour cap left nothing to extend
    # The ledger (vip_worker.ledger), when the daemon claimed the message's job:
    delivery: str | None = None  # this receive's token, set by a successful claim
    attempts: int | None = None  # the job's attempts after the claim
    checkpoints: dict[str, Any] | None = None  # the job's checkpoints, as the claim read them
    lease_lost: bool = False  # another delivery (or a rescue) took the job since
    cancel_requested: bool = False  # the renewal found a cancel request (cancellation.py)
    received_epoch_s: float = 0.0  # wall time of this receive (a re-sent copy records it)

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
            received_epoch_s=time.time(),
        )

    @property
    def attempt(self) -> int:
        """This attempt's number: the ledger's when the daemon claimed the job, else the
        deliveries (a re-sent message adds the attempts before it, ``PRIOR_ATTEMPTS``)."""
        if self.attempts is not None:
            return self.attempts
        attrs = self.attributes
        prior = attrs.get(PRIOR_ATTEMPTS)
        if prior is None and DEAD_LETTER_MARK not in attrs:
            prior = attrs.get(LEGACY_PRIOR_ATTEMPTS)  # a copy re-sent by an older daemon
        value = (prior or {}).get("StringValue", "0")
        return (int(value) if value.isdigit() else 0) + self.receive_count

    @property
    def cap_at(self) -> float:
        """When SQS's 12-hour limit, counted from this receive, nears."""
        return self.received_at + MAX_VISIBILITY_S - CAP_MARGIN_S

    @property
    def settled(self) -> bool:
        """Its fate is decided (settling, handed back or done)."""
        return self.state in SETTLED

    def start(self) -> None:
        """Its handler starts (RECEIVED -> RUNNING)."""
        self.state = State.RUNNING
        self.started = True

    def settle(self, to: State = State.SETTLING) -> bool:
        """Claim the right to decide this message's fate; False if already decided.

        :param to: ``SETTLING`` (an outcome) or ``HANDED_BACK``.
        """
        if self.state in SETTLED:
            return False
        self.state = to
        return True

    def log_fields(self) -> dict[str, Any]:
        env = self.envelope
        if env is None:  # not parsed yet (a hand-back before dispatch): what the body says
            job_id, type_ = peek_ids(self.body)
        else:
            job_id, type_ = env.job_id, env.type
        return {
            "message_id": self.message_id,
            "job_id": job_id,
            "type": type_,
            "queue": self.queue.name,
            "receive_count": self.receive_count,
        }


def peek_ids(body: str) -> tuple[Any, Any]:
    """(jobId, type) of a body not parsed yet, for a log line; (None, None) if unreadable."""
    try:
        doc = json.loads(body)
    except (TypeError, ValueError, RecursionError):
        return None, None
    if not isinstance(doc, dict):
        return None, None
    job_id, type_ = doc.get("jobId"), doc.get("type")
    return (job_id if isinstance(job_id, str) else None,
            type_ if isinstance(type_, str) else None)
