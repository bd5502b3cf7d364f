"""Completion callbacks end to end: the real daemon, moto, a receiver on 127.0.0.1
(allowed explicitly: loopback is refused by default)."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid

import pytest

from tests.support.callback_receiver import HOLD
from tests.support.sqs import envelope
from vip_worker import config
from vip_worker.services.callbacks import verify
from vip_worker.store.factory import open_store

pytestmark = pytest.mark.e2e
SECRET = "whsec-e2e"


@pytest.fixture
def callback_daemon(tmp_path, sqs, make_queue, start_daemon, callback_receiver):
    def start(processes=1, **values):
        urls = make_queue("cb")
        state = tmp_path / "state"
        daemon = start_daemon(
            {"work": {"url": urls["url"], "wait_time_s": 1}}, processes=processes,
            state_dir=str(state), callback_allowed_hosts=["127.0.0.1"],
            callback_timeout_s=1.0, callback_sweep_interval_s=0.2,
            env={"VIP_WORKER_CALLBACK_SECRET": SECRET}, **values)
        settings = config.load(environ={"VIP_WORKER_STATE_DIR": str(state)},
                               require_queues=False)
        return daemon, urls["url"], open_store(settings)

    return start


def send(sqs, url, type_, receiver, **payload):
    job_id = uuid.uuid4().hex[:24]
    body = envelope(job_id, type_, {**payload, "callbackUrl": receiver.url})
    sqs.send_message(QueueUrl=url, MessageBody=body)
    return job_id


def delivered_state(store, job_id):
    return ((store.get_job(job_id) or {}).get("callback") or {}).get("state") == "delivered"


def test_a_completed_job_is_posted_once_signed(sqs, callback_daemon, callback_receiver):
    daemon, url, store = callback_daemon()
    job = send(sqs, url, "sleep", callback_receiver, seconds=0)
    daemon.wait_for("callback.delivered", job_id=job)
    [got] = callback_receiver.requests
    assert verify(SECRET, got.headers["X-VIP-Signature"], got.body, now=time.time())
    assert got.headers["X-VIP-Delivery"] == f"{job}:completed"
    doc = json.loads(got.body)
    assert doc["jobId"] == job and doc["status"] == "completed" and doc["event"] == "job.completed"
    entry = store.get_job(job)["callback"]
    assert entry["state"] == "delivered" and entry["attempts"] == 1


def test_a_500_is_retried_and_delivered(sqs, callback_daemon, callback_receiver):
    callback_receiver.answers = [500]
    daemon, url, store = callback_daemon()
    job = send(sqs, url, "sleep", callback_receiver, seconds=0)
    failed = daemon.wait_for("callback.failed", job_id=job)[0]
    assert failed["error"] == "HTTP 500"
    daemon.wait_for("callback.delivered", job_id=job, timeout=20)
    ids = [r.headers["X-VIP-Delivery"] for r in callback_receiver.requests]
    assert ids == [f"{job}:completed"] * 2
    assert store.get_job(job)["status"] == "completed"
    assert store.get_job(job)["callback"]["attempts"] == 2


def test_a_failed_jobs_callback_is_delivered(sqs, callback_daemon, callback_receiver):
    daemon, url, store = callback_daemon()
    job = send(sqs, url, "fail", callback_receiver)
    daemon.wait_for("callback.delivered", job_id=job)
    [got] = callback_receiver.requests
    assert got.headers["X-VIP-Delivery"] == f"{job}:failed"
    doc = json.loads(got.body)
    assert doc["status"] == "failed" and "never succeed" in doc["error"]


def test_a_poller_killed_mid_delivery_leaves_it_to_the_sweep(sqs, callback_daemon,
                                                           callback_receiver):
    callback_receiver.answers = [HOLD]
    daemon, url, store = callback_daemon()
    job = send(sqs, url, "sleep", callback_receiver, seconds=0)
    succeeded = daemon.wait_for("message.succeeded", job_id=job)[0]
    daemon.wait_until(lambda: callback_receiver.held.is_set(), what="the first POST held")
    os.kill(succeeded["pid"], signal.SIGKILL)
    daemon.wait_for("poller.ready", count=2)  # the master replaced it
    callback_receiver.release()  # the first POST is dropped unanswered
    delivered = daemon.wait_for("callback.delivered", job_id=job, timeout=30)[0]
    assert delivered["pid"] != succeeded["pid"]
    daemon.wait_until(lambda: delivered_state(store, job), what="recorded delivered")
    assert [r.headers["X-VIP-Delivery"] for r in callback_receiver.requests] == \
        [f"{job}:completed"] * 2
    assert len(callback_receiver.delivered()) == 1
    assert store.get_job(job)["status"] == "completed"
