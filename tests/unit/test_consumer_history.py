"""The daemon writes a job's timeline through the ledger: its claim names the host, the
process and the poller (``by``), its progress steps and its end follow, with no store
call of their own."""

from __future__ import annotations

import os
import socket

import pytest

from tests.support.jobstore import tracked_harness
from tests.support.sqs import envelope
from tests.fakes import wait_until

pytestmark = pytest.mark.timeout(30)
JOB = "507f1f77bcf86cd799439011"


def settle(h, condition):
    async def scenario(consumer):
        await wait_until(lambda: condition() and h.idle(), what="the consumer to settle")

    h.run(scenario)


def test_the_claim_says_who_took_the_job_and_the_steps_follow():
    def handler(message, ctx):
        ctx.progress(10, "Outline")
        ctx.progress(20, "Outline")  # the same step: no entry
        ctx.progress(60, "Writing")

    h, store = tracked_harness(handler)
    h.send(envelope(job_id=JOB))
    settle(h, lambda: h.fake.deleted(h.url))
    history = store.get_job(JOB)["history"]
    assert [e["event"] for e in history] == ["created", "claimed", "progress", "progress",
                                             "completed"]
    claimed = history[1]
    assert claimed["by"] == f"{socket.gethostname()} {os.getpid()}/poller 0"
    assert claimed["attempt"] == 1
    # No store call of its own: the entries rode on the transitions' writes.
    assert [c for c in store.calls if c not in ("renew_leases", "get_job")] == [
        "claim", "progress", "progress", "progress", "complete"]
