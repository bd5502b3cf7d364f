"""Coalesce per-message SQS calls into batch calls of up to 10 entries.

Handlers that finish in the same moment share one DeleteMessageBatch (or
ChangeMessageVisibilityBatch). A batch is sent as soon as it holds 10 entries,
or after ``window_s`` (a few milliseconds), so nothing waits long.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from vip_worker.sqs.api import TRANSPORT_ERRORS, EntryFailure, error_code
from vip_worker.sqs.limits import BATCH_MAX

log = logging.getLogger("vip_worker.batching")


class Batcher:
    """Queue entries for one (queue, operation); each ``add`` returns a future.

    The future resolves to ``None`` on success, or to an ``EntryFailure``;
    a failed call as a whole resolves every entry of it to an ``EntryFailure``
    with the error's code. Callers decide what a failure means.
    """

    def __init__(self, send: Callable[[Sequence[Any]], Awaitable[list[EntryFailure]]],
                 window_s: float = 0.002) -> None:
        self.send = send
        self.window_s = window_s
        self.pending: list[tuple[Any, asyncio.Future]] = []
        self.timer: asyncio.TimerHandle | None = None
        self.tasks: set[asyncio.Task] = set()

    def add(self, entry: Any) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.pending.append((entry, future))
        if len(self.pending) >= BATCH_MAX:
            self.flush()
        elif self.timer is None:
            self.timer = loop.call_later(self.window_s, self.flush)
        return future

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        while self.pending:
            batch, self.pending = self.pending[:BATCH_MAX], self.pending[BATCH_MAX:]
            task = asyncio.get_running_loop().create_task(self.send_batch(batch))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def send_batch(self, batch: list[tuple[Any, asyncio.Future]]) -> None:
        # Entry ids are positions: unique within the call, as SQS requires.
        entries = [(str(i), *entry) for i, (entry, _) in enumerate(batch)]
        try:
            failed = {f.id: f for f in await self.send(entries)}
        except Exception as exc:  # noqa: BLE001 - every entry must resolve, or its task hangs
            if not isinstance(exc, TRANSPORT_ERRORS):
                log.error("batch.failed", exc_info=exc, extra={"entries": len(batch)})
            code = error_code(exc)
            failed = {str(i): EntryFailure(str(i), code, str(exc), False)
                      for i in range(len(batch))}
        for i, (_, future) in enumerate(batch):
            if not future.done():
                future.set_result(failed.get(str(i)))

    async def drain(self) -> None:
        """Send what is pending and wait for every call in flight."""
        self.flush()
        while self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
