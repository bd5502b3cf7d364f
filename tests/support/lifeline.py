"""A lifeline sweeper on a fake SQS and a job store, with a wall clock tests move."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.fakes import AsyncFakeSqs, FakeSqs, make_queue_settings, make_settings
from vip_worker.services.lifeline import Lifeline, Sweep

T0 = datetime(2025, 1, 15, 10, 30, tzinfo=UTC)
LEASE_S = 60
QUEUED_AFTER_S = 3600.0


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class SweepHarness:
    """Queue ``work`` (``.fifo`` if asked) with a DLQ on a ``FakeSqs``, settings with the
    lifeline on, and ``sweeper(store)`` making ``Lifeline``s that share the fake and the
    clock."""

    def __init__(self, fifo: bool = False, **queue: Any) -> None:
        self.fake = FakeSqs()
        self.sqs = AsyncFakeSqs(self.fake, park=False)
        suffix = ".fifo" if fifo else ""
        self.dlq_url = self.fake.create_queue(f"work-dlq{suffix}")
        self.url = self.fake.create_queue(f"work{suffix}", visibility_s=60,
                                          dlq_url=self.dlq_url)
        self.queue = make_queue_settings(self.url, **queue)
        self.settings = make_settings([self.queue], lifeline_interval_s=30.0,
                                      lifeline_queued_after_s=QUEUED_AFTER_S,
                                      lifeline_batch=100,
                                      # no grace, no hold (tests of them set one)
                                      lifeline_lease_grace_s=0.0)
        self.now = T0
        self.rescued: list[tuple[str, str]] = []
        self.drained: dict[str, int] | None = None  # set: the sweepers sample it

    def with_values(self, **values: Any) -> SweepHarness:
        self.settings = self.settings.with_values(**values)
        return self

    def sweeper(self, store) -> Lifeline:
        drained = None if self.drained is None else (lambda queue: self.drained[queue])
        return Lifeline(self.settings, lambda: store, self.sqs, clock=lambda: self.now,
                        on_rescue=lambda queue, outcome: self.rescued.append((queue, outcome)),
                        drained=drained, dlq_urls={"work": self.dlq_url})

    def sweep(self, store, now: datetime, sweeper: Lifeline | None = None) -> Sweep:
        """One sweep at ``now``: by ``sweeper`` (which keeps its history), else a new one."""
        self.now = now
        if sweeper is not None:
            return asyncio.run(sweeper.sweep())
        sweeper = self.sweeper(store)
        try:
            return asyncio.run(sweeper.sweep())
        finally:
            sweeper.close()

    def bodies(self) -> list[str]:
        return [m.body for m in self.fake.messages(self.url)]


def claim(store, job_id: str = "job-1", *, now: datetime = T0, delivery: str = "d1",
          queue: str | None = "work", type_: str = "work", **extra) -> None:
    store.claim(job_id, user_id="u1", type=type_, params={"topic": "t"},
                message_id=f"m-{delivery}", lease_s=LEASE_S, now=now, delivery=delivery,
                queue=queue, **extra)

