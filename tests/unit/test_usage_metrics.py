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
    assert [(l["Type"], l["Model"], l["TokensIn"], l["TokensOut"], l["Images"], l["Jobs"],
             l["Cost"]) for l in lines] == [("articles", "m1", 20, 200, 0, 2, 0.25),
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
