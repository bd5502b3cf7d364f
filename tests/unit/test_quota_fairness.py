"""Fairness with long calls, on the quota rules themselves (store/quota.py) driven with
an injected clock: concurrency 2, calls of 6-14 minutes, a bulk user with 100 jobs and a
single user with one, enqueued 10 s later and asking again after every refusal as the
consumer does (``defer_delay``). The single user's call starts at the first place that
frees (about one call's duration at most); no bulk call starts before it."""

from __future__ import annotations

import heapq
import random

import pytest

from vip_worker.outcomes import defer_delay
from vip_worker.store.quota import OK, QuotaLimits, acquire_rule, report_rule

CALL_S = 600.0


def single_users_start(seed: int) -> tuple[float, int]:
    """(when the single user's call started, bulk calls started after it asked)."""
    rng = random.Random(seed)
    limits = QuotaLimits(concurrency=2)
    record = None
    events = [(i * 0.01, "ask", "bulk", f"b{i}") for i in range(100)]
    events.append((10.0, "ask", "single", "s0"))
    heapq.heapify(events)
    bulk_after = 0
    while events:
        now, kind, user, permit = heapq.heappop(events)
        if kind == "done":
            record = report_rule(record, now, permit, OK, None, None, limits)
            continue
        record, grant = acquire_rule(record, now, permit, user, 0, limits)
        if grant.ok and user == "single":
            return now, bulk_after
        if grant.ok:
            bulk_after += now > 10.0
            heapq.heappush(events, (now + rng.uniform(0.6, 1.4) * CALL_S, "done", user, permit))
        else:
            retry_s = grant.retry_at.timestamp() - now
            heapq.heappush(events, (now + defer_delay(retry_s), "ask", user, permit))
    raise AssertionError("the single user's call never started")


@pytest.mark.parametrize("seed", range(1, 6))
def test_the_single_user_waits_at_most_about_one_call(seed):
    random.seed(seed)  # defer_delay's jitter
    started, bulk_after = single_users_start(seed)
    assert bulk_after == 0
    assert started <= 10.0 + 1.4 * CALL_S + 30.0  # the longest call, plus a retry's delay
