"""``ctx.quota``'s client side (pipeline/quota.py): permits from the shared record,
``Deferred`` when refused, the pause a 429 starts (remembered without a round trip), the
``quotas`` setting, the token estimate, and the producer's MessageGroupId."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from tests.fakes import ConsumerHarness, wait_until
from tests.support.jobstore import RecordingStore, events, tracked_harness
from tests.support.sqs import envelope
from vip_worker import config
from vip_worker.errors import ConfigError, Deferred
from vip_worker.pipeline.generation import GenerationUnavailable
from vip_worker.pipeline.quota import (
    Governor,
    estimate_tokens,
    gated_call,
    outcome_of,
    provide_quota,
    reported_tokens,
)
from vip_worker.plugins.context import QUOTA, FreePermit
from vip_worker.store.quota import QuotaLimits
from vip_worker.testing import MemoryStore

pytestmark = pytest.mark.timeout(30)
T0 = datetime(2025, 1, 15, 10, 30, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def governor(**limits):
    store, clock = RecordingStore(MemoryStore()), Clock()
    return Governor(lambda: store, {"generation": QuotaLimits(**limits)}, clock), store, clock


def test_an_unlimited_provider_costs_no_store_call():
    gov, store, _ = governor(rpm=1)
    with gov.permit("images-model", tokens=10):
        pass
    assert store.calls == []


def test_a_refusal_is_deferred_until_the_budget_refills(caplog):
    gov, store, clock = governor(rpm=1)
    with gov.permit(user="u1"):
        pass
    clock.advance(20)
    with caplog.at_level(logging.INFO, logger="vip_worker.quota"), \
            pytest.raises(Deferred) as caught:
        gov.permit(user="u1", job_id="j1")
    assert (caught.value.reason, caught.value.delay_s) == ("quota:generation:rpm", 40)
    (record,) = events(caplog, "quota.deferred")
    assert (record.provider, record.reason, record.job_id) == ("generation", "rpm", "j1")
    assert store.calls == ["acquire_permit", "report_call", "acquire_permit"]


def test_a_429_pauses_the_provider_defers_the_call_and_later_asks_cost_nothing():
    gov, store, clock = governor(rpm=100)
    with pytest.raises(Deferred) as caught:
        with gov.permit():
            raise GenerationUnavailable("slow down", 429, 10.0)
    assert (caught.value.reason, caught.value.delay_s) == ("provider_paused:generation", 10)
    assert isinstance(caught.value.__cause__, GenerationUnavailable)
    before = len(store.calls)
    clock.advance(4)
    with pytest.raises(Deferred) as caught:
        gov.permit()
    assert caught.value.delay_s == 6 and len(store.calls) == before  # remembered here
    # Another poller (a governor of its own) learns it from the record.
    other = Governor(lambda: store, gov.limits, clock)
    with pytest.raises(Deferred, match="provider_paused"):
        other.permit()
    clock.advance(7)
    with gov.permit():
        pass


def test_errors_are_told_apart_for_the_breaker():
    assert outcome_of(None) == ("ok", None)
    assert outcome_of(GenerationUnavailable("x", 429)) == ("throttled", 10.0)
    assert outcome_of(GenerationUnavailable("x", 503, 3.0)) == ("throttled", 3.0)
    assert outcome_of(GenerationUnavailable("x", 503)) == ("error", None)
    assert outcome_of(GenerationUnavailable("reset")) == ("error", None)  # no answer
    assert outcome_of(ValueError("bad payload")) == ("other", None)


def test_usage_corrects_the_estimate():
    gov, store, _ = governor(tpm=1000)
    with gov.permit(tokens=900) as permit:
        permit.used(120)
    (entry,) = store.quota_record("generation")["log"]
    assert entry["k"] == 120


def test_the_token_estimate_and_the_reported_usage():
    assert estimate_tokens({"wordCount": 1000, "topic": "x" * 40}, 1.5) == 1510
    assert estimate_tokens({}, 1.0) == 800
    assert reported_tokens({"usage": {"total_tokens": 77}}) == 77
    assert reported_tokens({"usage": {"tokensIn": 10, "tokensOut": 5}}) == 15
    assert reported_tokens({"title": "no usage"}) is None


def test_quotas_settings_are_checked_naming_the_key():
    base = {"VIP_WORKER_QUEUE_WORK_URL": "https://sqs.example/q/work",
            "VIP_WORKER_PLUGIN_DIRS": ""}
    settings = config.load(environ={**base, "VIP_WORKER_QUOTAS":
                                    '{"generation": {"rpm": 30, "concurrency": 4}}'})
    assert settings.quotas == {"generation": {"rpm": 30, "concurrency": 4}}
    with pytest.raises(ConfigError, match=r"generation\.rpn: unknown limit"):
        config.load(environ={**base, "VIP_WORKER_QUOTAS": '{"generation": {"rpn": 30}}'})
    with pytest.raises(ConfigError, match=r"generation\.rpm: must be 0 or more"):
        config.load(environ={**base, "VIP_WORKER_QUOTAS": '{"generation": {"rpm": -1}}'})


def test_without_a_governor_ctx_quota_is_free():
    seen = []

    def handler(message, ctx):
        with ctx.quota("generation", tokens=5) as permit:
            seen.append(type(permit))

    h = ConsumerHarness({"articles": handler})
    h.send(envelope(job_id="a" * 24))

    async def scenario(consumer):
        await wait_until(lambda: h.fake.deleted(h.url) and h.idle(), what="the handler")

    h.run(scenario)
    assert seen == [FreePermit]


def test_a_handler_over_its_quota_is_deferred_by_the_daemon():
    calls = []

    def handler(message, ctx):
        result = gated_call(ctx, message.payload, lambda: calls.append(1) or {"ok": True})
        assert result == {"ok": True}

    h, store = tracked_harness(handler, worker={"quotas": {"generation": {"rpm": 1}}})
    real_make = h.make_consumer

    def make_consumer():
        consumer = real_make()
        provide_quota(consumer.context)
        return consumer

    h.make_consumer = make_consumer
    h.send(envelope(job_id="a" * 24))
    h.send(envelope(job_id="b" * 24))

    async def scenario(consumer):
        await wait_until(lambda: consumer.stats["deferred"] == 1 and h.idle(),
                         what="one call and one deferral")
        return consumer.context.resource(QUOTA)

    gov = h.run(scenario)
    assert calls == [1] and gov.acquires == 2
    statuses = sorted(store.get_job(j)["status"] for j in ("a" * 24, "b" * 24))
    assert statuses == ["completed", "queued"]
    assert all(store.get_job(j)["attempts"] <= 1 for j in ("a" * 24, "b" * 24))


class CapturingSqs:
    """An SDK-like client recording send_message's arguments."""

    def __init__(self) -> None:
        self.sent: list[dict] = []

    def send_message(self, **kwargs):
        self.sent.append(kwargs)
        return {"MessageId": f"m{len(self.sent)}"}


