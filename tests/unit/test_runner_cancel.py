"""The bundled plugins' ``run_job`` honours cancellation between its steps: before it
generates, and before it saves (a cancel that arrives during the generation call)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from vip_worker.errors import JobCancelled
from vip_worker.message import Envelope
from vip_worker.pipeline.runner import run_job
from vip_worker.plugins.context import STORE, HandlerContext, PollerContext
from vip_worker.testing import MemoryStore

JOB = "job-1"
CONTENT = "generated_content"


def context(store) -> HandlerContext:
    poller = PollerContext(index=0, settings=None)
    poller.provide(STORE, lambda: store)
    return HandlerContext.for_message(
        poller, plugin="articles", message_id="m1", job_id=JOB, queue="q", receive_count=1,
        max_attempts=5, max_job_time_s=60, log_fields={})


def message() -> Envelope:
    return Envelope(job_id=JOB, user_id="u1", type="articles", timestamp="",
                    payload={"topic": "t"})


def test_a_job_cancelled_before_it_generates_never_calls_the_service():
    store, calls = MemoryStore(), []
    ctx = context(store)
    ctx.cancel_event.set()
    with pytest.raises(JobCancelled):
        run_job(message(), ctx, lambda: calls.append(1) or {"title": "t"}, CONTENT)
    assert calls == [] and store.get_content(CONTENT, JOB) == []


def test_a_job_cancelled_while_it_generates_saves_nothing():
    store = MemoryStore()
    ctx = context(store)

    def generate():
        ctx.cancel_event.set()  # the daemon's renewal tells it meanwhile
        return {"title": "t"}

    with pytest.raises(JobCancelled):
        run_job(message(), ctx, generate, CONTENT)
    assert store.get_content(CONTENT, JOB) == []
    assert store.get_job(JOB)["status"] != "completed"


def test_its_own_claim_of_a_cancelled_job_does_nothing():
    store, calls = MemoryStore(), []
    store.create_job(JOB, "u1", "articles", {}, datetime.now(UTC))
    store.request_cancel(JOB, datetime.now(UTC))
    run_job(message(), context(store), lambda: calls.append(1) or {}, CONTENT)
    assert calls == [] and store.get_job(JOB)["status"] == "cancelled"


def test_run_handler_reports_job_cancelled_as_cancelled():
    from vip_worker.testing import run_handler

    def handler(message, ctx):
        raise JobCancelled("stop")

    outcome = run_handler(handler, message())
    assert outcome.cancelled and not outcome.retried and not outcome.dead_lettered
