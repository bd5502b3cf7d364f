"""Dead-letter queues: peek at one; receive and release for the redrive.

Every function takes a blocking ``vip_worker.sqs.boto.SqsClient`` (or any object
with the same methods); SQS errors (``vip_worker.sqs.api.TRANSPORT_ERRORS``) reach
the caller unchanged. Finding a queue's DLQ is ``vip_worker.sqs.queues``'s; moving
its messages back, ``vip_worker.ops.redrive``'s, with its ``vip_worker.ops.journal``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vip_worker import outcomes as retry
from vip_worker.sqs.limits import BATCH_MAX

if TYPE_CHECKING:
    from vip_worker.sqs.boto import SqsClient

PEEK_VISIBILITY_S = 30
REASON_ATTRIBUTES = (retry.ERROR_CLASS, retry.ERROR_TEXT, retry.ATTEMPTS,
                     retry.SOURCE_QUEUE, retry.SOURCE_MESSAGE_ID)
SYSTEM_ATTRIBUTES = ["ApproximateReceiveCount", "SentTimestamp", "MessageGroupId"]


# -- peek --------------------------------------------------------------------------------


def receive(client: SqsClient, url: str, count: int, visibility_s: int,
            wait_s: int | None = None) -> list[dict[str, Any]]:
    if wait_s is None:
        # A short poll of a standard queue asks only some SQS servers and can come back
        # empty while messages wait; a 1 s long poll asks all. FIFO: short polls (moto's
        # FIFO long polls are broken, and SQS's FIFO short polls are complete).
        wait_s = 0 if url.endswith(".fifo") else 1
    return client.receive_messages(url, min(count, BATCH_MAX), wait_s, visibility_s,
                                   SYSTEM_ATTRIBUTES)


def release(client: SqsClient, url: str, messages: list[dict[str, Any]]) -> list[str]:
    """Make ``messages`` visible again at once; return "id: code" of those SQS refused."""
    problems = []
    for start in range(0, len(messages), BATCH_MAX):
        chunk = messages[start:start + BATCH_MAX]
        failed = client.change_visibility_batch(url, [
            (str(i), m["ReceiptHandle"], 0) for i, m in enumerate(chunk)])
        for failure in failed:
            problems.append(f"{chunk[int(failure.id)]['MessageId']}: {failure.code}")
    return problems


def peek(client: SqsClient, url: str, count: int, visibility_s: int = PEEK_VISIBILITY_S
         ) -> tuple[list[dict[str, Any]], list[str]]:
    """Up to ``count`` messages of ``url``, left in the queue and visible again at once.

    Each is received with a short visibility (so the next receive returns others),
    then released with visibility 0, also when an error interrupts the peek.
    Returns the summaries and the messages SQS would not release (those come back
    after ``visibility_s``). Peeking counts as a receive (ApproximateReceiveCount).
    """
    held, problems = peek_messages(client, url, count, visibility_s)
    return [summary(m) for m in held], problems


def peek_messages(client: SqsClient, url: str, count: int,
                  visibility_s: int = PEEK_VISIBILITY_S
                  ) -> tuple[list[dict[str, Any]], list[str]]:
    """``peek``, the messages whole (body and attributes; their receipt handles are spent)."""
    held: list[dict[str, Any]] = []
    problems: list[str] = []
    try:
        while len(held) < count:
            batch = receive(client, url, count - len(held), visibility_s)
            fresh = [m for m in batch if m["MessageId"] not in {h["MessageId"] for h in held}]
            held += fresh
            if not fresh:
                break
    finally:
        if held:
            problems = release(client, url, held)
    return held[:count], problems


def discard(client: SqsClient, url: str, select: Callable[[dict[str, Any]], bool],
            limit: int, visibility_s: int = PEEK_VISIBILITY_S,
            scan_max: int | None = None) -> tuple[int, list[str]]:
    """Delete up to ``limit`` messages of ``url`` that ``select`` picks; the others
    received on the way are held (so each receive reaches new ones) and released at the
    end, also on an error (``select`` raising included). Returns how many were deleted
    and "id: code" of the refused.

    The scan is bounded: it stops once ``limit`` are deleted, once ``scan_max`` distinct
    messages were received (the DLQ's depth when the action began), at an empty receive,
    and at a receive that brings nothing new (what it held has become visible again: it
    went round the queue once; without this a DLQ larger than a visibility timeout's
    worth of receives would be scanned forever).
    """
    deleted, problems = 0, []
    held: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    try:
        while deleted < limit and (scan_max is None or len(seen) < scan_max):
            batch = receive(client, url, BATCH_MAX, visibility_s)
            fresh = {m["MessageId"]: m for m in batch if m["MessageId"] not in seen}
            # Held (with their latest receipt handles) before select runs: an exception
            # in it, or the end of the scan, releases them.
            held.update({m["MessageId"]: m for m in batch})
            if not fresh:
                break
            seen.update(fresh)
            chosen: list[dict[str, Any]] = []
            for message in fresh.values():  # select sees only what may be deleted
                if len(chosen) < limit - deleted and select(message):
                    chosen.append(message)
            for message in chosen:
                held.pop(message["MessageId"], None)
            if not chosen:
                continue
            failed = client.delete_batch(url, [(str(n), m["ReceiptHandle"])
                                               for n, m in enumerate(chosen)])
            deleted += len(chosen) - len(failed)
            problems += [f"{chosen[int(f.id)]['MessageId']}: {f.code}" for f in failed]
    finally:
        if held:
            problems += release(client, url, list(held.values()))
    return deleted, problems


def summary(message: dict[str, Any]) -> dict[str, Any]:
    """What ``dlq peek`` shows of a message: ids, reason attributes, never the payload."""
    attrs = message.get("MessageAttributes", {})
    system = message.get("Attributes", {})
    job_id = type_ = None
    try:
        body = json.loads(message.get("Body", ""))
    except (ValueError, RecursionError):  # RecursionError: a body nested too deep
        body = None
    if isinstance(body, dict):
        job_id, type_ = body.get("jobId"), body.get("type")
    sent_ms = system.get("SentTimestamp")
    return {
        "message_id": message["MessageId"],
        "job_id": job_id,
        "type": type_,
        "receive_count": int(system.get("ApproximateReceiveCount", 0)),
        "sent_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(sent_ms) / 1000))
        if sent_ms else None,
        "group_id": system.get("MessageGroupId"),
        "reason": {name: attrs[name].get("StringValue") for name in REASON_ATTRIBUTES
                   if name in attrs},
        "other_attributes": sorted(n for n in attrs if n not in REASON_ATTRIBUTES),
        "body_chars": len(message.get("Body", "")),
        "body_is_json": body is not None,
    }


def matcher(reason: str, type_: str) -> Callable[[dict[str, Any]], bool]:
    """A filter on ``summary``: ``reason`` a case-insensitive part of the error class or
    text, ``type_`` the message's type (empty: any)."""
    reason = reason.strip().lower()
    type_ = type_.strip()

    def matches(found: dict[str, Any]) -> bool:
        why = found.get("reason", {})
        text = f"{why.get(retry.ERROR_CLASS, '')} {why.get(retry.ERROR_TEXT, '')}".lower()
        return (not reason or reason in text) and (not type_ or found.get("type") == type_)

    return matches


def selector(selection: dict[str, Any] | None) -> Callable[[dict[str, Any]], bool]:
    """The messages a redrive's journalled selection picks (ops/journal.py): ``{"ids":
    [...]}`` those messages, ``{"reason": ..., "type": ...}`` those the filter matches,
    None every message."""
    if not selection:
        return lambda message: True
    if "ids" in selection:
        ids = set(selection["ids"])
        return lambda message: message["MessageId"] in ids
    matches = matcher(str(selection.get("reason", "")), str(selection.get("type", "")))
    return lambda message: matches(summary(message))


def describe_selection(selection: dict[str, Any]) -> str:
    if "ids" in selection:
        return f"the {len(selection['ids'])} selected message(s)"
    parts = [f"{k} {selection[k]!r}" for k in ("reason", "type") if selection.get(k)]
    return f"the messages matching {' and '.join(parts)}" if parts else "every message"


def describe_error(exc: BaseException) -> str:
    """An SQS failure in one line for a command's error message: its code and text."""
    from vip_worker.sqs.api import error_code

    return f"{error_code(exc)}: {str(exc)[:300]}"
