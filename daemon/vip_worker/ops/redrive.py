"""The manual redrive: move the messages a DLQ holds now back to their queue, each once.

Bounded and exact while daemons keep dead-lettering (the issue "No job left
behind": a redrive that never ended, moving the same poison messages round and
round). A redrive moves only what the DLQ held when it began:

- **a budget**: the DLQ's depth when the redrive began (``plan``, journalled); it
  stops once that many messages are moved (or failed), so messages dead-lettered
  later, whatever they are, wait for the next redrive;
- **recognition**: a DLQ message that is a copy of one this redrive moved is never
  moved again, nor counted (``came_back``): the daemon's dead-letter copy names
  the message it came from (``vip_source_message_id`` = the id the redrive's send
  got, ``vip_redriven_from`` = the DLQ id it was moved from, both kept by
  ``outcomes.dead_letter_attributes``), and SQS's own RedrivePolicy moves a
  message with its MessageId. Such copies are held invisible while the run goes on
  and made visible again at its end;
- it also stops when a receive comes back empty, and, with ``stop()`` (the
  command's Ctrl-C), after the batch in hand.

Exactly once rests on the ``vip_worker.ops.journal.Journal``: ``sending`` is
durable before the send, ``sent`` (with the new MessageId) before the delete. A
later run sends again only what is absent, ``unsent`` or ``sending``; a message
journalled ``sent`` is only deleted from the DLQ, never sent twice. ``sending`` is
the one window of doubt (a crash inside the send call): such a message is sent
again, so it may arrive twice but is never lost. FIFO targets get the DLQ
MessageId as MessageDeduplicationId, which makes that resend a no-op within SQS's
5-minute deduplication window. Every function takes a blocking ``SqsClient``;
SQS errors (``TRANSPORT_ERRORS``) reach the caller unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vip_worker import outcomes
from vip_worker.ops.dlq import REASON_ATTRIBUTES, receive, release
from vip_worker.ops.journal import DELETED, MOVED, SENDING, SENT, UNSENT, Journal
from vip_worker.sqs.api import SendEntry
from vip_worker.sqs.limits import BATCH_MAX, MAX_ATTRIBUTES
from vip_worker.sqs.queues import counts, queue_name

if TYPE_CHECKING:
    from vip_worker.sqs.boto import SqsClient

MOVE_VISIBILITY_S = 60
REDRIVEN_FROM = "vip_redriven_from"
# Why move_messages stopped.
DONE_BUDGET = "budget"  # moved as many as the DLQ held when the redrive began (or --max)
DONE_EMPTY = "empty"  # nothing left it may move
STOPPED = "stopped"  # stop() said so: the redrive is not finished
DONE_SCANNED = "scanned"  # a selective redrive looked at every message it may (scan_max)


@dataclass
class RedriveResult:
    moved: int = 0  # sent and deleted from the DLQ in this run
    skipped: int = 0  # sent by an earlier run (journal): only deleted now
    failed: int = 0  # the send or the delete failed: still in the DLQ
    resent: int = 0  # journalled "sending" by a run that stopped: sent again
    came_back: int = 0  # copies of messages this redrive moved, dead-lettered again: left
    errors: list[str] = field(default_factory=list)

    @property
    def handled(self) -> int:
        return self.moved + self.skipped + self.failed


def plan(client: SqsClient, dlq_url: str, journal: Journal) -> int:
    """How many messages this run may handle: the DLQ's depth when the redrive began
    (journalled by the first run, kept by the runs that continue it) minus those moved."""
    if journal.run is None:
        journal.begin(counts(client, dlq_url)["depth"])
    return max(0, int(journal.run["budget"]) - journal.count(DELETED))


def came_back(message: dict[str, Any], journal: Journal) -> bool:
    """Whether this DLQ message is a copy of one this redrive already moved."""
    message_id = message["MessageId"]
    if journal.state(message_id) is not None:
        return False  # one of the originals (being moved, or to finish)
    attrs = message.get("MessageAttributes", {})
    source = attrs.get(outcomes.SOURCE_MESSAGE_ID, {}).get("StringValue")
    origin = attrs.get(REDRIVEN_FROM, {}).get("StringValue")
    return (message_id in journal.new_ids  # SQS's RedrivePolicy keeps the MessageId
            or source in journal.new_ids  # the daemon's dead-letter copy
            or (origin is not None and journal.state(origin) in MOVED))


def move_messages(client: SqsClient, dlq_url: str, target_of: Callable[[dict], str],
                  journal: Journal, result: RedriveResult, limit: int | None = None,
                  visibility_s: int = MOVE_VISIBILITY_S, wait_s: int | None = None,
                  stop: Callable[[], bool] = lambda: False, batch_max: int = BATCH_MAX,
                  select: Callable[[dict], bool] = lambda message: True,
                  scan_max: int | None = None) -> str:
    """Move messages from ``dlq_url`` to ``target_of(message)``, at most ``limit`` (the
    ``plan``), until a receive comes back empty; return why it stopped: ``DONE_BUDGET``,
    ``DONE_EMPTY``, ``DONE_SCANNED`` or ``STOPPED``. Only the messages ``select`` picks
    move (the dashboard's selection); the others are held as copies that came back are.
    With ``scan_max`` (a selection: the DLQ's depth when it began) it also stops once that
    many distinct messages were received, or at a receive that brings none it has not
    seen (what it held is visible again: it went round the DLQ), so a selection never
    scans a large DLQ forever.

    Updates ``result`` as it goes, so the counts survive an exception. A batch
    interrupted by an exception or by ``stop()`` is released (visibility 0). Messages
    SQS refused stay invisible for ``visibility_s`` so this run does not receive them
    again; copies that came back are held the same way, then released at the end.
    """
    given_up: set[str] = set()
    held: dict[str, dict] = {}
    seen: set[str] = set()
    try:
        while True:
            if limit is not None and result.handled >= limit:
                return DONE_BUDGET
            if scan_max is not None and len(seen) >= scan_max:
                return DONE_SCANNED
            if stop():
                return STOPPED
            room = batch_max if limit is None else min(batch_max, limit - result.handled)
            messages = receive(client, dlq_url, room, visibility_s, wait_s)
            if not messages:
                return DONE_EMPTY
            fresh = {m["MessageId"] for m in messages} - seen
            seen |= fresh
            if scan_max is not None and not fresh:
                held.update({m["MessageId"]: m for m in messages})  # latest handles: released
                return DONE_SCANNED
            try:
                back = {m["MessageId"]: m for m in messages if came_back(m, journal)}
                passed = {m["MessageId"]: m for m in messages
                          if m["MessageId"] not in back and not select(m)}
            except BaseException:
                # Before the batch is held or moved: make it visible again (its latest
                # receipt handles), then raise.
                release_quietly(client, dlq_url, messages)
                for message in messages:
                    held.pop(message["MessageId"], None)
                raise
            result.came_back += len(back.keys() - held.keys())
            held.update(back)  # the latest receipt handle of each, for the release
            held.update(passed)
            back.update(passed)
            batch = [m for m in messages
                     if m["MessageId"] not in back and m["MessageId"] not in given_up]
            if not batch:
                # Only what this run sets aside: received, so hidden for visibility_s,
                # and the next receive reaches the rest. Ends: what is set aside is
                # bounded, and hidden far longer than a receive waits.
                continue
            if stop():
                release(client, dlq_url, batch)
                return STOPPED
            given_up.update(move_guarded(client, dlq_url, batch, target_of, journal, result))
    finally:
        if held:
            release_quietly(client, dlq_url, list(held.values()))


def release_quietly(client: SqsClient, dlq_url: str, messages: list[dict]) -> None:
    """``release``, best effort: on an error they reappear after their visibility."""
    try:
        release(client, dlq_url, messages)
    except Exception:  # noqa: BLE001 - best effort; they reappear after visibility_s
        pass


def move_guarded(client: SqsClient, dlq_url: str, batch: list[dict],
                 target_of: Callable[[dict], str], journal: Journal,
                 result: RedriveResult) -> set[str]:
    """``move_batch``; on an exception, first make the batch visible again."""
    try:
        return move_batch(client, dlq_url, batch, target_of, journal, result)
    except BaseException:
        try:
            release(client, dlq_url, batch)  # what the journal says is done stays done
        except Exception:  # noqa: BLE001 - best effort; they reappear after visibility_s
            pass
        raise


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
        attributes[REDRIVEN_FROM] = outcomes.string_attr(message["MessageId"])
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
