"""The usage metrics: completed generations' usage summed per type and model for the EMF
line (``metrics.usage``) and per type, user, model and minute for the store's buckets."""

from __future__ import annotations

from datetime import UTC, datetime

from vip_worker.services.metrics import UsageMetrics

T0 = datetime(2025, 1, 15, 10, 30, 12, tzinfo=UTC)


def test_usage_is_summed_per_type_and_model_and_drained_once():
    metrics = UsageMetrics()
    used = {"tokensIn": 10, "tokensOut": 100, "images": 0, "model": "m1", "cost": 0.25}
    metrics.record("articles", "u1", used, T0)
    metrics.record("articles", "u2", {**used, "cost": None}, T0)
    metrics.record("images", "u1", {"images": 1, "model": "img", "cost": 0.04}, T0)
    lines = metrics.drain_emf("VipWorker", now_ms=1)
    assert [(x["Type"], x["Model"], x["TokensIn"], x["TokensOut"], x["Images"], x["Jobs"],
             x["Cost"]) for x in lines] == [("articles", "m1", 20, 200, 0, 2, 0.25),
                                            ("images", "img", 0, 0, 1, 1, 0.04)]
    emf = lines[0]["aws_emf"]["CloudWatchMetrics"][0]
    assert emf["Dimensions"] == [["Type", "Model"]] and emf["Namespace"] == "VipWorker"
    assert {m["Name"] for m in emf["Metrics"]} == {"TokensIn", "TokensOut", "Images", "Jobs",
                                                   "Cost"}
    assert metrics.drain_emf("VipWorker") == []


def test_minutes_are_kept_per_user_for_the_buckets():
    metrics = UsageMetrics()
    used = {"tokensIn": 1, "tokensOut": 2, "images": 0, "model": "m1", "cost": 0.5}
    metrics.record("articles", "u1", used, T0)
    metrics.record("articles", "u1", used, T0.replace(second=59))
    metrics.record("articles", "u2", used, T0)
    minutes = metrics.take_minutes()
    minute = T0.replace(second=0)
    assert minutes[("articles", "u1", "m1", minute)]["calls"] == 2
    assert minutes[("articles", "u1", "m1", minute)]["cost"] == 1.0
    assert minutes[("articles", "u2", "m1", minute)]["tokensOut"] == 2
    assert metrics.take_minutes() == {}


def test_the_usage_minutes_become_usage_series_rows():
    from vip_worker.plugins.context import PollerContext
    from vip_worker.services.metrics import USAGE, usage_flush, usage_rows

    metrics = UsageMetrics()
    metrics.record("articles", "u1", {"tokensIn": 5, "tokensOut": 7, "images": 0,
                                      "model": "m1", "cost": 0.5}, T0)
    (row,) = usage_rows(metrics.take_minutes())
    assert (row.series, row.labels, row.minute) == (
        "usage", {"type": "articles", "user": "u1", "model": "m1"}, T0.replace(second=0))
    assert row.incs == {"tokens_in": 5, "tokens_out": 7, "images": 0, "calls": 1,
                        "cost": 0.5}
    context = PollerContext(index=0, settings=None)
    assert usage_flush(context, "VipWorker") == []  # nothing recorded yet: no counter
    context.resources[USAGE] = metrics
    metrics.record("images", "u2", {"images": 1, "model": "img", "cost": 0.04}, T0)
    (row,) = usage_flush(context, "VipWorker")
    assert row.labels == {"type": "images", "user": "u2", "model": "img"}
    assert usage_flush(context, "VipWorker") == []


def test_usage_buckets_reach_the_store_in_one_bump(store):
    from datetime import timedelta

    from vip_worker.services.metrics import usage_rows

    metrics = UsageMetrics()
    used = {"tokensIn": 5, "tokensOut": 7, "images": 0, "model": "m1", "cost": 0.5}
    now = datetime.now(UTC).replace(second=10)  # within retention, both in one minute
    metrics.record("articles", "u1", used, now)
    metrics.record("articles", "u1", used, now + timedelta(seconds=20))
    store.bump_minutes(usage_rows(metrics.take_minutes()))
    (bucket,) = store.read_minutes("usage", now - timedelta(minutes=5), labels={"user": "u1"})
    assert bucket["labels"] == {"type": "articles", "user": "u1", "model": "m1"}
    assert (bucket["calls"], bucket["tokens_out"], bucket["cost"]) == (2, 14, 1.0)
