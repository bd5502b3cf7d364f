"""One live update end to end without a server: the shared cache's counts, the store's
buckets, registry and newest jobs, rendered once into the overview's, the fleet page's and
the job list's fragments."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from jinja2 import Environment, FileSystemLoader, select_autoescape

from tests.web.dashboard.test_queuestats import URLS, Clock, Q, sqs_with_dlq
from vip_worker.web.dashboard import HERE
from vip_worker.web.dashboard.live import Live
from vip_worker.web.dashboard.queuestats import QueueStats

NOW = datetime(2026, 12, 4, 12, 5, 0, tzinfo=UTC)


class FakeStore:
    def __init__(self) -> None:
        self.reads: list[tuple] = []

    def read_minutes(self, series, since, until=None, labels=None):
        self.reads.append(("read_minutes", series, since))
        return [{"series": "queue", "labels": {"queue": "articles"}, "minute": m,
                 "succeeded": 9, "failed": 1, "duration_s_sum": 60.0, "duration_n": 10,
                 "visible": 150}
                for m in (NOW - timedelta(minutes=i) for i in range(1, 11))]

    def daemons(self):
        self.reads.append(("daemons",))
        base = {"version": "0.1.0", "pollers": 2, "inflight": [1, 1], "intervalS": 10,
                "startedAt": NOW - timedelta(hours=1)}
        return [{**base, "daemonId": "h1-10", "hostname": "h1", "pid": 10, "state": "running",
                 "lastSeen": NOW - timedelta(seconds=2)},
                {**base, "daemonId": "h2-20", "hostname": "h2", "pid": 20, "state": "running",
                 "lastSeen": NOW - timedelta(seconds=45)}]

    def search_jobs(self, **filters):
        self.reads.append(("search_jobs", filters))
        return [{"_id": f"job-{n}", "status": status, "type": "articles", "userId": "u1",
                 "attempts": 1, "progress": 40, "createdAt": NOW - timedelta(seconds=n)}
                for n, status in enumerate(("processing", "completed"))]


def make_live(store: FakeStore, sqs) -> Live:
    env = Environment(loader=FileSystemLoader(f"{HERE}/templates"),
                      autoescape=select_autoescape(["html"]))
    settings = SimpleNamespace(dashboard_refresh_s=5.0, dashboard_history_h=1.0,
                               dashboard_rate_window_min=5,
                               queues=[Q("articles", URLS["articles"]),
                                       Q("images", URLS["images"])])

    async def call(fn, *args, **kwargs):
        return fn(*args, **kwargs)

    dash = SimpleNamespace(settings=settings, store=store, call=call, resources={},
                           templates=SimpleNamespace(env=env))
    stats = QueueStats(settings.queues, lambda: sqs, 5.0, clock=Clock())
    return Live(dash, clock=lambda: NOW, stats=stats)


def test_one_update_renders_every_pages_fragments_from_one_read_each():
    store, sqs = FakeStore(), sqs_with_dlq()
    update = asyncio.run(make_live(store, sqs).update())
    json.dumps(update)  # what the stream sends
    overview, fleet = update["fragments"]["overview-live"], update["fragments"]["fleet-live"]
    assert "Queue Depth: <b class=\"q-visible\">150</b> messages" in overview
    assert "10 messages/minute" in overview and "15 minutes" in overview
    assert overview.count("<svg") == 4 and 'data-series="images"' in overview
    assert 'data-queue="images"' in overview
    assert "articles-dlq" in overview
    assert 'href="/dashboard/dlq"' in overview  # the fragments' links: the pages' base
    assert 'data-daemon="h1-10"' in fleet and 'data-daemon="h2-20"' in fleet
    assert "status-lost" in fleet  # h2 last reported 45 s ago, over 3 x 10 s
    # 150 + 4 in flight (articles) + 0 (images), over the one running daemon
    assert '<b class="backlog-per-instance">154.0</b>' in fleet
    jobs = update["fragments"]["jobs-live"]
    assert '<a href="/dashboard/jobs/job-0">job-0</a>' in jobs
    assert 'status-processing">processing</span> 40%' in jobs
    assert 'status-completed">completed' in jobs and 'class="next"' not in jobs
    assert [r[0] for r in store.reads] == ["read_minutes", "daemons", "search_jobs"]
    assert store.reads[-1][1] == {"limit": 51}  # the newest jobs, unfiltered: one search
    assert sum(sqs.calls.values()) == 3  # articles, images, the DLQ: once each


def test_a_queue_sqs_cannot_read_leaves_the_backlog_unknown():
    import botocore.exceptions

    store, sqs = FakeStore(), sqs_with_dlq()
    sqs.fail = botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
    update = asyncio.run(make_live(store, sqs).update())
    assert "SQS: EndpointConnectionError" in update["fragments"]["overview-live"]
    assert '<b class="backlog-per-instance">-</b>' in update["fragments"]["fleet-live"]
