"""The jobs page in Debian's Chromium, against the real daemon and moto: while a batch runs,
the jobs' statuses in the list change from queued to completed without a reload (the
``jobs-live`` fragment of /dashboard/events).

The batch's jobs are made in the store first (queued, as the API makes them) and their
messages sent only once the page shows them, so the page certainly sees them queued. Every
wait is on the page's content (Playwright's wait_for_function, bounded by a generous
timeout), never a fixed sleep.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from tests.support.browser import screenshot, sign_in
from tests.support.web import ARTICLE
from vip_worker.message import Envelope

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(180)]
WAIT_MS = 60_000  # a bound on each wait, not a timing assertion
USER = "507f1f77bcf86cd799439012"
BATCH = 4
STATUSES_JS = """(ids) => ids.map((id) => {
    const link = document.querySelector('#jobs a[href$="/jobs/' + id + '"]');
    const cell = link && link.closest('tr').querySelector('.status');
    return cell ? cell.textContent.trim() : null;
})"""


def statuses(page, ids: list[str]) -> list[str | None]:
    return page.evaluate(STATUSES_JS, ids)


def test_the_jobs_statuses_turn_completed_in_the_list_without_a_reload(
        dashboard_stack, page, sqs):
    stack = dashboard_stack(latency_s=0.2)
    now = datetime.now(UTC)
    ids = [uuid.uuid4().hex[:24] for _ in range(BATCH)]
    for job_id in ids:
        stack.store.create_job(job_id, USER, "articles", ARTICLE, now, queue="articles")
    sign_in(page, stack.url, stack.web.keys["admin"])
    page.goto(f"{stack.url}/dashboard/jobs")
    assert statuses(page, ids) == ["queued"] * BATCH
    page.evaluate("window.__sameDocument = true")  # gone on a reload
    page.wait_for_function("document.getElementById('live-status').dataset.state === 'open'",
                           timeout=WAIT_MS)
    stamp = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    for job_id in ids:
        sqs.send_message(QueueUrl=stack.urls["url"], MessageBody=Envelope(
            job_id=job_id, user_id=USER, type="articles", timestamp=stamp,
            payload=ARTICLE).to_body())
    page.wait_for_function(
        f"(ids) => ({STATUSES_JS})(ids).every((s) => s === 'completed')", arg=ids,
        timeout=WAIT_MS)
    assert page.evaluate("window.__sameDocument === true")  # every change came live
    assert all(stack.store.get_job(job_id)["status"] == "completed" for job_id in ids)
    screenshot(page, "dashboard-jobs-live")
