"""Usage, cost and the daily budget in the bundled plugins, against the stub generation
service (which reports usage): the job and its content carry ``usage`` with the cost
from the price table; the user's spending today grows by it; a user over budget gets
``budget_outcome`` with the reason "budget exceeded", without a generation call."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from vip_worker import config
from vip_worker.errors import Deferred
from vip_worker.message import Envelope
from vip_worker.pipeline.runner import close_generation_client
from vip_worker.pipeline.usage import until_next_day_s
from vip_worker.plugins import load_plugins
from vip_worker.plugins.context import STORE, HandlerContext, PollerContext
from vip_worker.testing import run_handler

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"
PRICES = {"stub-writer-1": {"in_per_1k": 0.5, "out_per_1k": 2.0},
          "stub-image-1": {"per_image": 0.04}}


def bundled(generation, **env):
    settings = config.load(None, environ={
        "FASTAPI_URL": generation.url, "VIP_WORKER_PLUGIN_DIRS": str(PLUGINS),
        "VIP_WORKER_PRICES": json.dumps(PRICES), **env}, require_queues=False)
    return settings, load_plugins(settings).registry


def envelope(job_id: str, type: str, payload: dict, user: str = "u1") -> Envelope:
    return Envelope(job_id=job_id, user_id=user, type=type, timestamp="", payload=payload)


def run(settings, registry, message, store):
    resources: dict = {}
    try:
        return run_handler(registry.get(message.type).fn, message, settings=settings,
                           store=store, resources=resources)
    finally:
        close_generation_client(PollerContext(0, settings, resources))


def test_an_article_s_usage_and_cost_are_on_the_job_and_its_content(generation, store):
    settings, registry = bundled(generation)
    outcome = run(settings, registry, envelope("a1", "articles",
                                               {"topic": "tea", "wordCount": 300}), store)
    assert outcome.succeeded, outcome.error
    job = store.get_job("a1")
    used = job["usage"]
    assert used["model"] == "stub-writer-1" and used["images"] == 0
    assert used["tokensOut"] == 400  # the stub: 4/3 tokens a word
    assert used["tokensIn"] > 0
    assert used["cost"] == pytest.approx(used["tokensIn"] / 1000 * 0.5 + 400 / 1000 * 2.0)
    assert store.get_content("generated_content", "a1")[0]["usage"] == used
    today = datetime.now(UTC).date()
    assert store.spent("u1", today) == pytest.approx(used["cost"])


def test_an_image_is_priced_per_image(generation, store):
    settings, registry = bundled(generation)
    outcome = run(settings, registry, envelope("i1", "images", {"prompt": "a cat"}), store)
    assert outcome.succeeded, outcome.error
    used = store.get_job("i1")["usage"]
    assert (used["images"], used["model"], used["cost"]) == (1, "stub-image-1", 0.04)
    assert store.get_content("media", "i1")[0]["usage"]["cost"] == 0.04


def test_a_model_without_a_price_has_no_cost_and_spends_nothing(generation, store):
    settings, registry = bundled(generation, VIP_WORKER_PRICES="{}")
    outcome = run(settings, registry, envelope("a2", "articles", {"topic": "tea"}), store)
    assert outcome.succeeded, outcome.error
    assert store.get_job("a2")["usage"]["cost"] is None
    assert store.spent("u1", datetime.now(UTC).date()) == 0.0


def test_over_budget_with_fail_the_job_fails_budget_exceeded(generation, store):
    settings, registry = bundled(generation, VIP_WORKER_USER_DAILY_BUDGET="1.0",
                                 VIP_WORKER_BUDGET_OUTCOME="fail")
    now = datetime.now(UTC)
    store.add_spend("u1", now.date(), 1.0, now)
    outcome = run(settings, registry, envelope("a3", "articles", {"topic": "tea"}), store)
    assert outcome.kind == "dead_lettered"
    job = store.get_job("a3")
    assert (job["status"], job["error"]) == ("failed", "budget exceeded")
    assert generation.calls_by_job == {}
    # Another user, under the same budget, is not stopped.
    other = run(settings, registry, envelope("a4", "articles", {"topic": "tea"}, "u2"), store)
    assert other.succeeded, other.error
    assert generation.calls_by_job == {"a4": 1}


def test_a_per_user_budget_overrides_the_default(generation, store):
    settings, registry = bundled(generation, VIP_WORKER_USER_DAILY_BUDGET="100",
                                 VIP_WORKER_USER_BUDGETS="u1=0.5",
                                 VIP_WORKER_BUDGET_OUTCOME="fail")
    now = datetime.now(UTC)
    store.add_spend("u1", now.date(), 0.5, now)
    store.add_spend("u2", now.date(), 0.5, now)
    assert run(settings, registry, envelope("b1", "articles", {"topic": "t"}), store
               ).kind == "dead_lettered"
    assert run(settings, registry, envelope("b2", "articles", {"topic": "t"}, "u2"), store
               ).succeeded


def test_over_budget_with_defer_the_handler_defers_until_the_next_utc_day(generation, store):
    """At the handler level (the consumer's handling of ``Deferred`` is the quota work's):
    the daemon claimed the job; the handler raises ``Deferred("budget exceeded")`` with
    the delay to the next UTC midnight, calls nothing and leaves the job to its holder
    (no failure, no requeue: the consumer releases it, refunding the attempt)."""
    settings, registry = bundled(generation, VIP_WORKER_USER_DAILY_BUDGET="1.0")
    assert settings.budget_outcome == "defer"
    now = datetime.now(UTC)
    store.add_spend("u1", now.date(), 2.0, now)
    store.create_job("d1", "u1", "articles", {}, now)
    store.claim("d1", user_id="u1", type="articles", params={}, message_id="m1",
                lease_s=60, now=now, delivery="tok")
    poller = PollerContext(0, settings, {})
    poller.provide(STORE, lambda: store)
    ctx = HandlerContext.for_message(
        poller, plugin="articles", message_id="m1", job_id="d1", queue="q",
        receive_count=1, max_attempts=5, max_job_time_s=60, log_fields={}, attempt=1,
        delivery="tok")
    before = datetime.now(UTC)
    try:
        with pytest.raises(Deferred) as raised:
            registry.get("articles").fn(envelope("d1", "articles", {"topic": "t"}), ctx)
    finally:
        close_generation_client(poller)
    assert raised.value.reason == "budget exceeded"
    assert until_next_day_s(datetime.now(UTC)) - 1 <= raised.value.delay_s \
        <= until_next_day_s(before)
    job = store.get_job("d1")
    assert (job["status"], job["attempts"], job["error"]) == ("processing", 1, None)
    assert generation.calls_by_job == {}


def test_until_next_day():
    assert until_next_day_s(datetime(2025, 1, 15, 23, 59, 0, tzinfo=UTC)) == 60
    assert until_next_day_s(datetime(2025, 1, 15, 0, 0, 0, tzinfo=UTC)) == 86400


@pytest.mark.parametrize("env, problem", [
    ({"VIP_WORKER_PRICES": '{"m": {"in_per_1k": -1}}'}, "m.in_per_1k"),
    ({"VIP_WORKER_PRICES": '{"m": {"per_token": 1}}'}, "unknown key 'per_token'"),
    ({"VIP_WORKER_USER_BUDGETS": "u1"}, "USER=AMOUNT"),
    ({"VIP_WORKER_BUDGET_OUTCOME": "drop"}, "budget_outcome"),
])
def test_bad_budget_and_price_settings_name_the_key(env, problem):
    with pytest.raises(config.ConfigError) as raised:
        config.load(None, environ=env, require_queues=False)
    assert problem in str(raised.value) or problem in raised.value.key.lower()


def test_a_completed_job_s_usage_is_counted_for_the_metrics(generation, store):
    from vip_worker.services.metrics import USAGE, UsageMetrics

    settings, registry = bundled(generation)
    counter = UsageMetrics()
    resources = {USAGE: counter}
    try:
        outcome = run_handler(registry.get("articles").fn,
                              envelope("m1", "articles", {"topic": "tea", "wordCount": 30}),
                              settings=settings, store=store, resources=resources)
    finally:
        close_generation_client(PollerContext(0, settings, resources))
    assert outcome.succeeded, outcome.error
    (line,) = counter.drain_emf("VipWorker")
    assert (line["Type"], line["Model"], line["Jobs"], line["TokensOut"]) == (
        "articles", "stub-writer-1", 1, 40)
    assert line["Cost"] == pytest.approx(store.get_job("m1")["usage"]["cost"])
    (key,) = counter.take_minutes()
    assert key[:3] == ("articles", "u1", "stub-writer-1")