@pytest.mark.parametrize("fair", [False, True])
def test_the_producer_sends_the_user_as_message_group_on_a_standard_queue(tmp_path, fair):
    from vip_worker.pipeline.producer import Producer

    settings = config.load(environ={
        "VIP_WORKER_STATE_DIR": str(tmp_path), "ARTICLES_QUEUE_URL":
        "https://sqs.us-east-1.amazonaws.com/123456789012/articles",
        "VIP_WORKER_FAIR_MESSAGE_GROUPS": str(fair).lower()}, require_queues=False)
    client = CapturingSqs()
    producer = Producer(settings, sqs_client=client)
    producer.enqueue("articles", {"topic": "t"}, user_id="user-7")
    producer.close()
    (sent,) = client.sent
    assert sent.get("MessageGroupId") == ("user-7" if fair else None)
    assert "MessageDeduplicationId" not in sent  # a standard queue takes none


# -- the stub service's 429 mode and call log -------------------------------------------


def test_the_stub_answers_every_nth_call_429_and_logs_every_call(generation):
    import requests

    generation.throttle(every=3, retry_after_s=7)
    url = generation.url + "/api/generation/topic"
    answers = [requests.post(url, json={"topic": "t", "word_count": 5}, timeout=5)
               for _ in range(6)]
    assert [a.status_code for a in answers] == [200, 200, 429, 200, 200, 429]
    assert answers[2].headers["Retry-After"] == "7"
    assert generation.throttled_calls == 2 and len(generation.call_times()) == 6
    assert generation.most_in_window(60) == 6
    generation.throttle(window_s=60)
    assert requests.post(url, json={"topic": "t"}, timeout=5).status_code == 429
    generation.throttle()
    assert requests.post(url, json={"topic": "t"}, timeout=5).status_code == 200


def test_most_in_window_slides(generation):
    generation._log = [(t, None) for t in (0.0, 10.0, 59.0, 60.0, 61.0, 130.0)]
    assert generation.most_in_window(60) == 4  # 10, 59, 60, 61
    assert generation.most_in_window(2) == 2


def test_a_store_outage_at_the_report_keeps_the_calls_result(caplog):
    gov, store, _ = governor(rpm=10)
    store.failing.add("report_call")
    with caplog.at_level(logging.ERROR, logger="vip_worker.quota"):
        with gov.permit() as permit:
            result = "generated"
        permit.used(5)
    assert result == "generated"
    (record,) = events(caplog, "quota.report_failed")
    assert (record.provider, record.outcome) == ("generation", "ok")


def test_run_handler_reports_a_deferral():
    from vip_worker.testing import make_message, run_handler

    def handler(message, ctx):
        raise Deferred("budget exceeded", 30)

    outcome = run_handler(handler, make_message("articles"))
    assert outcome.deferred and outcome.kind == "deferred"
    assert 30 <= outcome.delay_s <= 36 and outcome.reason == "Deferred: budget exceeded"


def test_a_permits_lease_is_the_shorter_of_the_providers_and_the_callers():
    gov, store, clock = governor(concurrency=1, lease_s=900)
    gov.permit(lease_s=40)  # its poller dies: never reported
    (held,) = store.quota_record("generation")["held"]
    assert held["until"] == (clock.now + timedelta(seconds=40)).timestamp()
    clock.advance(41)
    with gov.permit():  # the place is free again
        pass
