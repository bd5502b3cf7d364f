"""An in-memory SQS for unit tests, driven by a fake clock, and small async helpers.

``FakeSqs`` has the blocking methods of ``vip_worker.sqs.boto.SqsClient`` and keeps
SQS's rules that matter to the daemon: a received message is invisible until
its visibility deadline; every receive gives a new receipt handle and bumps
``ApproximateReceiveCount``; only the latest receipt handle is valid; FIFO
queues (URLs ending in ``.fifo``) hold back a message group while one of its
messages is in flight; the 12-hour visibility cap; SQS's batch and attribute
limits (a call that breaks them raises ``ClientError`` as SQS would).

Failures are injected per entry (``fail_entries``) or per call (``fail_next``),
and every call is logged in ``calls`` as ``(method, args)``.

``AsyncFakeSqs`` implements ``vip_worker.sqs.api.SqsApi`` like ``AsyncSqs`` but runs
the fake on the event loop (no threads), so tests are deterministic. An empty
receive parks until the fake changes (a send, a visibility change, ``wake()``),
like a long poll that never times out: receive loops never spin.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.support.wait import wait_until_async
from vip_worker import config
from vip_worker.consumer import Consumer
from vip_worker.heartbeat import Heartbeat
from vip_worker.plugins.context import STORE, PollerContext
from vip_worker.plugins.registry import HandlerRegistry
from vip_worker.sqs.api import ClientError, EntryFailure, SendEntry
from vip_worker.sqs.limits import (
    BATCH_MAX,
    MAX_ATTRIBUTES,
    MAX_MESSAGE_BYTES,
    MAX_VISIBILITY_S,
    MAX_WAIT_S,
)

ACCOUNT = "123456789012"
REGION = "us-east-1"
ENTRY_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
NO_QUEUE = "AWS.SimpleQueueService.NonExistentQueue"
DEDUP_WINDOW_S = 300


class FakeClock:
    """Monotonic time that moves only when a test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    __call__ = now

    def advance(self, seconds: float) -> float:
        self.t += seconds
        return self.t


def client_error(code: str, message: str = "", operation: str = "Fake") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message or code, "Type": "Sender"},
                        "ResponseMetadata": {"HTTPStatusCode": 400}}, operation)


@dataclass
class FakeMessage:
    message_id: str
    body: str
    attributes: dict[str, dict[str, Any]]
    group_id: str | None
    sent_at: float
    visible_at: float
    receive_count: int = 0
    receipt: str | None = None  # the latest receipt handle; older ones are invalid
    received_at: float | None = None
    deleted: bool = False

    def in_flight(self, now: float) -> bool:
        return self.receipt is not None and self.visible_at > now


@dataclass
class FakeQueue:
    name: str
    url: str
    visibility_s: int
    attributes: dict[str, str]
    messages: list[FakeMessage] = field(default_factory=list)
    dedup: dict[str, tuple[float, str]] = field(default_factory=dict)

    @property
    def fifo(self) -> bool:
        return self.url.endswith(".fifo")


