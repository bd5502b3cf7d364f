"""The app's exact POST through the job API, run by the real daemon (moto, the stub
generation service, SQLite), and, without SQS, by the web process itself."""

from __future__ import annotations

import os

import httpx
import pytest

from tests.support.daemon import TEST_PLUGINS
from tests.support.wait import wait_until
from tests.support.web import ARTICLE, WebServer
from vip_worker import config
from vip_worker.pipeline.producer import Producer

pytestmark = pytest.mark.e2e
PLUGINS = os.path.abspath(os.path.join(os.path.dirname(TEST_PLUGINS), "..", "..", "plugins"))
USER = {"X-User-Id": "507f1f77bcf86cd799439012"}  # open access: loopback, no key


@pytest.fixture
def serve(tmp_path):
    started: list[WebServer] = []

    def start(environ: dict[str, str]) -> str:
        settings = config.load(environ=environ, require_queues=False)
        server = WebServer(settings, Producer(settings))
        started.append(server)  # stopped at teardown even if it fails to start
        return server.start().url

    yield start
    for server in started:
        server.stop()


def wait_completed(url: str, job_id: str) -> dict:
    def done():
        job = httpx.get(f"{url}/api/content/jobs/{job_id}", headers=USER, timeout=10).json()
        return job if job["status"] in ("completed", "failed") else None

    job = wait_until(done, 60, interval_s=0.2, message=f"job {job_id} to end")
    assert job["status"] == "completed", job
    return job


def test_a_post_in_the_apps_body_is_run_by_the_daemon(tmp_path, make_queue, start_daemon,
                                                      generation, serve, sqs_endpoint):
    state = str(tmp_path / "state")
    queue = make_queue("articles")["url"]
    start_daemon({"articles": {"url": queue, "wait_time_s": 1}}, plugin_dirs=[PLUGINS],
                 plugins={}, state_dir=state, fastapi_url=generation.url)
    url = serve({"VIP_WORKER_STATE_DIR": state, "ARTICLES_QUEUE_URL": queue,
                 "AWS_ENDPOINT_URL_SQS": sqs_endpoint})
    answer = httpx.post(f"{url}/api/content/generate", json=ARTICLE, headers=USER, timeout=10)
    assert answer.status_code == 202 and answer.json()["success"] is True
    job = wait_completed(url, answer.json()["jobId"])
    assert job["progress"] == 100 and job["attempts"] == 1
    assert job["result"] == {"collection": "generated_content", "jobId": job["jobId"]}


def test_without_sqs_the_job_runs_in_the_web_process_and_still_answers_202(
        tmp_path, generation, serve):
    url = serve({"VIP_WORKER_STATE_DIR": str(tmp_path / "state"),
                 "VIP_WORKER_PLUGIN_DIRS": PLUGINS, "FASTAPI_URL": generation.url})
    answer = httpx.post(f"{url}/api/content/generate", json=ARTICLE, headers=USER, timeout=30)
    assert answer.status_code == 202
    wait_completed(url, answer.json()["jobId"])
