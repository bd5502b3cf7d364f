"""Re-send a message as a fresh one before SQS's redrive policy can take it silently.

SQS moves a message to the DLQ at the receive after its ``ApproximateReceiveCount``
reached the queue's ``maxReceiveCount``, with no reason and without any consumer seeing
it. Hand-backs, receives lost with killed pollers and ``BUSY`` claims spend that count
without being attempts, so the daemon, not the redrive, decides when a message is done:
a message to be retried or handed back whose receive count has reached
``maxReceiveCount`` is sent again as a new message (same body and attributes, plus
``vip_prior_attempts``, its attempts so far, and ``vip_first_receive``, epoch milliseconds of
its first receive) and the old one deleted (tried up to ``DELETE_TRIES`` times: an
old message left behind would reach the DLQ silently; ``message.resend_delete_failed``).
The redrive policy stays as a backstop for a poller that dies holding the message.

The copy waits the retry delay (at most SQS's 900 s of ``DelaySeconds``). On a FIFO
queue it keeps its ``MessageGroupId`` with a new deduplication id, and, FIFO queues
having no per-message delay, goes to the end of its group at once.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from vip_worker.inflight import PRIOR_ATTEMPTS, InFlight
from vip_worker.outcomes import carried_attributes
from vip_worker.sqs.api import TRANSPORT_ERRORS, SqsApi, error_code

log = logging.getLogger("vip_worker.resend")
FIRST_RECEIVE = "vip_first_receive"
MAX_DELAY_S = 900  # SQS's DelaySeconds limit
# Deletes of the old message after its copy was sent: a failure left alone means the old
# message comes back, spends its last receive, and SQS moves it to the DLQ with no reason.
DELETE_TRIES = 3
# The receipt handle is no longer valid: trying again cannot help.
RECEIPT_GONE = ("ReceiptHandleIsInvalid", "InvalidParameterValue")


def copy_attributes(item: InFlight) -> dict[str, dict[str, Any]]:
    """The message's own attributes (as many as fit beside ours) plus the attempts so far
    and the first receive's time (kept from an earlier copy)."""
    first = item.attributes.get(FIRST_RECEIVE, {}).get("StringValue")
    if not first:
        first = str(int((item.received_epoch_s or time.time()) * 1000))
    ours = {PRIOR_ATTEMPTS: {"DataType": "Number", "StringValue": str(item.attempt)},
            FIRST_RECEIVE: {"DataType": "Number", "StringValue": first}}
    return {**carried_attributes(item, ours), **ours}


class Resender:
    """Re-sends a consumer's messages that SQS's redrive would take at their next receive.

    :param max_receives: each queue's ``maxReceiveCount`` by name (a queue without a
        redrive policy is absent: nothing to pre-empt).
    :param deleters: the consumer's delete batchers by queue name.
    """

    def __init__(self, sqs: SqsApi, deleters: dict, max_receives: dict[str, int]) -> None:
        self.sqs = sqs
        self.deleters = deleters
        self.max_receives = max_receives
        self.resent = 0

    def due(self, item: InFlight, margin: int = 0) -> bool:
        """Whether the next receive of this message would let SQS move it to the DLQ (with
        ``margin``: whether it would within ``margin`` more receives)."""
        limit = self.max_receives.get(item.queue.name)
        return limit is not None and item.receive_count >= limit - margin

    async def resend(self, item: InFlight, delay_s: int, reason: str, margin: int = 0) -> bool:
        """When ``due`` (with ``margin``): send the copy, then delete this message. True when
        the copy was sent; False: not due, or the send failed (the caller changes the
        visibility)."""
        if not self.due(item, margin):
            return False
        fifo = item.queue.fifo
        try:
            message_id = await self.sqs.send(
                item.queue.url, item.body, copy_attributes(item),
                item.group_id if fifo else None, uuid.uuid4().hex if fifo else None,
                0 if fifo else min(max(0, delay_s), MAX_DELAY_S))
        except TRANSPORT_ERRORS as exc:
            log.error("message.resend_failed", extra={
                **item.log_fields(), "reason": reason, "error_code": error_code(exc),
                "error": str(exc)[:500]})
            return False
        failure = None
        for _ in range(DELETE_TRIES):
            failure = await self.deleters[item.queue.name].add((item.receipt,))
            if failure is None or failure.code in RECEIPT_GONE:
                break
        if failure is not None:
            # The copy runs the job; the old message will reach the DLQ with no reason.
            log.error("message.resend_delete_failed", extra={
                **item.log_fields(), "reason": reason, "new_message_id": message_id,
                "error_code": failure.code, "tries": DELETE_TRIES})
        self.resent += 1
        log.warning("message.resent", extra={
            **item.log_fields(), "reason": reason, "new_message_id": message_id,
            "attempt": item.attempt, "delay_s": 0 if fifo else min(delay_s, MAX_DELAY_S),
            "delete_failed": failure.code if failure else None})
        return True
