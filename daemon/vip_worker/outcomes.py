"""Pure decisions about a handled message: ack, retry, defer or dead-letter (``decide``),
backoff and deferral delays, and dead-letter attributes.

``decide`` is the one rule: the consumer acts on it and ``vip_worker.testing.run_handler``
reports it, so a plugin's tests see what the daemon would do.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vip_worker.errors import (
    Deferred,
    DependencyUnavailable,
    JobCancelled,
    PermanentError,
    RetryLater,
)
from vip_worker.inflight import InFlight
from vip_worker.sqs.limits import MAX_ATTRIBUTES, MAX_MESSAGE_BYTES

MAX_EXPONENT = 30
REASON_SHORT = 100
REASON_MAX = 1000
# The attributes vip-worker adds to a dead-lettered message; `dlq peek` reads them.
ERROR_CLASS = "vip_error_class"
ERROR_TEXT = "vip_error"
ATTEMPTS = "vip_attempts"  # not a re-sent message's (inflight.PRIOR_ATTEMPTS)
SOURCE_QUEUE = "vip_source_queue"
SOURCE_MESSAGE_ID = "vip_source_message_id"
# A deferral's jitter: up to this fraction of its delay, and at least DEFER_JITTER_MIN_S, so
# messages deferred together (a provider's pause) come back spread out, not in one wave.
DEFER_JITTER = 0.2
DEFER_JITTER_MIN_S = 1.0


class Action(enum.Enum):
    """What becomes of a handled message."""

    ACK = "ack"  # delete it: the handler succeeded
    RETRY = "retry"  # hide it for a delay; SQS delivers it again
    DEAD_LETTER = "dead_letter"  # copy it to the DLQ with the reason, then delete it
    CANCEL = "cancel"  # delete it: the job was cancelled (never retried, never dead-lettered)
    # hide it for a delay, its job released with the attempt refunded: not the job's fault
    # (a quota, a provider's pause, a budget); never dead-lettered, never an attempt
    DEFER = "defer"


@dataclass(frozen=True, slots=True)
class Decision:
    """``decide``'s answer.

    :ivar action: ack, retry, defer, cancel or dead-letter.
    :ivar delay_s: for a retry or a deferral, seconds before the message is visible again
        (before the consumer clips it to SQS's limits); None otherwise.
    :ivar error: the handler's exception, None for an ack.
    """

    action: Action
    delay_s: float | None = None
    error: BaseException | None = None

    @property
    def reason(self) -> str:
        """What a dead letter records (``ErrorClass: text``); '' for an ack."""
        return reason_of(self.error) if self.error is not None else ""


def decide(error: BaseException | None, attempt: int, max_attempts: int,
           backoff_base_s: float, backoff_max_s: float,
           rand: Callable[[], float] = random.random) -> Decision:
    """The outcome of one attempt from the handler's exception (None: it returned).

    ``attempt``: the job's attempts in the ledger when the daemon tracks the job, else
    the message's deliveries (``InFlight.attempt``).

    - no error: ack;
    - ``JobCancelled``: cancel (delete the message; the job ends ``cancelled``);
    - ``Deferred``: defer after its ``delay_s`` plus jitter (``defer_delay``), whatever
      the attempt: a deferral is not an attempt;
    - ``PermanentError`` (a malformed message, an unknown type too): dead-letter;
    - any other error on the last attempt (``attempt >= max_attempts``):
      dead-letter, except ``DependencyUnavailable``: an outage of the worker's own
      dependency is never the job's last attempt;
    - else retry after ``RetryLater.delay_s`` when given, else the backoff
      (``retry_delay``).
    """
    if error is None:
        return Decision(Action.ACK)
    if isinstance(error, JobCancelled):
        return Decision(Action.CANCEL, error=error)
    if isinstance(error, Deferred):
        return Decision(Action.DEFER, delay_s=defer_delay(error.delay_s, rand), error=error)
    exhausted = attempt >= max_attempts and not isinstance(error, DependencyUnavailable)
    if isinstance(error, PermanentError) or exhausted:
        return Decision(Action.DEAD_LETTER, error=error)
    if isinstance(error, RetryLater) and error.delay_s is not None:
        delay = error.delay_s
    else:
        delay = retry_delay(attempt, backoff_base_s, backoff_max_s, rand)
    return Decision(Action.RETRY, delay_s=delay, error=error)


def retry_delay(attempt: int, base_s: float, max_s: float,
                rand: Callable[[], float] = random.random) -> float:
    """Exponential backoff with "equal jitter" from the attempt (``decide``).

    Attempt n waits between half and all of ``min(max_s, base_s * 2**(n-1))``:
    retries of many messages that failed together spread out instead of
    returning in one wave.
    """
    exponent = min(max(attempt - 1, 0), MAX_EXPONENT)
    ceiling = min(max_s, base_s * 2**exponent)
    return ceiling / 2 + rand() * ceiling / 2


def defer_delay(delay_s: float, rand: Callable[[], float] = random.random) -> float:
    """A deferral's delay: ``delay_s`` (never below 0) plus up to ``DEFER_JITTER`` of it,
    at least up to ``DEFER_JITTER_MIN_S``: when a budget refills or a pause ends, the
    messages that waited for it restart spread out, not all at once."""
    delay_s = max(0.0, delay_s)
    return delay_s + rand() * max(DEFER_JITTER_MIN_S, delay_s * DEFER_JITTER)


def reason_of(error: BaseException) -> str:
    text = str(error).strip() or "(no message)"
    return f"{type(error).__name__}: {text}"[:REASON_MAX]


def dead_letter_attributes(item: InFlight, error: BaseException,
                           max_bytes: int = MAX_MESSAGE_BYTES) -> dict[str, dict[str, Any]]:
    """The original message attributes plus the reason, within the DLQ's limits.

    At most 10 attributes, and body plus attributes within ``max_bytes`` (the DLQ's
    ``MaximumMessageSize``, 1 MiB by default): a body near the
    limit first loses the original attributes, then a long reason is shortened,
    then only what fits of the source message id, class and attempts is kept. The
    message always reaches the DLQ; its reason is at worst in the log line only.
    """
    reason = (str(error).strip() or "(no message)")[:REASON_MAX]
    # In priority order: `dlq peek` and `dlq redrive` need the source message id first.
    ours = {
        SOURCE_MESSAGE_ID: string_attr(item.message_id),
        ERROR_CLASS: string_attr(type(error).__name__),
        ATTEMPTS: {"DataType": "Number", "StringValue": str(item.attempt)},
        SOURCE_QUEUE: string_attr(item.queue.name),
        ERROR_TEXT: string_attr(reason),
    }
    kept = carried_attributes(item, ours)
    budget = max_bytes - len(item.body.encode("utf-8", "surrogatepass"))
    if attributes_size(kept) + attributes_size(ours) <= budget:
        return {**kept, **ours}
    if len(reason) > REASON_SHORT:
        ours[ERROR_TEXT] = string_attr(reason[:REASON_SHORT - 3] + "...")
    fitting: dict[str, dict[str, Any]] = {}
    for name, value in ours.items():
        size = attributes_size({name: value})
        if size <= budget:
            fitting[name] = value
            budget -= size
    return fitting


def attributes_size(attributes: dict[str, dict[str, Any]]) -> int:
    """Bytes SQS counts for these attributes: name, data type and value of each."""
    size = 0
    for name, value in attributes.items():
        size += len(name.encode()) + len(value.get("DataType", "").encode())
        if "StringValue" in value:
            size += len(value["StringValue"].encode("utf-8", "surrogatepass"))
        if "BinaryValue" in value:
            size += len(value["BinaryValue"])
    return size


def string_attr(text: str) -> dict[str, str]:
    return {"DataType": "String", "StringValue": text or "-"}


def carried_attributes(item: InFlight, ours: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The message's own attributes a copy of it carries (a dead letter, a re-sent copy):
    as many as fit beside ``ours`` under SQS's limit, those named in ``ours`` left out,
    each reduced to the fields SendMessage takes."""
    kept: dict[str, dict[str, Any]] = {}
    for name, value in item.attributes.items():
        if name in ours or len(kept) + len(ours) >= MAX_ATTRIBUTES:
            continue
        clean = {k: value[k] for k in ("DataType", "StringValue", "BinaryValue") if k in value}
        if "DataType" in clean:
            kept[name] = clean
    return kept
