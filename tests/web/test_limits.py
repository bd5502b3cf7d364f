"""The token bucket alone, on an injected clock."""

from __future__ import annotations

from vip_worker.web.limits import RateLimiter, retry_after


def test_the_bucket_refills_at_the_rate_and_says_how_long_to_wait():
    now = [0.0]
    limiter = RateLimiter(per_minute=60, burst=2, clock=lambda: now[0])
    assert [limiter.take("u"), limiter.take("u")] == [0.0, 0.0]
    assert limiter.take("u") == 1.0 and retry_after(1.0) == "1"
    now[0] = 1.0
    assert limiter.take("u") == 0.0


def test_refilled_buckets_are_dropped_past_max_users():
    now = [0.0]
    limiter = RateLimiter(per_minute=60, burst=1, clock=lambda: now[0], max_users=3)
    for user in ("a", "b", "c"):
        limiter.take(user)
    now[0] = 5.0  # every bucket refilled
    limiter.take("d")
    assert set(limiter._buckets) == {"d"}
    now[0] = 5.5  # "d" is still refilling: kept
    limiter.take("e"), limiter.take("f")
    limiter.take("g")
    assert "d" in limiter._buckets
