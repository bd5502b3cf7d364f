"""Dead-letter queues: peek at one, and move its messages back.

Every function takes a blocking ``vip_worker.sqs.boto.SqsClient`` (or any object
with the same methods); SQS errors (``vip_worker.sqs.api.TRANSPORT_ERRORS``) reach
the caller unchanged. Finding a queue's DLQ is ``vip_worker.sqs.queues``'s.

The manual move is made safe against a crash by a ``Journal``: one line per
state change of a DLQ message, fsynced before the next SQS call relies on it::

    (absent) -> sending -> sent -> deleted
                sending -> unsent          (SQS refused the entry; absent again)

A later run sends again only what is absent, ``unsent`` or ``sending``; a
message journalled ``sent`` is only deleted from the DLQ, never sent twice.
``sending`` is the one window of doubt (the call may or may not have reached
SQS before the crash): such a message is sent again, so it may arrive twice but
is never lost. FIFO targets get the DLQ MessageId as MessageDeduplicationId,
which makes that resend a no-op within SQS's 5-minute deduplication window.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vip_worker import outcomes as retry
from vip_worker.sqs.api import SendEntry
from vip_worker.sqs.limits import BATCH_MAX, MAX_ATTRIBUTES
from vip_worker.sqs.queues import queue_name

if TYPE_CHECKING:
    from vip_worker.sqs.boto import SqsClient

PEEK_VISIBILITY_S = 30
MOVE_VISIBILITY_S = 60
REASON_ATTRIBUTES = (retry.ERROR_CLASS, retry.ERROR_TEXT, retry.ATTEMPTS,
                     retry.SOURCE_QUEUE, retry.SOURCE_MESSAGE_ID)
REDRIVEN_FROM = "vip_redriven_from"
SYSTEM_ATTRIBUTES = ["ApproximateReceiveCount", "SentTimestamp", "MessageGroupId"]

SENDING, SENT, UNSENT, DELETED = "sending", "sent", "unsent", "deleted"
PENDING = (SENDING, SENT)


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
    return [summary(m) for m in held[:count]], problems


def summary(message: dict[str, Any]) -> dict[str, Any]:
    """What ``dlq peek`` shows of a message: ids, reason attributes, never the payload."""
    attrs = message.get("MessageAttributes", {})
    system = message.get("Attributes", {})
    job_id = type_ = None
    try:
        body = json.loads(message.get("Body", ""))
    except ValueError:
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


# -- the journal ---------------------------------------------------------------------------


class JournalBusy(Exception):
    """Another redrive holds the journal's lock."""


