"""The overview and the fleet page in Debian's Chromium, against real daemons and moto: the
queues' counts change while a batch runs without a reload (Server-Sent Events), and the
fleet shows two daemons, then one lost after the other is SIGKILLed.

The daemons and the web share one SQLite store (one state directory). Every wait is on the
page's content (Playwright's wait_for_function, bounded by a generous timeout), never a
fixed sleep. Screenshots go to the artifacts directory (build/artifacts); the ones in
docs/images/ are copies of them.
"""

from __future__ import annotations

import uuid

import pytest

from tests.support.browser import screenshot, sign_in
from tests.support.sqs import envelope

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
WAIT_MS = 60_000  # a bound on each wait, not a timing assertion
DAEMON_SETTINGS = {"metrics_interval_s": 1, "fleet_report_interval_s": 1,
                   "lifeline_interval_s": 0, "log_level": "INFO"}


def no_reload_marker(page) -> None:
    page.evaluate("window.__sameDocument = true")


def still_same_document(page) -> bool:
    return page.evaluate("window.__sameDocument === true")


def start_stack(tmp_path, make_queue, start_daemon, web_api, daemons=1):
    urls = make_queue("articles")
    state = tmp_path / "state"  # web_api's state directory: one store for all
    queues = {"articles": {"url": urls["url"], "wait_time_s": 1}}
    started = []
    for n in range(daemons):
        daemon = start_daemon(queues, processes=1, concurrency=4, state_dir=str(state),
                              runtime_dir=str(tmp_path / f"run-{n}"), **DAEMON_SETTINGS)
        started.append(daemon)
    for daemon in started:
        daemon.wait_for("poller.ready", timeout=60)
    api = web_api(queues=False, environ={"ARTICLES_QUEUE_URL": urls["url"]},
                  dashboard_refresh_s=1.0)
    return api, urls, started


@pytest.mark.parametrize("web_store", ["sqlite"], indirect=True)
def test_the_overview_counts_change_while_a_batch_runs_without_a_reload(
        tmp_path, sqs, make_queue, start_daemon, web_api, page):
    api, urls, _ = start_stack(tmp_path, make_queue, start_daemon, web_api)
    sign_in(page, api.url, api.keys["admin"])
    page.goto(f"{api.url}/dashboard/overview")
    card = 'section.queue[data-queue="articles"]'
    assert page.locator(f"{card} dd.q-visible").inner_text() == "0"
    no_reload_marker(page)
    page.wait_for_function("document.getElementById('live-status').dataset.state === 'open'",
                           timeout=WAIT_MS)
    for _ in range(12):
        sqs.send_message(QueueUrl=urls["url"], MessageBody=envelope(
            uuid.uuid4().hex[:24], "sleep", {"seconds": 1}))
    sqs.send_message(QueueUrl=urls["url"], MessageBody=envelope(uuid.uuid4().hex[:24], "fail"))
    # the batch shows up: messages waiting or in flight, pushed to the open page
    page.wait_for_function(
        """(card) => [...document.querySelectorAll(card + ' dd.q-visible, ' + card +
                      ' dd.q-inflight')].some((e) => e.textContent.trim() !== '0')""",
        arg=card, timeout=WAIT_MS)
    # ...and drains, with the daemons' per-minute buckets drawn in the throughput chart
    page.wait_for_function(
        """(card) => document.querySelector(card + ' dd.q-visible').textContent.trim() === '0'
              && document.querySelector(card + ' dd.q-inflight').textContent.trim() === '0'
              && document.querySelector(
                   '.chart-throughput [data-series="articles"], .chart-throughput circle')""",
        arg=card, timeout=WAIT_MS)
    assert still_same_document(page)  # every change came through the event stream
    assert page.locator(f"{card} .q-rate").inner_text() != "0 messages/minute"
    screenshot(page, "dashboard-overview")  # docs/images/ holds a copy
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    page.reload()
    page.wait_for_selector(card)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    screenshot(page, "dashboard-overview-phone")


@pytest.mark.parametrize("web_store", ["sqlite"], indirect=True)
def test_the_fleet_shows_two_daemons_then_one_lost_after_a_sigkill(
        tmp_path, make_queue, start_daemon, web_api, page):
    api, _, (first, second) = start_stack(tmp_path, make_queue, start_daemon, web_api,
                                          daemons=2)
    sign_in(page, api.url, api.keys["admin"])
    page.goto(f"{api.url}/dashboard/fleet")
    no_reload_marker(page)
    page.wait_for_function(
        "document.querySelectorAll('tr.daemon.state-running').length === 2", timeout=WAIT_MS)
    for daemon in (first, second):
        row = page.locator(f'tr.daemon[data-pid="{daemon.pid}"]')
        assert row.count() == 1
        assert "running" in row.inner_text()
    assert page.locator(".live-count").inner_text() == "2"
    screenshot(page, "dashboard-fleet")  # docs/images/ holds a copy

    second.kill()  # SIGKILL to the whole group: nothing says goodbye
    page.wait_for_function(
        f"""() => {{
            const lost = document.querySelector('tr.daemon[data-pid="{second.pid}"]');
            return lost && lost.classList.contains('state-lost')
                && document.querySelectorAll('tr.daemon.state-running').length === 1;
        }}""", timeout=WAIT_MS)
    assert still_same_document(page)
    assert page.locator(f'tr.daemon[data-pid="{first.pid}"]').get_attribute(
        "class").split()[-1] == "state-running"
    assert page.locator(".live-count").inner_text() == "1"
    screenshot(page, "dashboard-fleet-lost")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    page.reload()
    page.wait_for_selector("tr.daemon")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    screenshot(page, "dashboard-fleet-phone")
