"""Keep in-flight messages invisible while their handlers run, in batches.

Each held message has ``visible_until``. When half of its queue's visibility
timeout is left, the heartbeat extends it to a full timeout from now. Messages
of the same queue that would come due within the next quarter of the timeout
ride along in the same ChangeMessageVisibilityBatch call, so one call keeps up
to 10 messages alive per interval.

The 12-hour cap: SQS refuses to keep a message invisible longer than 12 hours
from its receive. Extensions are clipped to it; once nothing is left to add, the
heartbeat stops extending and logs ``heartbeat.cap_reached`` (the queue's
``max_job_time_s`` is validated to end before that).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable

from vip_worker.inflight import InFlight
from vip_worker.sqs.api import TRANSPORT_ERRORS, SqsApi, error_code
from vip_worker.sqs.limits import BATCH_MAX

EXTEND_AT = 0.5  # extend when this share of the timeout is left
COALESCE = 0.25  # ...and take along messages due within this share of the timeout
MIN_SLEEP_S = 0.05
RETRY_AFTER_ERROR_S = 1.0
LOST_CODES = {"ReceiptHandleIsInvalid", "MessageNotInflight", "InvalidParameterValue"}

log = logging.getLogger("vip_worker.heartbeat")


def due(items: list[InFlight], now: float) -> dict[str, list[InFlight]]:
    """The messages to extend now, per queue name (pure: tests call it with a fake clock)."""
    by_queue: dict[str, list[InFlight]] = defaultdict(list)
    for item in items:
        if item.lost or item.capped or item.settled:
            continue
        by_queue[item.queue.name].append(item)
    result = {}
    for name, queue_items in by_queue.items():
        timeout = queue_items[0].queue.visibility_timeout_s
        if not any(i.visible_until - now <= timeout * EXTEND_AT for i in queue_items):
            continue
        horizon = timeout * (EXTEND_AT + COALESCE)
        chosen = [i for i in queue_items
                  if i.visible_until - now <= horizon and extension(i, now) > 0]
        if chosen:
            result[name] = chosen
    return result


def extension(item: InFlight, now: float) -> int:
    """Seconds of visibility to ask for, clipped to the 12-hour cap; 0: none left to add."""
    seconds = int(min(item.queue.visibility_timeout_s, item.cap_at - now))
    return seconds if now + seconds > item.visible_until else 0


def next_wake(items: list[InFlight], now: float) -> float | None:
    """Seconds until some message is due (None: nothing held)."""
    wakes = [i.visible_until - i.queue.visibility_timeout_s * EXTEND_AT for i in items
             if not (i.lost or i.capped)]
    if not wakes:
        return None
    return max(MIN_SLEEP_S, min(wakes) - now)


class Heartbeat:
    """Tracks held messages and extends their visibility until they are untracked."""

    def __init__(self, sqs: SqsApi, clock: Callable[[], float]) -> None:
        self.sqs = sqs
        self.clock = clock
        self.items: dict[int, InFlight] = {}
        self.wakeup = asyncio.Event()
        self.next_at = 0.0  # when run() wakes next (monotonic)
        self.calls = 0

    def track(self, item: InFlight) -> None:
        self.items[id(item)] = item
        # Wake early only when this item comes due before the planned wake-up
        # (a queue with a shorter timeout than the ones already held).
        if item.visible_until - item.queue.visibility_timeout_s * EXTEND_AT < self.next_at:
            self.wakeup.set()

    def untrack(self, item: InFlight) -> None:
        self.items.pop(id(item), None)

    async def run(self) -> None:
        """Until cancelled: extend what is due, sleep until the next is due."""
        while True:
            now = self.clock()
            delay = await self.beat(now)
            self.next_at = self.clock() + delay
            self.wakeup.clear()
            try:
                await asyncio.wait_for(self.wakeup.wait(), timeout=delay)
            except TimeoutError:
                pass

    async def beat(self, now: float) -> float:
        """One pass: extend every due message; return seconds until the next pass."""
        items = list(self.items.values())
        retry_soon = False
        for queue_items in due(items, now).values():
            for start in range(0, len(queue_items), BATCH_MAX):
                ok = await self.extend(queue_items[start:start + BATCH_MAX], now)
                retry_soon = retry_soon or not ok
        for item in items:
            near = item.visible_until - now <= item.queue.visibility_timeout_s * EXTEND_AT
            if near and not (item.lost or item.capped) and extension(item, now) == 0:
                item.capped = True
                log.warning("heartbeat.cap_reached", extra=item.log_fields())
        wait = next_wake(list(self.items.values()), self.clock())
        if retry_soon:
            return RETRY_AFTER_ERROR_S
        return 3600.0 if wait is None else wait

    async def extend(self, batch: list[InFlight], now: float) -> bool:
        queue = batch[0].queue
        entries = [(str(n), item.receipt, extension(item, now)) for n, item in enumerate(batch)]
        self.calls += 1
        try:
            failed = await self.sqs.change_visibility_batch(queue.url, entries)
        except TRANSPORT_ERRORS as exc:
            log.error("heartbeat.failed", extra={
                "queue": queue.name, "count": len(batch), "error_code": error_code(exc),
                "error": str(exc)[:500]})
            return False
        failures = {f.id: f for f in failed}
        debug = log.isEnabledFor(logging.DEBUG)
        for n, item in enumerate(batch):
            failure = failures.get(str(n))
            if failure is None:
                item.visible_until = now + entries[n][2]
                if debug:
                    log.debug("message.heartbeat", extra={
                        **item.log_fields(), "visibility_timeout_s": entries[n][2]})
                continue
            # LOST_CODES: the receipt is stale (the message came back and may be
            # with another poller). The handler goes on; its effects must be idempotent.
            log.error("heartbeat.entry_failed", extra={
                **item.log_fields(), "error_code": failure.code, "error": failure.message[:500],
                "lost": failure.code in LOST_CODES})
            item.lost = failure.code in LOST_CODES
        log.info("heartbeat.extended", extra={
            "queue": queue.name, "count": len(batch) - len(failures),
            "failed": len(failures), "visibility_timeout_s": queue.visibility_timeout_s})
        return not failures or all(f.code in LOST_CODES for f in failed)