class FakeSqs:
    """Blocking, in-memory SQS with the methods of ``vip_worker.sqs.boto.SqsClient``."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.clock = clock or FakeClock()
        self.queues: dict[str, FakeQueue] = {}
        self.calls: list[tuple[str, tuple]] = []
        # receipt handle or message id -> error code, for batch entries
        self.entry_failures: dict[str, str] = {}
        # method -> [code, remaining calls or None for every call]
        self.call_failures: dict[str, list] = {}
        self.listeners: list[Callable[[], None]] = []
        self.seq = 0

    # -- set-up and inspection (not part of the client's surface) ---------------

    def create_queue(self, name: str, visibility_s: int = 30, dlq_url: str | None = None,
                     max_receives: int = 5) -> str:
        url = f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{name}"
        attrs = {"VisibilityTimeout": str(visibility_s), "QueueArn": self.arn(name)}
        if name.endswith(".fifo"):
            attrs["FifoQueue"] = "true"
        if dlq_url:
            attrs["RedrivePolicy"] = json.dumps({
                "deadLetterTargetArn": self.arn(self.queue(dlq_url).name),
                "maxReceiveCount": max_receives})
        self.queues[url] = FakeQueue(name, url, visibility_s, attrs)
        return url

    @staticmethod
    def arn(name: str) -> str:
        return f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"

    def queue(self, url: str) -> FakeQueue:
        try:
            return self.queues[url]
        except KeyError:
            raise client_error(NO_QUEUE, f"no queue {url}") from None

    def messages(self, url: str) -> list[FakeMessage]:
        """The messages still in the queue (not deleted), oldest first."""
        return [m for m in self.queue(url).messages if not m.deleted]

    def deleted(self, url: str) -> list[FakeMessage]:
        return [m for m in self.queue(url).messages if m.deleted]

    def visible(self, url: str) -> list[FakeMessage]:
        now = self.clock.now()
        return [m for m in self.messages(url) if m.visible_at <= now]

    def calls_to(self, method: str) -> list[tuple]:
        return [args for name, args in self.calls if name == method]

    def fail_entries(self, keys: Sequence[str], code: str = "InternalError") -> None:
        """Fail batch entries whose receipt handle or message id is in ``keys``."""
        self.entry_failures.update(dict.fromkeys(keys, code))

    def fail_next(self, method: str, code: str = "ServiceUnavailable",
                  times: int | None = 1) -> None:
        """Make the next ``times`` calls of ``method`` raise ``ClientError`` (None: all)."""
        self.call_failures[method] = [code, times]

    # -- the client's surface ------------------------------------------------------

    def receive(self, queue_url: str, max_messages: int, wait_s: int,
                visibility_s: int) -> list[dict[str, Any]]:
        self.begin("receive", (queue_url, max_messages, wait_s, visibility_s))
        if not (1 <= max_messages <= BATCH_MAX and 0 <= wait_s <= MAX_WAIT_S):
            raise client_error("InvalidParameterValue", f"{max_messages=} {wait_s=}")
        return self.take(queue_url, max_messages, visibility_s)

    def take(self, queue_url: str, max_messages: int, visibility_s: int | None
             ) -> list[dict[str, Any]]:
        """What a receive returns now (no call log, no injected failures)."""
        queue = self.queue(queue_url)
        now = self.clock.now()
        if visibility_s is None:
            visibility_s = queue.visibility_s
        if not 0 <= visibility_s <= MAX_VISIBILITY_S:
            raise client_error("InvalidParameterValue", f"VisibilityTimeout={visibility_s}")
        picked = []
        blocked_groups = set()
        for m in self.messages(queue_url):
            if queue.fifo and m.group_id in blocked_groups:
                continue
            if m.visible_at > now:
                if queue.fifo:  # in flight or not: later messages of its group wait
                    blocked_groups.add(m.group_id)
                continue
            if len(picked) < max_messages:
                picked.append(m)
            elif queue.fifo:
                blocked_groups.add(m.group_id)
        result = []
        for m in picked:
            m.receive_count += 1
            m.receipt = f"{m.message_id}#{m.receive_count}"
            m.received_at = now
            m.visible_at = now + visibility_s
            attrs = {"ApproximateReceiveCount": str(m.receive_count),
                     "SentTimestamp": str(int(m.sent_at * 1000))}
            if m.group_id is not None:
                attrs["MessageGroupId"] = m.group_id
            raw = {"MessageId": m.message_id, "ReceiptHandle": m.receipt, "Body": m.body,
                   "Attributes": attrs}
            if m.attributes:
                raw["MessageAttributes"] = json.loads(json.dumps(m.attributes))
            result.append(raw)
        return result

    def delete_batch(self, queue_url: str, entries: Sequence[tuple[str, str]]
                     ) -> list[EntryFailure]:
        def delete(m: FakeMessage, entry: tuple) -> None:
            m.deleted = True

        return self.batch("delete_batch", queue_url, entries, delete)

    def change_visibility_batch(self, queue_url: str, entries: Sequence[tuple[str, str, int]]
                                ) -> list[EntryFailure]:
        now = self.clock.now()

        def change(m: FakeMessage, entry: tuple) -> str | None:
            timeout_s = entry[2]
            if not m.in_flight(now):
                return "MessageNotInflight"
            if not 0 <= timeout_s <= MAX_VISIBILITY_S or (
                    now + timeout_s > m.received_at + MAX_VISIBILITY_S):
                return "InvalidParameterValue"
            m.visible_at = now + timeout_s
            return None

        return self.batch("change_visibility_batch", queue_url, entries, change)

    def send(self, queue_url: str, body: str, attributes: dict[str, dict] | None = None,
             group_id: str | None = None, dedup_id: str | None = None,
             delay_s: int = 0) -> str:
        self.begin("send", (queue_url, body, attributes, group_id, dedup_id, delay_s))
        return self.put(queue_url, body, attributes, group_id, dedup_id, delay_s)

    def receive_messages(self, queue_url: str, max_messages: int, wait_s: int,
                         visibility_s: int, system_attributes: Sequence[str]
                         ) -> list[dict[str, Any]]:
        """As ``receive`` (every system attribute the fake has, whatever is asked)."""
        self.begin("receive_messages", (queue_url, max_messages, wait_s, visibility_s))
        if not (1 <= max_messages <= BATCH_MAX and 0 <= wait_s <= MAX_WAIT_S):
            raise client_error("InvalidParameterValue", f"{max_messages=} {wait_s=}")
        return self.take(queue_url, max_messages, visibility_s)

    def send_batch(self, queue_url: str, entries: Sequence[SendEntry]
                   ) -> tuple[dict[str, str], list[EntryFailure]]:
        """SendMessageBatch; an entry fails when its id is in ``fail_entries``."""
        self.begin("send_batch", (queue_url, [e.id for e in entries]))
        self.check_batch([(e.id,) for e in entries])
        sent: dict[str, str] = {}
        failed = []
        for e in entries:
            code = self.entry_failures.get(e.id)
            if code is not None:
                failed.append(EntryFailure(e.id, code, f"{code}: entry {e.id}", False))
                continue
            sent[e.id] = self.put(queue_url, e.body, e.attributes, e.group_id, e.dedup_id)
        return sent, failed

    def put(self, queue_url: str, body: str, attributes: dict[str, dict] | None = None,
            group_id: str | None = None, dedup_id: str | None = None,
            delay_s: int = 0) -> str:
        """A send without the call log and injected failures: the new MessageId."""
        queue = self.queue(queue_url)
        self.check_attributes(attributes or {})
        if len(body.encode()) > MAX_MESSAGE_BYTES or not body:
            raise client_error("InvalidParameterValue", "body size")
        if queue.fifo != (group_id is not None):
            raise client_error("MissingParameter" if queue.fifo else "InvalidParameterValue",
                               "MessageGroupId is required for FIFO queues only")
        now = self.clock.now()
        if queue.fifo:
            if not dedup_id:
                raise client_error("InvalidParameterValue", "MessageDeduplicationId")
            seen = queue.dedup.get(dedup_id)
            if seen and now - seen[0] < DEDUP_WINDOW_S:
                return seen[1]
        self.seq += 1
        message_id = f"m{self.seq:04d}"
        queue.messages.append(FakeMessage(
            message_id=message_id, body=body, attributes=dict(attributes or {}),
            group_id=group_id, sent_at=now, visible_at=now + delay_s))
        if queue.fifo:
            queue.dedup[dedup_id] = (now, message_id)
        self.changed()
        return message_id

    def queue_attributes(self, queue_url: str, names: Sequence[str]) -> dict[str, str]:
        self.begin("queue_attributes", (queue_url, list(names)))
        now = self.clock.now()
        hidden = [m for m in self.messages(queue_url) if m.visible_at > now]
        in_flight = sum(1 for m in hidden if m.receipt is not None)
        attrs = {**self.queue(queue_url).attributes,
                 "ApproximateNumberOfMessages": str(len(self.visible(queue_url))),
                 "ApproximateNumberOfMessagesNotVisible": str(in_flight),
                 "ApproximateNumberOfMessagesDelayed": str(len(hidden) - in_flight)}
        return {k: v for k, v in attrs.items() if k in names or "All" in names}

    def queue_url(self, name: str, owner_account: str = "") -> str:
        self.begin("queue_url", (name,))
        for queue in self.queues.values():
            if queue.name == name:
                return queue.url
        raise client_error(NO_QUEUE, f"no queue named {name}")

    # -- internals -----------------------------------------------------------------

    def begin(self, method: str, args: tuple) -> None:
        self.calls.append((method, args))
        failure = self.call_failures.get(method)
        if failure is not None:
            code, remaining = failure
            if remaining is not None and remaining <= 1:
                del self.call_failures[method]
            elif remaining is not None:
                failure[1] -= 1
            raise client_error(code, f"injected failure of {method}")

    def batch(self, method: str, url: str, entries: Sequence[tuple],
              apply: Callable[[FakeMessage, tuple], str | None]) -> list[EntryFailure]:
        """Apply to each entry's message; an entry fails on an injected or SQS error code."""
        self.begin(method, (url, [tuple(e) for e in entries]))
        self.check_batch(entries)
        failed = []
        for entry in entries:
            m = next((m for m in self.messages(url) if m.receipt == entry[1]), None)
            code = self.entry_failures.get(entry[1]) or (
                m and self.entry_failures.get(m.message_id))
            if code is None:
                code = "ReceiptHandleIsInvalid" if m is None else apply(m, entry)
            if code is not None:
                failed.append(EntryFailure(entry[0], code, f"{code}: {entry[1]}", True))
        self.changed()
        return failed

    @staticmethod
    def check_batch(entries: Sequence[tuple]) -> None:
        if not entries:
            raise client_error("AWS.SimpleQueueService.EmptyBatchRequest")
        if len(entries) > BATCH_MAX:
            raise client_error("AWS.SimpleQueueService.TooManyEntriesInBatchRequest")
        ids = [e[0] for e in entries]
        if len(set(ids)) != len(ids):
            raise client_error("AWS.SimpleQueueService.BatchEntryIdsNotDistinct")
        if not all(isinstance(i, str) and ENTRY_ID_RE.match(i) for i in ids):
            raise client_error("AWS.SimpleQueueService.InvalidBatchEntryId")

    @staticmethod
    def check_attributes(attributes: dict[str, dict]) -> None:
        if len(attributes) > MAX_ATTRIBUTES:
            raise client_error("InvalidParameterValue",
                               f"Number of message attributes [{len(attributes)}] exceeds "
                               f"the allowed maximum [10]")
        for name, value in attributes.items():
            kind = value.get("DataType", "")
            payload = value.get("BinaryValue") if kind.startswith("Binary") else value.get(
                "StringValue")
            if not kind or not payload:
                raise client_error("InvalidParameterValue", f"attribute {name} has no value")

    def changed(self) -> None:
        for listener in list(self.listeners):
            listener()


