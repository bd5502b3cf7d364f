"""The dashboard in Debian's Chromium, against the real daemon and moto: a job's timeline
found by its id, a running job cancelled from its page, a dead letter redriven from the
page until its job completes; actions without a CSRF token, or from a viewer, refused.

Each page is saved as a screenshot (tests/support/browser.py ``screenshot``)."""

from __future__ import annotations

import socket
from datetime import UTC, datetime

import httpx
import pytest

from tests.support.browser import screenshot, sign_in
from tests.support.ops_cli import dead_letter
from tests.support.sqs import queue_counts
from tests.support.wait import wait_until
from tests.support.web import ARTICLE
from vip_worker.message import Envelope

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(180)]
USER = "507f1f77bcf86cd799439012"


def create_job(stack) -> str:
    answer = httpx.post(f"{stack.url}/api/content/generate", json=ARTICLE, timeout=10,
                        headers={"Authorization": f"Bearer {stack.web.keys['admin']}",
                                 "X-User-Id": USER})
    assert answer.status_code == 202, answer.text
    return answer.json()["jobId"]


def status(stack, job_id: str) -> str:
    return stack.store.get_job(job_id)["status"]


def events(page) -> list[str]:
    return page.locator("#timeline li").evaluate_all(
        "items => items.map(item => item.dataset.event)")


def test_a_job_found_by_id_shows_its_timeline_and_a_running_job_is_cancelled(
        dashboard_stack, page):
    stack = dashboard_stack(latency_s=0.2)
    done = create_job(stack)
    wait_until(lambda: status(stack, done) == "completed", 60, interval_s=0.2,
               message="the first job to complete")
    sign_in(page, stack.url, stack.web.keys["admin"])
    page.goto(f"{stack.url}/dashboard/jobs")
    screenshot(page, "jobs")
    page.fill("#job_id", done)
    page.click("form[role=search] button[type=submit]")
    page.wait_for_url(f"**/dashboard/jobs/{done}")
    assert page.locator("#status").inner_text() == "completed"
    steps = events(page)
    assert steps[0] == "created" and steps[-1] == "completed", steps
    assert "claimed" in steps and "progress" in steps, steps
    claimed = page.locator("#timeline li[data-event=claimed]").inner_text()
    assert f"{socket.gethostname()} " in claimed and "/poller 0" in claimed  # host, poller
    assert page.locator("#result").count() == 1
    screenshot(page, "job")

    stack.generation.latency_s = 30.0  # the next job's generation call is under way
    running = create_job(stack)
    wait_until(lambda: status(stack, running) == "processing", 60, interval_s=0.2,
               message="the second job to run")
    page.goto(f"{stack.url}/dashboard/jobs/{running}")
    page.click("text=Cancel job…")
    page.wait_for_url(f"**/dashboard/jobs/{running}/cancel")
    screenshot(page, "confirm-cancel")
    page.click("text=Yes, cancel the job")
    page.wait_for_url(f"**/dashboard/jobs/{running}?done=*")
    wait_until(lambda: status(stack, running) == "cancelled", 60, interval_s=0.2,
               message="the running job to end cancelled")
    stack.daemons[0].wait_for("job.cancelled", job_id=running)
    page.reload()
    assert page.locator("#status").inner_text() == "cancelled"
    assert "cancelled" in events(page) and "cancel_requested" in events(page)


def test_a_dead_letter_redriven_from_the_page_completes(dashboard_stack, page, sqs):
    stack = dashboard_stack(latency_s=0.2)
    job_id = "65a1b2c3d4e5f6a7b8c9d0e1"
    now = datetime.now(UTC)
    stack.store.create_job(job_id, USER, "articles", ARTICLE, now, queue="articles")
    stack.store.fail(job_id, "GenerationError: the model was overloaded", now)
    body = Envelope(job_id=job_id, user_id=USER, type="articles",
                    timestamp=now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                    payload=ARTICLE).to_body()
    sqs.send_message(QueueUrl=stack.urls["dlq"], MessageBody=body, MessageAttributes={
        "vip_error_class": {"DataType": "String", "StringValue": "GenerationError"},
        "vip_error": {"DataType": "String", "StringValue": "the model was overloaded"},
        "vip_attempts": {"DataType": "Number", "StringValue": "5"},
        "vip_source_queue": {"DataType": "String", "StringValue": "articles"},
        "vip_source_message_id": {"DataType": "String", "StringValue": "m-1"}})
    dead_letter(sqs, stack.urls["dlq"], "65a1b2c3d4e5f6a7b8c9d0e2", error="bad payload")
    sign_in(page, stack.url, stack.web.keys["admin"])
    page.goto(f"{stack.url}/dashboard/dlq")
    row = page.locator("tr", has_text=job_id)
    assert "the model was overloaded" in row.inner_text()
    screenshot(page, "dlq")
    row.locator("a").first.click()
    page.wait_for_url("**/dashboard/dlq/articles/messages/*")
    assert job_id in page.locator("#body").inner_text()
    screenshot(page, "dlq-message")
    page.go_back()
    page.fill("#reason", "overloaded")
    page.click("form[role=search] button[type=submit]")
    page.locator("tr", has_text=job_id).locator("input[name=message_id]").check()
    page.locator("section.dlq form").first.locator("input[name=confirm]").check()
    page.click("text=Redrive selected")
    assert "Moved 1 message(s)" in page.locator("#outcome").inner_text()
    screenshot(page, "dlq-redriven")
    wait_until(lambda: status(stack, job_id) == "completed", 60, interval_s=0.2,
               message="the redriven job to complete")
    assert queue_counts(sqs, stack.urls["dlq"]) == (1, 0)  # the other dead letter stays


@pytest.mark.parametrize("web_store", ["sqlite"], indirect=True)
def test_actions_without_csrf_or_from_a_viewer_are_refused(web_api, page):
    api = web_api(keys=True)
    from vip_worker.web.keys import create_key

    viewer = create_key(api.settings.web_keys_file, "support", "viewer")[1]
    job_id = "65a1b2c3d4e5f6a7b8c9d0e3"
    api.store.create_job(job_id, USER, "articles", ARTICLE, datetime.now(UTC))
    sign_in(page, api.url, api.keys["admin"])
    page.goto(f"{api.url}/dashboard/jobs/{job_id}/cancel")
    page.evaluate("document.querySelector('main form input[name=csrf]').remove()")
    page.click("text=Yes, cancel the job")
    assert page.locator("h1").inner_text() == "Not allowed"
    assert "CSRF" in page.locator(".banner.error").inner_text()
    assert api.store.get_job(job_id)["status"] == "queued"
    page.context.clear_cookies()
    sign_in(page, api.url, viewer)
    page.goto(f"{api.url}/dashboard/jobs/{job_id}")
    assert "Read-only session" in page.content()
    assert page.locator("text=Cancel job…").count() == 0
    screenshot(page, "viewer-job")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    page.goto(f"{api.url}/dashboard/jobs")
    assert page.locator("#jobs").is_visible()
    screenshot(page, "jobs-phone")
    answer = page.request.post(f"{api.url}/dashboard/jobs/{job_id}/cancel", form={
        "csrf": page.locator("input[name=csrf]").first.input_value(), "confirm": "yes"})
    assert answer.status == 403
    assert api.store.get_job(job_id)["status"] == "queued"
