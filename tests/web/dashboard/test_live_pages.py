"""The overview, the fleet page and /dashboard/events served by `vip-worker web` on both
stores, with the queue's counts from moto and the history and fleet from the store."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from tests.support.mongomock_compat import allow_bulk_sort
from tests.support.wait import wait_until
from tests.support.web import sse_events
from vip_worker.store.buckets import MinuteRow


def seed(store, now: datetime) -> None:
    minute = now.replace(second=0, microsecond=0)
    store.bump_minutes([MinuteRow("queue", {"queue": "articles"}, minute - timedelta(minutes=i),
                                  {"succeeded": 9, "failed": 1, "duration_s_sum": 30.0,
                                   "duration_n": 10}, {"visible": 5})
                        for i in range(1, 4)])
    base = {"version": "0.1.0", "pollers": 2, "inflight": [1, 0], "intervalS": 1.0,
            "startedAt": now - timedelta(minutes=5), "state": "running"}
    store.report_daemon("alpha-1", {**base, "hostname": "alpha", "pid": 101}, now)
    store.report_daemon("beta-2", {**base, "hostname": "beta", "pid": 202},
                        now - timedelta(minutes=1))


def start(web_api, make_queue, sqs, **values):
    allow_bulk_sort()  # bump_minutes' bulk_write on mongomock
    urls = make_queue("articles", dlq=True)
    for n in range(3):
        sqs.send_message(QueueUrl=urls["url"], MessageBody=f'{{"n": {n}}}')
    sqs.send_message(QueueUrl=urls["dlq"], MessageBody="{}")
    api = web_api(queues=False, keys=False, environ={"ARTICLES_QUEUE_URL": urls["url"]},
                  **values)
    seed(api.store, datetime.now(UTC))
    return api, urls


def test_the_overview_shows_each_queue_its_dlq_and_charts(web_api, make_queue, sqs):
    api, urls = start(web_api, make_queue, sqs)
    with api.client() as client:
        page = client.get("/dashboard/overview")
    assert page.status_code == 200, page.text
    html = page.text
    assert 'data-queue="articles"' in html
    assert 'Queue Depth: <b class="q-visible">3</b> messages' in html
    assert urls["dlq"].rsplit("/", 1)[-1] in html
    assert '<dd class="q-dlq"><a href="/dashboard/dlq">1</a></dd>' in html
    rate = float(re.search(r'class="q-rate">([0-9.]+) messages/minute', html).group(1))
    assert 7.5 <= rate <= 10  # 30 in the 3 minutes before this one, and this one so far
    assert html.count("<svg") == 4
    assert "/dashboard/static/live.js" in html


def test_the_fleet_page_lists_the_daemons_and_the_lost_one(web_api, make_queue, sqs):
    api, _ = start(web_api, make_queue, sqs)
    with api.client() as client:
        page = client.get("/dashboard/fleet")
    assert page.status_code == 200, page.text
    assert 'data-daemon="alpha-1"' in page.text and 'data-daemon="beta-2"' in page.text
    beta = page.text.split('data-daemon="beta-2"', 1)[1].split("</tr>", 1)[0]
    assert "status-lost" in beta
    assert '<b class="backlog-per-instance">3.0</b>' in page.text  # 3 visible, 1 running


def hub_of(api):
    """The web process's live hub (made at the first page or stream)."""
    mount = next(r for r in api.server.app.routes if getattr(r, "path", "") == "/dashboard")
    return mount.app.state.dashboard.resources["live"].hub


def test_the_event_stream_sends_both_pages_fragments(web_api, make_queue, sqs):
    api, _ = start(web_api, make_queue, sqs)
    with api.client() as client, client.stream("GET", "/dashboard/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        event, data = next(sse_events(response))
    assert event == "update"
    assert set(data["fragments"]) == {"overview-live", "fleet-live", "jobs-live"}
    assert 'data-queue="articles"' in data["fragments"]["overview-live"]
    assert 'data-daemon="alpha-1"' in data["fragments"]["fleet-live"]


def test_three_streams_share_one_producer_which_stops_when_they_close(web_api, make_queue,
                                                                      sqs):
    # one interval spans the whole test: the three streams certainly share one update
    api, _ = start(web_api, make_queue, sqs, dashboard_refresh_s=300.0)
    with api.client() as a, api.client() as b, api.client() as c, \
            a.stream("GET", "/dashboard/events") as one, \
            b.stream("GET", "/dashboard/events") as two, \
            c.stream("GET", "/dashboard/events") as three:
        readers = [sse_events(r) for r in (one, two, three)]  # kept: closing one closes it
        frames = [next(reader) for reader in readers]
        hub = hub_of(api)
        assert hub.subscribers == 3
        assert hub.produced == 1  # one update gathered, sent to all three
    assert frames[0] == frames[1] == frames[2]
    wait_until(lambda: hub.subscribers == 0 and hub._task is None, 15,
               message="the closed streams unsubscribed and the producer stopped")


def test_the_pages_need_a_session_when_keys_exist(web_api):
    api = web_api()
    with api.client() as client:
        for path in ("/dashboard/overview", "/dashboard/fleet", "/dashboard/events"):
            response = client.get(path)
            assert response.status_code == 303, path
            assert "/dashboard/login" in response.headers["location"]