class AsyncFakeSqs:
    """``SqsApi`` over a ``FakeSqs``, on the event loop (no threads).

    :param park: an empty receive waits for a change (True) or returns [] at once.
    """

    def __init__(self, fake: FakeSqs, park: bool = True) -> None:
        self.fake = fake
        self.park = park
        self.event: asyncio.Event | None = None
        self.event_loop: asyncio.AbstractEventLoop | None = None
        fake.listeners.append(self.wake)

    async def receive(self, queue_url: str, max_messages: int, wait_s: int,
                      visibility_s: int) -> list[dict[str, Any]]:
        await asyncio.sleep(0)  # a real call yields to the loop
        result = self.fake.receive(queue_url, max_messages, wait_s, visibility_s)
        while self.park and not result:
            await self.changed().wait()
            result = self.fake.take(queue_url, max_messages, visibility_s)
        return result

    async def delete_batch(self, queue_url: str, entries: Sequence[tuple[str, str]]
                           ) -> list[EntryFailure]:
        await asyncio.sleep(0)
        return self.fake.delete_batch(queue_url, entries)

    async def change_visibility_batch(self, queue_url: str,
                                      entries: Sequence[tuple[str, str, int]]
                                      ) -> list[EntryFailure]:
        await asyncio.sleep(0)
        return self.fake.change_visibility_batch(queue_url, entries)

    async def send(self, queue_url: str, body: str, attributes: dict[str, dict] | None = None,
                   group_id: str | None = None, dedup_id: str | None = None,
                   delay_s: int = 0) -> str:
        await asyncio.sleep(0)
        return self.fake.send(queue_url, body, attributes, group_id, dedup_id, delay_s)

    async def queue_attributes(self, queue_url: str, names: Sequence[str]) -> dict[str, str]:
        await asyncio.sleep(0)
        return self.fake.queue_attributes(queue_url, names)

    async def queue_url(self, name: str, owner_account: str = "") -> str:
        await asyncio.sleep(0)
        return self.fake.queue_url(name, owner_account)

    def close(self) -> None:
        pass  # no threads, no connections

    def changed(self) -> asyncio.Event:
        loop = asyncio.get_running_loop()
        if self.event is None or self.event_loop is not loop:
            self.event, self.event_loop = asyncio.Event(), loop
        return self.event

    def wake(self) -> None:
        """Let parked receives look again (call after advancing the clock)."""
        if self.event is not None:
            self.event.set()
            self.event = None