class Journal:
    """Append-only JSON lines ``{"id", "state", ...}``; the last line of an id wins.

    A ``<path>.lock`` file, held with ``flock`` for the run, keeps two redrives
    of one DLQ apart. ``close()`` rewrites the file with only the pending
    entries (``sending``, ``sent``), or removes it when nothing is pending.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        self.lock_fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.lock_fd)
            raise JournalBusy(f"another redrive holds {path}.lock") from None
        try:
            self.entries = read_journal(path)
            self.fh = open(path, "a", encoding="utf-8")
            sync_dir(directory)
        except BaseException:
            os.close(self.lock_fd)
            raise

    def state(self, message_id: str) -> str | None:
        row = self.entries.get(message_id)
        return row["state"] if row else None

    def pending(self) -> dict[str, str]:
        return {i: r["state"] for i, r in self.entries.items() if r["state"] in PENDING}

    def record(self, rows: list[dict[str, Any]]) -> None:
        """Append ``rows`` (each with ``id`` and ``state``) and fsync before returning."""
        if not rows:
            return
        now = round(time.time(), 3)
        for row in rows:
            row.setdefault("at", now)
            self.entries[row["id"]] = {**self.entries.get(row["id"], {}), **row}
        self.fh.write("".join(json.dumps(row) + "\n" for row in rows))
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        self.fh.close()
        keep = [r for r in self.entries.values() if r["state"] in PENDING]
        if keep:
            tmp = f"{self.path}.tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write("".join(json.dumps(r) + "\n" for r in keep))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        elif os.path.exists(self.path):
            os.unlink(self.path)
        sync_dir(os.path.dirname(os.path.abspath(self.path)))
        os.close(self.lock_fd)

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def read_journal(path: str) -> dict[str, dict[str, Any]]:
    entries: dict[str, dict[str, Any]] = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    row = json.loads(line)
                    entries[row["id"]] = {**entries.get(row["id"], {}), **row}
                except (ValueError, KeyError, TypeError):
                    continue  # a line torn by a crash mid-write: its state never became durable
    return entries


def sync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- redrive ----------------------------------------------------------------------------------


@dataclass
class RedriveResult:
    moved: int = 0  # sent and deleted from the DLQ in this run
    skipped: int = 0  # sent by an earlier run (journal): only deleted now
    failed: int = 0  # the send or the delete failed: still in the DLQ
    resent: int = 0  # journalled "sending" by a run that stopped: sent again
    errors: list[str] = field(default_factory=list)


def move_messages(client: SqsClient, dlq_url: str, target_of: Callable[[dict], str],
                  journal: Journal, result: RedriveResult, max_messages: int | None = None,
                  visibility_s: int = MOVE_VISIBILITY_S, wait_s: int | None = None) -> None:
    """Move messages from ``dlq_url`` to ``target_of(message)`` until the DLQ is empty.

    Updates ``result`` as it goes, so the counts survive an exception. A batch
    interrupted by an exception is released (visibility 0) before it propagates.
    Messages SQS refused are left invisible for ``visibility_s`` so this run does
    not receive them again; they stay in the DLQ for the next run.
    """
    given_up: set[str] = set()
    while True:
        handled = result.moved + result.skipped + result.failed
        if max_messages is not None and handled >= max_messages:
            return
        room = BATCH_MAX if max_messages is None else max_messages - handled
        messages = receive(client, dlq_url, room, visibility_s, wait_s)
        batch = [m for m in messages if m["MessageId"] not in given_up]
        if not batch:
            break  # empty, or only messages that already failed in this run came back
        try:
            failed = move_batch(client, dlq_url, batch, target_of, journal, result)
        except BaseException:
            try:
                release(client, dlq_url, batch)  # what the journal says is done stays done
            except Exception:  # noqa: BLE001 - best effort; they reappear after visibility_s
                pass
            raise
        given_up.update(failed)


def move_batch(client: SqsClient, dlq_url: str, batch: list[dict], target_of: Callable[[dict], str],
               journal: Journal, result: RedriveResult) -> set[str]:
    """Send, journal, delete one received batch; return the ids that failed."""
    by_id: dict[str, list[dict]] = {}
    for message in batch:  # a standard queue may hand out one message twice
        by_id.setdefault(message["MessageId"], []).append(message)
    done_before = [i for i in by_id if journal.state(i) in (SENT, DELETED)]
    to_send = [i for i in by_id if i not in done_before]
    result.resent += sum(1 for i in to_send if journal.state(i) == SENDING)
    targets = {i: target_of(by_id[i][0]) for i in to_send}
    # absent -> sending: durable before the send, so a crash leaves a trace.
    journal.record([{"id": i, "state": SENDING, "target": targets[i]} for i in to_send])
    sent, failed = send(client, {i: by_id[i][0] for i in to_send}, targets, journal, result)
    deletable = [m for i in (*done_before, *sent) for m in by_id[i]]
    deleted = delete(client, dlq_url, deletable, result)
    # sent -> deleted
    journal.record([{"id": i, "state": DELETED} for i in (*done_before, *sent) if i in deleted])
    for i in done_before:
        if i in deleted:
            result.skipped += 1
    for i in sent:
        if i in deleted:
            result.moved += 1
    not_deleted = {i for i in (*done_before, *sent) if i not in deleted}
    result.failed += len(failed) + len(not_deleted)
    return failed | not_deleted


def send(client: SqsClient, messages: dict[str, dict], targets: dict[str, str], journal: Journal,
         result: RedriveResult) -> tuple[list[str], set[str]]:
    """SendMessageBatch per target; journal ``sent`` / ``unsent`` per entry."""
    sent: list[str] = []
    failed: set[str] = set()
    for target in sorted(set(targets.values())):
        ids = [i for i in messages if targets[i] == target]
        for start in range(0, len(ids), BATCH_MAX):
            chunk = ids[start:start + BATCH_MAX]
            accepted, refused = client.send_batch(target, [
                send_entry(str(n), messages[i], target) for n, i in enumerate(chunk)])
            rows = []
            for entry_id, new_id in accepted.items():
                i = chunk[int(entry_id)]
                sent.append(i)
                rows.append({"id": i, "state": SENT, "new_id": new_id})  # sending -> sent
            for bad in refused:
                i = chunk[int(bad.id)]
                failed.add(i)
                rows.append({"id": i, "state": UNSENT})  # sending -> unsent
                result.errors.append(f"{i}: send to {queue_name(target)} failed: "
                                     f"{bad.code}: {bad.message}")
            journal.record(rows)
    return sent, failed


def send_entry(entry_id: str, message: dict[str, Any], target_url: str) -> SendEntry:
    """The same body and attributes, minus the dead-letter reason, plus vip_redriven_from."""
    attributes = {
        name: {k: value[k] for k in ("DataType", "StringValue", "BinaryValue") if k in value}
        for name, value in message.get("MessageAttributes", {}).items()
        if name not in REASON_ATTRIBUTES and name != REDRIVEN_FROM}
    if len(attributes) < MAX_ATTRIBUTES:
        attributes[REDRIVEN_FROM] = retry.string_attr(message["MessageId"])
    if not target_url.endswith(".fifo"):
        return SendEntry(entry_id, message["Body"], attributes or None)
    group = message.get("Attributes", {}).get("MessageGroupId") or "vip-redrive"
    return SendEntry(entry_id, message["Body"], attributes or None, group, message["MessageId"])


def delete(client: SqsClient, dlq_url: str, messages: list[dict], result: RedriveResult
           ) -> set[str]:
    """DeleteMessageBatch; return the MessageIds whose every copy was deleted."""
    refused: set[str] = set()
    for start in range(0, len(messages), BATCH_MAX):
        chunk = messages[start:start + BATCH_MAX]
        failed = client.delete_batch(dlq_url, [
            (str(n), m["ReceiptHandle"]) for n, m in enumerate(chunk)])
        for bad in failed:
            i = chunk[int(bad.id)]["MessageId"]
            refused.add(i)
            result.errors.append(f"{i}: sent, but the delete from the DLQ failed: "
                                 f"{bad.code} (the next run deletes it, not resends)")
    return {m["MessageId"] for m in messages} - refused
