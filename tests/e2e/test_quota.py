"""Quotas across a fleet: real daemons (processes) against moto, the stub generation
service and one SQLite job store shared by every poller (one host). The rate limit holds
window by window, a 429 pauses every poller, one user's bulk does not hold back another's
single job; deferrals spend no attempt and never reach the DLQ."""

from __future__ import annotations

import json
import os
import uuid

import pytest

from tests.support.daemon import TEST_PLUGINS
from tests.support.sqs import queue_counts
from vip_worker import config
from vip_worker.store.factory import open_store

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
PLUGINS = os.path.join(os.path.dirname(TEST_PLUGINS), "..", "..", "plugins")
MAX_RECEIVES = 3  # deferred many more times than this, yet never redriven


def article(job_id: str, user: str, topic: str) -> str:
    return json.dumps({"jobId": job_id, "userId": user, "type": "articles",
                       "timestamp": "2025-01-15T10:30:00Z",
                       "payload": {"mode": "topic", "topic": topic, "wordCount": 50}})


def send_all(sqs, url: str, bodies: list[str]) -> None:
    for start in range(0, len(bodies), 10):
        entries = [{"Id": str(n), "MessageBody": body}
                   for n, body in enumerate(bodies[start:start + 10])]
        assert not sqs.send_message_batch(QueueUrl=url, Entries=entries).get("Failed")


@pytest.fixture
def fleet(tmp_path, make_queue, start_daemon, generation):
    """``fleet(daemons, quotas, processes=2, concurrency=2)`` -> (daemons, urls, store):
    daemons with the bundled plugins on one articles queue, one SQLite file for all."""
    sqlite = str(tmp_path / "shared" / "jobs.sqlite3")

    def start(count: int, quotas: dict, processes: int = 2, concurrency: int = 2):
        urls = make_queue("articles", visibility_s=30, max_receives=MAX_RECEIVES)
        tables = {"articles": {"url": urls["url"], "wait_time_s": 1,
                               "visibility_timeout_s": 30}}
        daemons = [start_daemon(tables, processes=processes, concurrency=concurrency,
                                plugin_dirs=[os.path.abspath(PLUGINS)], plugins={},
                                sqlite_path=sqlite, fastapi_url=generation.url,
                                log_level="INFO",
                                env={"VIP_WORKER_QUOTAS": json.dumps(quotas)})
                   for _ in range(count)]
        for daemon in daemons:
            daemon.wait_for("poller.ready", count=processes)
        settings = config.load(environ={"VIP_WORKER_SQLITE_PATH": sqlite},
                               require_queues=False)
        return daemons, urls, open_store(settings)

    return start


def all_completed(store, jobs):
    return all((store.get_job(j) or {}).get("status") == "completed" for j in jobs)


def deferred(daemons) -> int:
    return sum(len(d.events("message.deferred")) for d in daemons)


@pytest.mark.slow
def test_two_daemons_keep_to_30_calls_in_any_60_s_window(sqs, fleet, generation):
    generation.latency_s = 0.2
    daemons, urls, store = fleet(2, {"generation": {"rpm": 30}})
    jobs = [uuid.uuid4().hex[:24] for _ in range(40)]
    send_all(sqs, urls["url"], [article(j, f"user-{n % 4}", f"topic {n}")
                                for n, j in enumerate(jobs)])
    # 30 in the first minute, the other 10 once the window slides: over 60 s.
    daemons[0].wait_until(lambda: all_completed(store, jobs), timeout=150,
                          what="every job completed")
    assert generation.most_in_window(60) <= 30
    assert len(generation.call_times()) == 40  # one call per job: none lost, none doubled
    assert deferred(daemons) >= 10
    assert all(store.get_job(j)["attempts"] == 1 for j in jobs)  # deferrals spent none
    assert queue_counts(sqs, urls["dlq"]) == (0, 0)


def test_a_429_pauses_every_poller_of_both_daemons_until_retry_after(sqs, fleet, generation):
    generation.latency_s = 0.5
    generation.throttle(every=5, retry_after_s=10)
    daemons, urls, store = fleet(2, {"generation": {"rpm": 1000}})
    jobs = [uuid.uuid4().hex[:24] for _ in range(20)]
    send_all(sqs, urls["url"], [article(j, "user-1", f"topic {n}")
                                for n, j in enumerate(jobs)])
    daemons[0].wait_until(lambda: generation.throttled_calls >= 1, what="a 429")
    generation.throttle()  # one 429 only
    daemons[0].wait_until(lambda: all_completed(store, jobs), timeout=120,
                          what="every job completed")
    times = generation.call_times()
    throttled_at = times[4]  # the 5th call was answered 429
    # Calls granted before the pause was written reach the service within milliseconds;
    # none starts from 1 s after the 429 until its Retry-After is over.
    paused = [t - throttled_at for t in times if throttled_at + 1 < t < throttled_at + 10]
    assert paused == []
    assert any(t >= throttled_at + 10 for t in times)  # then traffic resumes
    assert any(d.events("quota.paused") for d in daemons)
    assert all(store.get_job(j)["attempts"] == 1 for j in jobs)
    assert queue_counts(sqs, urls["dlq"]) == (0, 0)


def test_one_users_bulk_does_not_hold_back_anothers_single_job(sqs, fleet, generation):
    generation.latency_s = 4.0  # one job's duration
    cap = 2
    daemons, urls, store = fleet(1, {"generation": {"user_max_inflight": cap}})
    bulk = [uuid.uuid4().hex[:24] for _ in range(100)]
    send_all(sqs, urls["url"], [article(j, "user-a", f"bulk {n}")
                                for n, j in enumerate(bulk)])
    daemons[0].wait_until(lambda: len(generation.call_times()) >= cap,
                          what="user A's first calls")
    single = uuid.uuid4().hex[:24]
    before = len(generation.call_times())
    sqs.send_message(QueueUrl=urls["url"], MessageBody=article(single, "user-b", "single"))
    daemons[0].wait_until(lambda: "single" in generation.call_topics(), timeout=60,
                          what="user B's call")
    # Counted in calls, not seconds: while B's job waited, A started at most what its cap
    # lets it start in about one job duration (its finished calls replaced, once).
    a_calls_meanwhile = generation.call_topics()[before:].index("single")
    assert a_calls_meanwhile <= 2 * cap
    daemons[0].wait_until(lambda: all_completed(store, [single]), what="B's job completed")
    assert store.get_job(single)["attempts"] == 1
    waiting = [store.get_job(j) for j in bulk]
    assert all(job["attempts"] <= 1 for job in waiting)  # A's deferrals spent none either
    assert queue_counts(sqs, urls["dlq"]) == (0, 0)