# -- async helpers ----------------------------------------------------------------


async def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0,
                     what: str = "condition") -> None:
    """``tests.support.wait.wait_until_async`` with the fakes' default bound (5 s)."""
    await wait_until_async(condition, timeout_s, message=what)


# -- settings and a consumer on the fake ---------------------------------------------


def make_settings(queues: Sequence[config.QueueSettings] = (), **worker: Any
                  ) -> config.Settings:
    """Settings with the given queues (default: one queue ``work``) and worker values."""
    base = config.load(environ={"VIP_WORKER_QUEUE_WORK_URL": "https://sqs.example/q/work",
                                "VIP_WORKER_PLUGIN_DIRS": ""})
    return base.with_values(queues=tuple(queues) or base.queues, **worker)


def make_queue_settings(url: str, name: str = "work", **values: Any) -> config.QueueSettings:
    """A queue's settings; values bypass validation (e.g. a max_job_time_s under 1 s)."""
    return dataclasses.replace(make_settings().queue("work"), name=name, url=url, **values)


class ConsumerHarness:
    """A ``Consumer`` on a ``FakeSqs``: queue ``work`` (``.fifo`` if asked) with a DLQ.

    ``handlers`` maps message types to handlers (registered by plugin ``testplugin``);
    ``queue`` values go to the queue's settings, ``worker`` values to the poller's.
    ``rand`` is fixed at 0: a retry waits exactly half of the backoff ceiling.
    ``store``: a job store provided as the poller's "store" resource (the daemon's ledger
    then tracks jobs); ``max_receives``: each queue's RedrivePolicy maxReceiveCount.
    """

    def __init__(self, handlers: dict[str, Callable], fifo: bool = False, dlq: bool = True,
                 worker: dict[str, Any] | None = None, store: Any = None,
                 **queue: Any) -> None:
        self.clock = FakeClock()
        self.fake = FakeSqs(self.clock)
        self.sqs = AsyncFakeSqs(self.fake)
        suffix = ".fifo" if fifo else ""
        self.dlq_url = self.fake.create_queue(f"work-dlq{suffix}") if dlq else None
        self.url = self.fake.create_queue(f"work{suffix}", visibility_s=60,
                                          dlq_url=self.dlq_url)
        self.queue = make_queue_settings(self.url, **queue)
        self.settings = make_settings([self.queue], **(worker or {}))
        self.registry = HandlerRegistry()
        for message_type, fn in handlers.items():
            self.registry.add("testplugin", message_type, fn)
        # As plugin loading resolves them (vip_worker.plugins.settings).
        self.registry.plugin_settings = dict(self.settings.plugin_settings)
        self.dlq_limits: dict[str, int] = {}  # MaximumMessageSize by queue, as the poller reads
        self.store = store
        self.max_receives: dict[str, int] = {}
        self.consumer = None

    def send(self, body: str, group_id: str | None = None) -> str:
        dedup = f"d{self.fake.seq + 1}" if group_id else None
        return self.fake.send(self.url, body, None, group_id, dedup)

    def make_consumer(self) -> Consumer:
        context = PollerContext(0, self.settings)
        if self.store is not None:
            context.provide(STORE, lambda: self.store)
        return Consumer(self.settings, self.registry, self.sqs,
                        Heartbeat(self.sqs, self.clock), context,
                        {"work": self.dlq_url}, clock=self.clock, rand=lambda: 0.0,
                        dlq_limits=self.dlq_limits, max_receives=self.max_receives)

    def run(self, scenario: Callable, timeout_s: float = 10.0) -> Any:
        """Start a consumer, await ``scenario(consumer)``, then stop it (unless it did)."""

        async def main():
            self.consumer = consumer = self.make_consumer()
            consumer.start()
            try:
                return await asyncio.wait_for(scenario(consumer), timeout_s)
            finally:
                if not consumer.stopping:
                    await consumer.drain(0, wait_for_polls=False)
                consumer.close()

        return asyncio.run(main())

    def idle(self) -> bool:
        """No message task runs and no batch call is pending or in flight."""
        c = self.consumer
        batchers = (*c.deleters.values(), *c.visibility.values())
        return not c.tasks and not any(b.pending or b.tasks for b in batchers)
