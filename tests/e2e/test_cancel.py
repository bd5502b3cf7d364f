"""Cancellation end to end: the real daemon, moto over HTTP, the embedded SQLite store;
``vip-worker jobs cancel`` as a process (the job API calls the same ``request_cancel``).
A cancelled job ends ``cancelled`` and nothing is left in its queue or its DLQ."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime

import pytest

from tests.support.daemon import TEST_PLUGINS
from tests.support.sqs import envelope, queue_counts
from vip_worker import config
from vip_worker.store.factory import open_store

pytestmark = pytest.mark.e2e
BUNDLED = os.path.abspath(os.path.join(os.path.dirname(TEST_PLUGINS), "..", "..", "plugins"))
VISIBILITY_S = 2  # the ledger renews (and learns of cancel requests) every second


@pytest.fixture
def served(tmp_path, make_queue, start_daemon):
    """``served(**settings)`` -> (daemon, queue urls, store, state dir): one poller on one
    queue whose visibility timeout makes the renewal interval 1 s."""
    state = tmp_path / "state"
    stores = []

    def start(**settings):
        urls = make_queue("cancel", visibility_s=VISIBILITY_S)
        table = {"url": urls["url"], "wait_time_s": 1, "visibility_timeout_s": VISIBILITY_S}
        name = settings.pop("queue_name", "work")
        daemon = start_daemon({name: table}, processes=1, state_dir=str(state), **settings)
        store = open_store(config.load(environ={"VIP_WORKER_STATE_DIR": str(state)},
                                       require_queues=False))
        stores.append(store)
        daemon.wait_for("poller.ready")
        return daemon, urls, store, state

    yield start
    for store in stores:
        store.close()


def cancel_with_the_cli(state, job_id) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIP_WORKER_")}
    env["VIP_WORKER_STATE_DIR"] = str(state)
    done = subprocess.run([sys.executable, "-m", "vip_worker", "jobs", "cancel", job_id],
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def send(sqs, urls, type_, **payload) -> str:
    job_id = uuid.uuid4().hex[:24]
    sqs.send_message(QueueUrl=urls["url"], MessageBody=envelope(job_id, type_, payload))
    return job_id


def cancel_running(daemon, store, state, job_id) -> None:
    daemon.wait_for("message.started", job_id=job_id)
    daemon.wait_until(lambda: (store.get_job(job_id) or {}).get("status") == "processing",
                      what="the job claimed")
    assert "cancel requested" in cancel_with_the_cli(state, job_id)


def assert_nothing_left(daemon, sqs, urls, store, job_id) -> None:
    daemon.wait_for("job.cancelled", job_id=job_id, timeout=30)
    assert store.get_job(job_id)["status"] == "cancelled"
    daemon.wait_until(lambda: queue_counts(sqs, urls["url"]) == (0, 0), what="an empty queue")
    assert queue_counts(sqs, urls["dlq"]) == (0, 0)
    assert not daemon.events("message.retried", job_id=job_id)
    assert not daemon.events("message.dead_lettered", job_id=job_id)


def test_a_job_cancelled_while_queued_is_deleted_unrun(sqs, served):
    daemon, urls, store, state = served()
    job_id = uuid.uuid4().hex[:24]
    store.create_job(job_id, "u1", "sleep", {"seconds": 0}, datetime.now(UTC))
    assert cancel_with_the_cli(state, job_id) == f"{job_id} cancelled\n"
    sqs.send_message(QueueUrl=urls["url"], MessageBody=envelope(job_id, "sleep", {}))
    assert_nothing_left(daemon, sqs, urls, store, job_id)
    assert daemon.events("job.cancelled", job_id=job_id)[0]["started"] is False
    assert not daemon.events("message.started", job_id=job_id)


def test_a_running_async_handler_is_cancelled(sqs, served):
    daemon, urls, store, state = served()
    job_id = send(sqs, urls, "async_sleep", seconds=60)
    cancel_running(daemon, store, state, job_id)
    assert_nothing_left(daemon, sqs, urls, store, job_id)
    assert daemon.events("job.cancel_requested", job_id=job_id)
    assert not daemon.events("job.abandoned", job_id=job_id)


def test_a_blocking_handler_that_ignores_it_is_abandoned_after_the_grace(sqs, served):
    daemon, urls, store, state = served(cancel_grace_s=1)
    job_id = send(sqs, urls, "sleep", seconds=20)
    cancel_running(daemon, store, state, job_id)
    assert_nothing_left(daemon, sqs, urls, store, job_id)
    assert daemon.events("job.abandoned", job_id=job_id)


def test_the_bundled_pipeline_stops_between_its_steps_and_saves_nothing(sqs, served,
                                                                        generation):
    generation.latency_s = 4.0  # the generation call is under way when the cancel comes
    daemon, urls, store, state = served(queue_name="articles", plugin_dirs=[BUNDLED],
                                        plugins={}, fastapi_url=generation.url)
    job_id = send(sqs, urls, "articles", mode="topic", topic="Fantasy Football",
                  wordCount=300)
    cancel_running(daemon, store, state, job_id)
    assert_nothing_left(daemon, sqs, urls, store, job_id)
    assert not daemon.events("job.abandoned", job_id=job_id)  # it stopped by itself
    assert store.get_content("generated_content", job_id) == []
