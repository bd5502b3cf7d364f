"""Checkpoints through the daemon's own claim: ``ctx.checkpoints`` holds what earlier
attempts saved, read with the claim (no other store call before the handler), read-only;
``ctx.checkpoint`` writes under this delivery's claim."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.fakes import ConsumerHarness, wait_until
from tests.support.jobstore import tracked_harness
from tests.support.sqs import envelope

JOB = "job-1"


def settle(h: ConsumerHarness, condition):
    async def scenario(consumer):
        await wait_until(lambda: condition() and h.idle(), what="the consumer to settle")
        return consumer

    return h.run(scenario)


def test_the_claim_hands_the_earlier_attempts_checkpoints_to_the_handler():
    seen = []

    def handler(message, ctx):
        seen.append((dict(ctx.checkpoints), list(store.calls)))
        with pytest.raises(TypeError):
            ctx.checkpoints["outline"] = "changed"  # read-only
        assert ctx.checkpoint("draft", {"words": 120}) is True
        assert ctx.checkpoints["draft"] == {"words": 120}

    h, store = tracked_harness(handler)
    now = datetime.now(UTC)
    store.claim(JOB, user_id="u1", type="articles", params={}, message_id="m0", lease_s=60,
                now=now, delivery="earlier")
    store.checkpoint(JOB, "outline", ["intro", "body"], now, delivery="earlier")
    store.requeue(JOB, "flaky", now, delivery="earlier")
    store.calls.clear()
    h.send(envelope(job_id=JOB))
    settle(h, lambda: h.fake.deleted(h.url))
    ((checkpoints, calls_before),) = seen
    assert checkpoints == {"outline": ["intro", "body"]}
    assert calls_before == ["claim"]  # loaded with the claim: no extra round trip
    job = store.get_job(JOB)
    assert job["status"] == "completed"
    assert job["checkpoints"] == {"outline": ["intro", "body"], "draft": {"words": 120}}


def test_a_first_attempt_has_no_checkpoints():
    seen = []
    h, store = tracked_harness(lambda message, ctx: seen.append(dict(ctx.checkpoints)))
    h.send(envelope(job_id=JOB))
    settle(h, lambda: h.fake.deleted(h.url))
    assert seen == [{}]
