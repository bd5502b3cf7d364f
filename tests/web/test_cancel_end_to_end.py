"""Cancelling through the job API a job the real daemon runs (moto, the stub generation
service, SQLite): the POST answers 202, the daemon stops the handler between its steps,
the job ends cancelled and nothing is left in the queue or its DLQ."""

from __future__ import annotations

import os

import httpx
import pytest

from tests.support.daemon import TEST_PLUGINS
from tests.support.sqs import queue_counts
from tests.support.wait import wait_until
from tests.support.web import ARTICLE, WebServer
from vip_worker import config
from vip_worker.pipeline.producer import Producer

pytestmark = pytest.mark.e2e
PLUGINS = os.path.abspath(os.path.join(os.path.dirname(TEST_PLUGINS), "..", "..", "plugins"))
USER = {"X-User-Id": "507f1f77bcf86cd799439012"}  # open access: loopback, no key


@pytest.fixture
def generation():
    from vip_worker.dev.stubservice import StubGenerationService

    service = StubGenerationService(latency_s=4.0)  # the call is under way when we cancel
    service.start()
    yield service
    service.stop()


@pytest.fixture
def server(tmp_path):
    started: list[WebServer] = []

    def start(environ: dict[str, str]) -> str:
        settings = config.load(environ=environ, require_queues=False)
        web = WebServer(settings, Producer(settings))
        started.append(web)
        return web.start().url

    yield start
    for web in started:
        web.stop()


def job(url: str, job_id: str) -> dict:
    return httpx.get(f"{url}/api/content/jobs/{job_id}", headers=USER, timeout=10).json()


def test_a_running_job_cancelled_through_the_api_ends_cancelled(
        tmp_path, sqs, make_queue, start_daemon, generation, server, sqs_endpoint):
    state = str(tmp_path / "state")
    urls = make_queue("articles", visibility_s=2)  # the daemon renews leases every second
    daemon = start_daemon({"articles": {"url": urls["url"], "wait_time_s": 1,
                                        "visibility_timeout_s": 2}},
                          plugin_dirs=[PLUGINS], plugins={}, state_dir=state,
                          fastapi_url=generation.url)
    url = server({"VIP_WORKER_STATE_DIR": state, "ARTICLES_QUEUE_URL": urls["url"],
                  "AWS_ENDPOINT_URL_SQS": sqs_endpoint})
    job_id = httpx.post(f"{url}/api/content/generate", json=ARTICLE, headers=USER,
                        timeout=10).json()["jobId"]
    wait_until(lambda: job(url, job_id)["status"] == "processing", 30, interval_s=0.1,
               message="the job to run")
    answer = httpx.post(f"{url}/api/content/jobs/{job_id}/cancel", headers=USER, timeout=10)
    assert answer.status_code == 202, answer.text
    assert answer.json()["cancelRequestedAt"] is not None
    wait_until(lambda: job(url, job_id)["status"] == "cancelled", 30, interval_s=0.2,
               message="the job to end cancelled")
    daemon.wait_for("job.cancelled", job_id=job_id)
    final = job(url, job_id)
    assert final["cancelledAt"] and final["result"] is None
    daemon.wait_until(lambda: queue_counts(sqs, urls["url"]) == (0, 0), what="an empty queue")
    assert queue_counts(sqs, urls["dlq"]) == (0, 0)
    again = httpx.post(f"{url}/api/content/jobs/{job_id}/cancel", headers=USER, timeout=10)
    assert again.status_code == 409
