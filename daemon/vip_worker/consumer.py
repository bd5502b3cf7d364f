"""Receive -> parse -> dispatch under a bound -> acknowledge, retry or dead-letter.

One ``Consumer`` per poller serves all of its queues. Each queue has a receive
loop that reserves free slots first and asks SQS for no more messages than can
start now. Every received message is held (and heartbeated) until its fate is
settled exactly once: deleted, made visible again later (retry), sent to the
dead-letter queue, or handed back (visibility 0).

Over 400 lines because receiving, dispatching and settling share one poller's
bookkeeping of held messages (slots, the held list, counters); the rule that picks an
outcome is in ``outcomes.py``, the DLQ lookups in ``sqs/queues.py``, the job ledger
(claims, settles, leases) in ``ledger.py``, cancellation in ``cancellation.py``, the
re-send before SQS's redrive in ``resend.py``.

A handler raising ``Deferred`` (a quota, a provider's pause, a budget) is deferred:
its job released with the attempt refunded, the message hidden for the delay plus
jitter (re-sent instead from ``DEFER_RESEND_MARGIN`` receives before the redrive, since
a message may be deferred any number of times), its slot freed at once, counted as
``deferred``, never as an attempt.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from vip_worker.batching import Batcher
from vip_worker.cancellation import Cancellations
from vip_worker.errors import (
    Deferred,
    DependencyUnavailable,
    JobTimedOut,
    PermanentError,
    RetryLater,
    UnknownMessageType,
)
from vip_worker.heartbeat import Heartbeat
from vip_worker.inflight import InFlight, State
from vip_worker.ledger import BUSY, CANCELLED, CLAIMED, COMPLETED, FAILED, Ledger, outcome
from vip_worker.message import parse_envelope
from vip_worker.outcomes import (
    Action,
    Decision,
    dead_letter_attributes,
    decide,
    reason_of,
    retry_delay,
)
from vip_worker.plugins.context import HandlerContext, PollerContext
from vip_worker.plugins.registry import Handler, HandlerRegistry
from vip_worker.resend import Resender
from vip_worker.services.metrics import QueueMetrics
from vip_worker.slots import Slots
from vip_worker.sqs.api import TRANSPORT_ERRORS, ClientError, SqsApi, error_code
from vip_worker.sqs.limits import BATCH_MAX, MAX_MESSAGE_BYTES

log = logging.getLogger("vip_worker.consumer")
RECEIVE_ERROR_BACKOFF_MAX_S = 30.0
# What SQS answers a SendMessage whose body and attributes exceed the queue's size limit.
TOO_LARGE_CODES = {"InvalidParameterValue", "MessageTooLong"}
# How long a receive waits for handlers about to finish, to ask for a full batch.
RECEIVE_FILL_WAIT_S = 0.01
SETTLED_TASKS_WAIT_S = 10.0
# A deferred message is re-sent this many receives before SQS's redrive would take it, not
# at the last one: deferrals repeat, and one receive lost with a killed poller must not be
# what takes a never-attempted message to the DLQ.
DEFER_RESEND_MARGIN = 1


def traceback_of(error: BaseException) -> BaseException | None:
    """The error itself when its traceback helps (an unexpected exception), else None."""
    if isinstance(error, (PermanentError, RetryLater, JobTimedOut)):
        return None
    return error if error.__traceback__ is not None else None


class Consumer:
    """Receives, dispatches and settles one poller's messages, for all of its queues.

    Each received message becomes an :class:`InFlight`, held (and heartbeated) from
    its receive until its fate is settled once: acked, retried or dead-lettered as
    ``vip_worker.outcomes.decide`` says, or handed back (visibility 0) when the
    poller stops or its FIFO group is blocked. ``start`` starts one receive loop
    per queue; ``drain`` stops them and settles what is held; ``close`` frees
    the handler threads. Counters (``stats``, ``queue_metrics``, ``handled``) are
    read by the poller.
    """

    def __init__(self, settings, registry: HandlerRegistry, sqs: SqsApi, heartbeat: Heartbeat,
                 context: PollerContext, dlq_urls: dict[str, str | None],
                 clock: Callable[[], float] = time.monotonic,
                 rand: Callable[[], float] = random.random,
                 dlq_limits: dict[str, int] | None = None,
                 max_receives: dict[str, int] | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.sqs = sqs
        self.heartbeat = heartbeat
        self.context = context
        self.dlq_urls = dlq_urls
        # Each DLQ's MaximumMessageSize, by source queue name (default: SQS's 1 MiB).
        self.dlq_limits = dlq_limits or {}
        self.clock = clock
        self.rand = rand
        self.slots = Slots(settings.concurrency)
        self.queue_slots = {q.name: Slots(q.concurrency) for q in settings.queues if q.concurrency}
        self.type_limits = {t: asyncio.Semaphore(n) for t, n in settings.type_limits.items()}
        self.handler_pool = ThreadPoolExecutor(max_workers=settings.concurrency,
                                               thread_name_prefix="handler")
        self.deleters = {q.name: Batcher(partial(self.sqs.delete_batch, q.url))
                         for q in settings.queues}
        self.visibility = {q.name: Batcher(partial(self.sqs.change_visibility_batch, q.url))
                           for q in settings.queues}
        # Each queue's RedrivePolicy maxReceiveCount: a message about to reach it is re-sent.
        self.resender = Resender(sqs, self.deleters, max_receives or {})
        self.ledger = Ledger.open(context, settings)
        self.cancels = Cancellations(settings.cancel_grace_s, self.handler_pool, self.deleters,
                                     heartbeat, self.count_abandoned)
        if self.ledger is not None:
            self.ledger.on_cancel = self.cancels.request
        self.held: dict[int, InFlight] = {}
        self.tasks: dict[asyncio.Task, list[InFlight]] = {}
        self.receivers: list[asyncio.Task] = []
        self.polling = 0
        self.stopping = False
        # Set when a fast stop (SIGINT) arrives while a graceful drain is under way:
        # the drain stops waiting and hands back what still runs.
        self.hurry = asyncio.Event()
        self.handled = 0
        # Outcome counters, copied to shared memory every second by the poller.
        self.stats = {"succeeded": 0, "retried": 0, "dead_lettered": 0, "released": 0,
                      "deferred": 0, "busy_s": 0.0}
        # Per-queue counts for the CloudWatch metric lines (vip_worker.services.metrics).
        self.queue_metrics = {q.name: QueueMetrics() for q in settings.queues}
        self.abandoned_threads = 0
        self.on_handled: Callable[[], None] = lambda: None
        self.plugin_loggers: dict[str, logging.Logger] = {}
        # Settled messages waiting for this loop iteration's messages.succeeded lines.
        self.succeeded: dict[str, list[dict]] = {}

    # -- receiving ---------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.receivers = [loop.create_task(self.receive_loop(q), name=f"receive-{q.name}")
                          for q in self.settings.queues]

    async def receive_loop(self, queue) -> None:
        errors = 0
        while not self.stopping:
            wanted = await self.reserve(queue)
            if wanted == 0:
                break
            self.polling += 1
            try:
                raw = await self.sqs.receive(queue.url, wanted, queue.wait_time_s,
                                             queue.visibility_timeout_s)
            except TRANSPORT_ERRORS as exc:
                self.unreserve(queue, wanted)
                errors += 1
                delay = min(RECEIVE_ERROR_BACKOFF_MAX_S, 0.5 * 2**min(errors, 10)) * (
                    0.5 + self.rand() / 2)
                log.error("receive.failed", extra={
                    "queue": queue.name, "error_code": error_code(exc),
                    "error": str(exc)[:500], "retry_in_s": round(delay, 2)})
                await asyncio.sleep(delay)
                continue
            finally:
                self.polling -= 1
            errors = 0
            now = self.clock()
            items = [InFlight.from_sqs(queue, m, now) for m in raw]
            self.unreserve(queue, wanted - len(items))
            if self.stopping:
                # The poll was already out when the stop came: hand these back at once.
                for item in items:
                    self.hold(item)
                await self.release_many(items, "shutdown")
                for item in items:
                    self.finish(item)
                break
            self.dispatch(items)

    async def reserve(self, queue) -> int:
        """Reserve slots for one receive: as many as are free, up to 10.

        When handlers hold slots a full receive could use, wait up to
        ``RECEIVE_FILL_WAIT_S`` for them first. Without that, a busy poller settles
        into split receives (9 messages, then 1, then 9: each receive goes out
        while the previous batch still runs), which doubles the ReceiveMessage and
        DeleteMessageBatch calls per message. The wait ends as soon as the slots
        are back, and an idle poller (nothing held) never waits.
        """
        if self.held and self.slots.free < BATCH_MAX:
            fill = min(BATCH_MAX, self.slots.free + len(self.held))
            if self.slots.free < fill:
                await self.slots.wait_for(fill, RECEIVE_FILL_WAIT_S)
        share = max(1, len(self.settings.queues) - self.polling)
        queue_slots = self.queue_slots.get(queue.name)
        most = BATCH_MAX
        if queue_slots is not None:
            most = await queue_slots.acquire(most)
            if most == 0:
                return 0
        taken = await self.slots.acquire(most, share)
        if queue_slots is not None:
            queue_slots.release(most - taken)
        return taken

    def unreserve(self, queue, count: int) -> None:
        self.slots.release(count)
        if queue.name in self.queue_slots:
            self.queue_slots[queue.name].release(count)

    # -- dispatching -------------------------------------------------------------

    def hold(self, item: InFlight) -> None:
        self.held[id(item)] = item
        self.heartbeat.track(item)

    def finish(self, item: InFlight) -> None:
        self.heartbeat.untrack(item)
        if self.held.pop(id(item), None) is not None:
            self.unreserve(item.queue, 1)
        # SETTLING or HANDED_BACK -> DONE (RECEIVED or RUNNING only when its task crashed)
        item.state = State.DONE

    def dispatch(self, items: list[InFlight]) -> None:
        loop = asyncio.get_running_loop()
        debug = log.isEnabledFor(logging.DEBUG)
        for item in items:
            self.hold(item)
            if debug:
                log.debug("message.received", extra=item.log_fields())
        if items and items[0].queue.fifo:
            groups: dict[str | None, list[InFlight]] = {}
            for item in items:
                groups.setdefault(item.group_id, []).append(item)
            batches = list(groups.values())
        else:
            batches = [[item] for item in items]
        for batch in batches:
            coro = self.process_group(batch) if len(batch) > 1 else self.process_one(batch[0])
            task = loop.create_task(coro)
            self.tasks[task] = batch
            task.add_done_callback(self.task_done)

    def task_done(self, task: asyncio.Task) -> None:
        self.tasks.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("consumer.task_crashed", exc_info=task.exception())

    async def process_group(self, items: list[InFlight]) -> None:
        """FIFO: one message of a group at a time, in order; a failure hands back the rest.

        The failed head stays invisible for its retry delay, which keeps SQS from
        delivering the rest of its group before it: retries never reorder a group.
        """
        for n, item in enumerate(items):
            if not await self.process_one(item):
                rest = items[n + 1:]
                await self.release_many(rest, "fifo_group_blocked")
                for later in rest:
                    self.finish(later)
                return

    async def process_one(self, item: InFlight) -> bool:
        """Handle one message; True when it is consumed (deleted or dead-lettered)."""
        try:
            if item.settled:
                return False  # handed back while it waited behind its FIFO group
            if self.stopping:
                await self.release_many([item], "shutdown")
                return False
            try:
                item.envelope = parse_envelope(item.body)
                handler = self.registry.get(item.envelope.type)
                if handler is None:
                    raise UnknownMessageType(f"no plugin handles type {item.envelope.type!r}")
            except PermanentError as exc:
                return await self.settle(item, self.decide(item, exc), None, item.log_fields())
            limit = self.type_limits.get(handler.message_type)
            if limit is None:
                return await self.run(handler, item)
            async with limit:
                if self.stopping:
                    await self.release_many([item], "shutdown")
                    return False
                return await self.run(handler, item)
        finally:
            self.finish(item)
            self.handled += 1
            self.on_handled()

    async def run(self, handler: Handler, item: InFlight) -> bool:
        """Claim the job (when tracked), run the handler under ``max_job_time_s``, then
        settle the message (and the job) as ``decide`` says. True when it is consumed
        (deleted or dead-lettered)."""
        if self.ledger is not None and self.ledger.tracks(item):
            settled = await self.claim(item)
            if settled is not None:
                return settled
        item.start()  # RECEIVED -> RUNNING
        queue = item.queue
        fields = item.log_fields()
        started = self.clock()
        plugin_log = self.plugin_loggers.get(handler.plugin)
        if plugin_log is None:
            plugin_log = logging.getLogger(f"vip_worker_plugins.{handler.plugin}")
            self.plugin_loggers[handler.plugin] = plugin_log
        ctx = HandlerContext.for_message(
            self.context, plugin=handler.plugin, message_id=item.message_id,
            job_id=item.envelope.job_id, queue=queue.name, receive_count=item.receive_count,
            max_attempts=queue.max_attempts, max_job_time_s=queue.max_job_time_s,
            log_fields=fields, started=started,
            plugin_settings=self.registry.plugin_settings.get(handler.plugin, {}),
            logger=plugin_log, attempt=item.attempt, delivery=item.delivery,
            user_id=item.envelope.user_id or "", checkpoints=item.checkpoints)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("message.started", extra=fields)
        error: BaseException | None = None
        try:
            async with asyncio.timeout(queue.max_job_time_s) as timer:
                await self.cancels.execute(handler, item, ctx)  # cancellation.py
        except TimeoutError as exc:
            if not timer.expired():
                error = exc
            else:
                error = JobTimedOut(f"handler ran longer than max_job_time_s="
                                    f"{queue.max_job_time_s:g} and was abandoned")
                if not handler.is_async:
                    # The thread cannot be stopped: it keeps a pool slot until it returns.
                    self.abandoned_threads += 1
        except Exception as exc:  # noqa: BLE001 - any handler error is classified below
            error = exc
        decision = self.decide(item, error)
        if item.delivery is not None and not item.settled:
            delay_s = self.clip(item, decision.delay_s) if decision.delay_s is not None else 0
            outage = await self.ledger.settle(item, decision, delay_s)
            if outage is not None and decision.action not in (Action.RETRY, Action.DEFER):
                decision = self.decide(item, outage)  # never lost to our store's outage
        return await self.settle(item, decision, self.clock() - started, fields)

    async def claim(self, item: InFlight) -> bool | None:
        """Claim the item's job before its handler starts (``vip_worker.ledger``). None:
        claimed, run the handler; else the message was settled here (True: consumed)."""
        fields = item.log_fields()
        try:
            claim = await self.ledger.claim(item)
        except DependencyUnavailable as exc:  # the store is down: retried, no attempt spent
            return await self.settle(item, self.decide(item, exc), 0.0, fields)
        result = outcome(claim)
        if result == CLAIMED:
            if item.settled:  # handed back (shutdown) while the claim was under way
                await self.ledger.hand_back([item], "shutdown")
                return False
            return None
        if result == CANCELLED:  # cancelled while queued: never run
            return await self.cancels.drop(item, 0.0)
        if result == COMPLETED:
            log.info("job.already_completed", extra=fields)
            self.ack(item, 0.0, fields)
            return True
        if result == BUSY:  # another delivery holds a live lease: after it, no attempt spent
            busy = RetryLater("the job is held by another delivery",
                              delay_s=self.ledger.busy_delay_s(claim))
            await self.retry(item, Decision(Action.RETRY, busy.delay_s, busy), 0.0)
            return False
        # EXHAUSTED: the store failed the job (its pollers kept dying running it);
        # FAILED: it was failed before and this message is no redrive of its dead letter
        error = (claim.job or {}).get("error") or "its attempts are exhausted"
        if result == FAILED and not self.dlq_urls.get(item.queue.name):
            log.warning("job.already_failed", extra={**fields, "error": error[:500]})
            if item.settle():  # RUNNING -> SETTLING: nowhere to dead-letter it, never rerun
                self.heartbeat.untrack(item)
                await self.deleters[item.queue.name].add((item.receipt,))
            return True
        return await self.dead_letter(item, PermanentError(f"job failed: {error}"), 0.0)

    def count_abandoned(self) -> None:
        self.abandoned_threads += 1  # the poller recycles, as after a timed-out handler

    # -- outcomes ------------------------------------------------------------------

    def decide(self, item: InFlight, error: BaseException | None) -> Decision:
        queue = item.queue
        return decide(error, item.attempt, queue.max_attempts, queue.retry_backoff_base_s,
                      queue.retry_backoff_max_s, self.rand)

    async def settle(self, item: InFlight, decision: Decision, duration_s: float | None,
                     fields: dict) -> bool:
        """Act on the decision; True when the message is consumed (deleted or dead-lettered)."""
        if decision.action is Action.ACK:
            self.ack(item, duration_s, fields)
            return True
        if decision.action is Action.DEAD_LETTER:
            return await self.dead_letter(item, decision.error, duration_s)
        if decision.action is Action.CANCEL:
            return await self.cancels.drop(item, duration_s)
        if decision.action is Action.DEFER:
            await self.defer(item, decision, duration_s)
            return False
        await self.retry(item, decision, duration_s)
        return False

    def ack(self, item: InFlight, duration_s: float, fields: dict) -> None:
        if not item.settle():  # RUNNING -> SETTLING, unless already handed back
            return
        future = self.deleters[item.queue.name].add((item.receipt,))
        future.add_done_callback(partial(self.deleted, item, duration_s, fields))

    def deleted(self, item: InFlight, duration_s: float, fields: dict,
                future: asyncio.Future) -> None:
        """The delete of a succeeded message returned: count it and log it, with the
        rest of its batch. Counted here, not when the handler returned, so the
        counters, the metrics and the log agree: a message whose delete failed comes
        back and is counted when it is finally deleted."""
        # The batcher resolves every future with a failure or None; the first two
        # branches are defensive (a future cancelled or failed by a change to come).
        if future.cancelled():
            code, error = "Cancelled", "the poller stopped before the delete was sent"
        elif future.exception() is not None:
            exc = future.exception()
            code, error = type(exc).__name__, str(exc)
        elif (failure := future.result()) is not None:
            code, error = failure.code, failure.message
        else:
            code = None
        if code is not None:
            # The handler's work is done; SQS will deliver the message again and
            # the (idempotent) handler will see it once more. Not counted as succeeded.
            log.error("message.delete_failed", extra={
                **fields, "error_code": code, "error": error[:500],
                "duration_s": round(duration_s, 4)})
            return
        self.stats["succeeded"] += 1
        self.stats["busy_s"] += duration_s
        self.queue_metrics[item.queue.name].record("succeeded", duration_s)
        entry = {k: v for k, v in fields.items() if k != "queue"}  # the line has the queue
        entry["duration_s"] = round(duration_s, 4)
        if not self.succeeded:
            # The other entries of this delete batch resolve in this same iteration.
            asyncio.get_running_loop().call_soon(self.log_succeeded)
        self.succeeded.setdefault(item.queue.name, []).append(entry)

    def log_succeeded(self) -> None:
        """One ``messages.succeeded`` line per queue for the messages deleted just now.

        One line per delete batch, not one per message: a JSON line costs ~14 us of
        CPU, as much as the rest of a no-op message's handling. Each entry keeps the
        message's story (ids, type, receive count, duration).
        """
        pending, self.succeeded = self.succeeded, {}
        for queue, messages in pending.items():
            log.info("messages.succeeded", extra={"queue": queue, "count": len(messages),
                                                  "messages": messages})

    async def retry(self, item: InFlight, decision: Decision, duration_s: float) -> None:
        if not item.settle():  # RUNNING -> SETTLING, unless already handed back
            return
        self.heartbeat.untrack(item)  # a heartbeat now would undo the retry delay
        queue = item.queue
        error = decision.error
        delay_s = self.clip(item, decision.delay_s)
        failure = None
        if not await self.resender.resend(item, delay_s, "retry"):
            failure = await self.visibility[queue.name].add((item.receipt, delay_s))
        self.stats["retried"] += 1
        self.stats["busy_s"] += duration_s
        self.queue_metrics[queue.name].record("retried", duration_s)
        log.warning("message.retried", exc_info=traceback_of(error), extra={
            **item.log_fields(), "delay_s": delay_s, "duration_s": round(duration_s, 4),
            "error_class": type(error).__name__, "error": reason_of(error),
            "visibility_failed": failure.code if failure else None})

    async def defer(self, item: InFlight, decision: Decision, duration_s: float) -> None:
        """Hide the message for the deferral's delay (its job was released by
        ``Ledger.settle``): a visibility change, or a re-send when the redrive is within
        ``DEFER_RESEND_MARGIN`` receives. Counted as deferred, not retried."""
        if not item.settle():  # RUNNING -> SETTLING, unless already handed back
            return
        self.heartbeat.untrack(item)  # a heartbeat now would undo the delay
        queue = item.queue
        error = decision.error
        delay_s = self.clip(item, decision.delay_s)
        failure = None
        if not await self.resender.resend(item, delay_s, "deferred", DEFER_RESEND_MARGIN):
            failure = await self.visibility[queue.name].add((item.receipt, delay_s))
        self.stats["deferred"] += 1
        self.stats["busy_s"] += duration_s
        self.queue_metrics[queue.name].record("deferred", None)
        log.info("message.deferred", extra={
            **item.log_fields(), "delay_s": delay_s, "duration_s": round(duration_s, 4),
            "reason": error.reason if isinstance(error, Deferred) else reason_of(error),
            "visibility_failed": failure.code if failure else None})

    def clip(self, item: InFlight, delay_s: float) -> int:
        """A visibility delay SQS accepts: whole seconds, rounded up (a backoff of 0.5-1 s
        waits 1 s, never 0), within the 12-hour cap."""
        cap = int(item.cap_at - self.clock())
        if not math.isfinite(delay_s):  # RetryLater(delay_s=inf) waits as long as allowed
            return max(0, cap) if delay_s > 0 else 0
        return max(0, min(math.ceil(min(delay_s, cap)), cap))

    async def dead_letter(self, item: InFlight, error: BaseException,
                          duration_s: float | None = None) -> bool:
        """Send to the DLQ with the reason, then delete. True when the message is consumed."""
        if not item.settle():  # RECEIVED (malformed) or RUNNING -> SETTLING
            return False
        self.heartbeat.untrack(item)
        queue = item.queue
        fields = {**item.log_fields(), "error_class": type(error).__name__,
                  "error": reason_of(error),
                  "duration_s": None if duration_s is None else round(duration_s, 4)}
        dlq = self.dlq_urls.get(queue.name)
        if not dlq:
            # No DLQ to send to: leave the message to the queue's own redrive policy.
            failure = await self.visibility[queue.name].add(
                (item.receipt, self.clip(item, queue.retry_backoff_max_s)))
            log.error("message.dead_letter_unavailable", extra={
                **fields, "visibility_failed": failure.code if failure else None})
            return False
        group = item.group_id if dlq.endswith(".fifo") else None
        try:
            await self.send_dead_letter(dlq, item, error, group)
        except TRANSPORT_ERRORS as exc:
            delay = self.clip(item, retry_delay(item.attempt, queue.retry_backoff_base_s,
                                                queue.retry_backoff_max_s, self.rand))
            failure = await self.visibility[queue.name].add((item.receipt, delay))
            log.error("message.dead_letter_failed", extra={
                **fields, "send_error_code": error_code(exc), "retry_in_s": delay,
                "visibility_failed": failure.code if failure else None})
            return False
        failure = await self.deleters[queue.name].add((item.receipt,))
        if failure is not None:
            fields["delete_failed"] = failure.code
        self.stats["dead_lettered"] += 1
        self.stats["busy_s"] += duration_s or 0.0
        self.queue_metrics[queue.name].record("dead_lettered", duration_s)
        log.warning("message.dead_lettered", exc_info=traceback_of(error), extra=fields)
        return True

    async def send_dead_letter(self, dlq: str, item: InFlight, error: BaseException,
                               group: str | None) -> None:
        """Send the copy with the reason attributes, budgeted to the DLQ's
        ``MaximumMessageSize``; if the DLQ still refuses it as too large (its limit
        was lowered since the poller started, or could not be read), send the body alone.
        When no attribute fits beside the body, the body goes alone at once."""
        dedup = item.message_id if group else None
        limit = self.dlq_limits.get(item.queue.name, MAX_MESSAGE_BYTES)
        attributes = dead_letter_attributes(item, error, limit)
        if not attributes:
            log.warning("message.dead_letter_attributes_dropped", extra={
                **item.log_fields(), "send_error_code": None,
                "detail": f"no reason attribute fits beside the body in the DLQ's "
                          f"{limit} bytes"})
            await self.sqs.send(dlq, item.body, None, group, dedup)
            return
        try:
            await self.sqs.send(dlq, item.body, attributes, group, dedup)
        except ClientError as exc:
            if error_code(exc) not in TOO_LARGE_CODES:
                raise
            log.warning("message.dead_letter_attributes_dropped", extra={
                **item.log_fields(), "send_error_code": error_code(exc)})
            await self.sqs.send(dlq, item.body, None, group, dedup)

    async def release_many(self, items: list[InFlight], reason: str) -> None:
        """Hand messages back (visibility 0) so another poller can take them now; a message
        SQS's redrive would take at its next receive is re-sent instead."""
        futures, handed = [], []
        for item in items:
            if item.settle(State.HANDED_BACK):  # RECEIVED or RUNNING -> HANDED_BACK
                self.heartbeat.untrack(item)
                handed.append(item)
        if self.ledger is not None:  # before SQS: the job is free when the message is
            await self.ledger.hand_back(handed, reason)
        for item in handed:
            if not self.resender.due(item):
                futures.append((item, self.visibility[item.queue.name].add((item.receipt, 0))))
        for item in handed:
            if self.resender.due(item) and not await self.resender.resend(item, 0, reason):
                futures.append((item, self.visibility[item.queue.name].add((item.receipt, 0))))
        for item, future in futures:
            failure = await future
            self.stats["released"] += 1
            log.info("message.released", extra={
                **item.log_fields(), "reason": reason, "started": item.started,
                "release_failed": failure.code if failure else None})

    # -- stopping --------------------------------------------------------------------

    async def drain(self, grace_s: float, wait_for_polls: bool) -> None:
        """Stop receiving, hand back what never started, let running handlers finish.

        The order matters: the heartbeat keeps running (the poller stops it after
        this returns), so handlers finishing within the grace period stay invisible.
        """
        self.stopping = True
        self.slots.close()
        for queue_slots in self.queue_slots.values():
            queue_slots.close()
        await self.release_many([i for i in self.held.values() if not i.started], "shutdown")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s  # a real wait: the loop's clock, not the injected one
        running = list(self.tasks)
        if running and grace_s > 0 and not self.hurry.is_set():
            hurry = asyncio.ensure_future(self.hurry.wait())
            pending = set(running)
            while pending and not self.hurry.is_set():
                left = deadline - loop.time()
                if left <= 0:
                    break
                done, pending = await asyncio.wait(
                    pending | {hurry}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                pending.discard(hurry)
            hurry.cancel()
        if self.hurry.is_set():
            wait_for_polls = False
        # Grace is over: hand back whatever still runs, then stop its task.
        late = [i for i in self.held.values() if not i.settled]
        await self.release_many(late, "grace_period_over")
        for task, items in list(self.tasks.items()):
            if any(i in late for i in items):
                task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=SETTLED_TASKS_WAIT_S)
        if wait_for_polls:
            longest = max(q.wait_time_s for q in self.settings.queues) + 5
            remaining = max(longest, deadline - loop.time())
            pending = [r for r in self.receivers if not r.done()]
            if pending:
                await asyncio.wait(pending, timeout=remaining)
        for receiver in self.receivers:
            receiver.cancel()
        await asyncio.gather(*self.receivers, return_exceptions=True)
        for batcher in (*self.deleters.values(), *self.visibility.values()):
            await batcher.drain()
        await asyncio.sleep(0)  # the delete callbacks of the last batches
        self.log_succeeded()

    def close(self) -> None:
        self.handler_pool.shutdown(wait=False, cancel_futures=True)
        if self.ledger is not None:
            self.ledger.close()
