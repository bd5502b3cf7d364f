"""Queues and their dead-letter queues: names, ARNs, depths, and the DLQ of a queue.

One implementation for the poller (asynchronous, through ``SqsApi``) and the
``status`` and ``dlq`` commands (blocking, through ``SqsClient``): both read the
DLQ from the queue's RedrivePolicy with ``redrive_target``. ``is_missing_queue``,
``never_sent`` and ``queue_exists`` tell the boot's check and the producer which
failures are definite (the queue does not exist; nothing reached SQS).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

import botocore.exceptions

from vip_worker.sqs.api import TRANSPORT_ERRORS, ClientError, SqsApi, error_code
from vip_worker.sqs.limits import MAX_MESSAGE_BYTES

if TYPE_CHECKING:
    from vip_worker.sqs.boto import SqsClient

COUNT_ATTRIBUTES = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                    "ApproximateNumberOfMessagesDelayed"]
log = logging.getLogger("vip_worker.sqs.queues")
# SQS's answer that a queue does not exist: the query protocol's code, which boto3 reports
# as ``Code`` over the JSON protocol too, and the JSON protocol's own (its
# ``QueryErrorCode``, and the modeled exception's name).
NONEXISTENT_QUEUE_CODES = frozenset({"AWS.SimpleQueueService.NonExistentQueue",
                                     "QueueDoesNotExist"})
class DlqLookupFailed(Exception):
    """The poller could not read a queue's RedrivePolicy or find its DLQ's URL."""


def queue_name(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def is_missing_queue(exc: BaseException) -> bool:
    """Whether SQS answered that the queue does not exist (a definite answer: the URL
    or name is wrong, or the queue was deleted), as opposed to any other failure."""
    if not isinstance(exc, ClientError):
        return False
    error = exc.response.get("Error", {})
    return bool({error.get("Code"), error.get("QueryErrorCode")} & NONEXISTENT_QUEUE_CODES)


def never_sent(exc: BaseException) -> bool:
    """Whether a failed call certainly did nothing at SQS (so a SendMessage sent nothing):
    no request could be signed, or SQS answered the call's only attempt with an error.
    botocore retries, and raises what the LAST attempt met: an error answer or a refused
    connection after a retry may follow an attempt that timed out after SQS had acted, so
    those are not certain (False; a job left ``queued`` is the lifeline's to send again)."""
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return True
    if isinstance(exc, ClientError):
        return exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0) == 0
    return False


def redrive_target(attributes: dict[str, str]) -> tuple[str, str] | None:
    """(name, owner account) of the DLQ a queue's RedrivePolicy names; None: no policy.
    The account is empty when the ARN has none (the caller's own account then).

    :raises ValueError: the policy is not JSON.
    """
    policy = json.loads(attributes.get("RedrivePolicy") or "{}")
    arn = policy.get("deadLetterTargetArn", "")
    if not arn:
        return None
    parts = arn.split(":")  # arn:aws:sqs:<region>:<account>:<name>; may be another account
    return parts[-1], parts[-2] if len(parts) >= 6 else ""


def redrive_max_receives(attributes: dict[str, str]) -> int | None:
    """The RedrivePolicy's ``maxReceiveCount``; None: no policy (or none readable).

    :raises ValueError: the policy is not JSON.
    """
    policy = json.loads(attributes.get("RedrivePolicy") or "{}")
    value = policy.get("maxReceiveCount")
    if value is None or not policy.get("deadLetterTargetArn"):
        return None
    return int(value)


# -- for the poller -------------------------------------------------------------------------


async def resolve_dlq(sqs: SqsApi, queue) -> str | None:
    """The queue's DLQ: its setting, else its RedrivePolicy's target; None if it has none.

    :raises DlqLookupFailed: SQS could not be asked, or answered what cannot be used.
    """
    if queue.dlq_url:
        return queue.dlq_url
    try:
        target = redrive_target(await sqs.queue_attributes(queue.url, ["RedrivePolicy"]))
        if target:
            return await sqs.queue_url(*target)
    except (*TRANSPORT_ERRORS, ValueError) as exc:
        # Fatal for this poller: serving without knowing the DLQ could strand
        # poison messages. The arbiter replaces the poller with backoff.
        raise DlqLookupFailed(f"queue {queue.name}: {error_code(exc)}: {str(exc)[:300]}") from exc
    log.warning("queue.no_dlq", extra={
        "queue": queue.name, "detail": "malformed and failed messages are left to the "
                                       "queue's redrive policy; set dlq_url"})
    return None


async def max_receive_count(sqs: SqsApi, queue) -> int | None:
    """The queue's RedrivePolicy ``maxReceiveCount``, which the consumer re-sends messages
    before reaching (``vip_worker.resend``). Not fatal when it cannot be read: None, and
    the redrive policy decides alone, as before."""
    try:
        return redrive_max_receives(await sqs.queue_attributes(queue.url, ["RedrivePolicy"]))
    except (*TRANSPORT_ERRORS, ValueError, TypeError) as exc:
        log.warning("queue.redrive_unknown", extra={
            "queue": queue.name, "error_code": error_code(exc), "error": str(exc)[:300]})
        return None


async def dlq_size_limit(sqs: SqsApi, queue_name: str, dlq_url: str) -> int:
    """The DLQ's ``MaximumMessageSize``, which dead-letter copies are budgeted to.

    Not fatal when it cannot be read (a role may send to a DLQ without the right to
    read its attributes): then SQS's 1 MiB, and a copy the DLQ refuses as too large
    goes again as the body alone.
    """
    try:
        attrs = await sqs.queue_attributes(dlq_url, ["MaximumMessageSize"])
        return int(attrs.get("MaximumMessageSize", MAX_MESSAGE_BYTES))
    except (*TRANSPORT_ERRORS, ValueError) as exc:
        log.warning("queue.dlq_size_unknown", extra={
            "queue": queue_name, "dlq_url": dlq_url, "error_code": error_code(exc),
            "assumed_bytes": MAX_MESSAGE_BYTES})
        return MAX_MESSAGE_BYTES


# -- for the commands (blocking; SQS's errors reach the caller) ----------------------------


def resolve_dlq_url(client: SqsClient, queue_url: str, dlq_url: str = "") -> str | None:
    """The DLQ: ``dlq_url`` if set, else the target of the queue's RedrivePolicy, else None.

    :raises ValueError: the RedrivePolicy is not JSON.
    """
    if dlq_url:
        return dlq_url
    target = redrive_target(client.queue_attributes(queue_url, ["RedrivePolicy"]))
    return client.queue_url(*target) if target else None


def queue_exists(client: SqsClient, url: str) -> bool:
    """Ask SQS for the queue's ARN: False only when SQS answers that it does not exist.

    :raises TRANSPORT_ERRORS: any other failure (unreachable, throttled, denied): the
        question is left open, for the caller to treat as such.
    """
    try:
        client.queue_attributes(url, ["QueueArn"])
    except ClientError as exc:
        if is_missing_queue(exc):
            return False
        raise
    return True


def counts(client: SqsClient, url: str) -> dict[str, int]:
    """``visible``, ``in_flight``, ``delayed`` and their sum ``depth`` (approximate on SQS)."""
    attrs = client.queue_attributes(url, COUNT_ATTRIBUTES)
    visible, in_flight, delayed = (int(attrs.get(name, 0)) for name in COUNT_ATTRIBUTES)
    return {"visible": visible, "in_flight": in_flight, "delayed": delayed,
            "depth": visible + in_flight + delayed}


def queue_arn(client: SqsClient, url: str) -> str:
    return client.queue_attributes(url, ["QueueArn"])["QueueArn"]
