"""The content pipeline end to end: the real daemon, moto over HTTP, the stub
generation service, and the embedded SQLite job store."""

from __future__ import annotations

import json
import os
import signal
import uuid

import pytest

from tests.support.daemon import TEST_PLUGINS
from tests.support.sqs import queue_counts
from vip_worker import config
from vip_worker.store.factory import open_store

pytestmark = pytest.mark.e2e
PLUGINS = os.path.join(os.path.dirname(TEST_PLUGINS), "..", "..", "plugins")


@pytest.fixture
def pipeline(tmp_path, sqs, make_queue, start_daemon, generation):
    """Start the daemon with the bundled plugins on an articles and an images queue."""
    state = tmp_path / "state"

    def start(processes=1, visibility_s=30, **queue):
        urls = {name: make_queue(name, visibility_s=visibility_s)
                for name in ("articles", "images")}
        tables = {name: {"url": u["url"], "wait_time_s": 1, "visibility_timeout_s": visibility_s,
                         **queue} for name, u in urls.items()}
        daemon = start_daemon(tables, processes=processes,
                              plugin_dirs=[os.path.abspath(PLUGINS)], plugins={},
                              state_dir=str(state), fastapi_url=generation.url)
        settings = config.load(environ={"VIP_WORKER_STATE_DIR": str(state)},
                               require_queues=False)
        return daemon, urls, open_store(settings)

    return start


def seed_message(job_id, type_="articles", **payload):
    """Exactly what the app sends (the seed's step 3)."""
    payload = payload or {"mode": "topic", "topic": "Fantasy Football Strategies",
                          "wordCount": 300, "tone": "Professional", "seoOptimization": True,
                          "includeImages": False}
    return json.dumps({"jobId": job_id, "userId": "507f1f77bcf86cd799439012", "type": type_,
                       "timestamp": "2025-01-15T10:30:00Z", "payload": payload})


def new_id():
    return uuid.uuid4().hex[:24]


def test_seed_message_sent_with_plain_boto3_ends_completed_with_content(sqs, pipeline):
    daemon, urls, store = pipeline()
    article, image = new_id(), new_id()
    sqs.send_message(QueueUrl=urls["articles"]["url"], MessageBody=seed_message(article))
    sqs.send_message(QueueUrl=urls["images"]["url"],
                     MessageBody=seed_message(image, "images", prompt="a stadium at dusk"))
    daemon.wait_for("message.succeeded", job_id=article)
    daemon.wait_for("message.succeeded", job_id=image)
    job = store.get_job(article)
    assert job["status"] == "completed" and job["progress"] == 100
    assert job["userId"] == "507f1f77bcf86cd799439012" and job["attempts"] == 1
    assert job["completedAt"] >= job["startedAt"]
    content = store.get_content("generated_content", article)
    assert len(content) == 1 and "Fantasy Football" in content[0]["content"]
    media = store.get_content("media", image)
    assert len(media) == 1 and media[0]["url"].startswith("http://127.0.0.1")


def test_redelivered_message_creates_no_second_content_document(sqs, pipeline, generation):
    daemon, urls, store = pipeline()
    job = new_id()
    sqs.send_message(QueueUrl=urls["articles"]["url"], MessageBody=seed_message(job))
    daemon.wait_for("message.succeeded", job_id=job)
    sqs.send_message(QueueUrl=urls["articles"]["url"], MessageBody=seed_message(job))
    daemon.wait_for("message.succeeded", job_id=job, count=2)
    assert daemon.events("job.already_completed", job_id=job)
    assert len(store.get_content("generated_content", job)) == 1
    assert store.get_job(job)["attempts"] == 1


def test_job_killed_mid_generation_completes_once(sqs, pipeline, generation):
    generation.latency_s = 2.0
    daemon, urls, store = pipeline(processes=2, visibility_s=2)
    daemon.wait_for("poller.ready", count=2)
    job = new_id()
    sqs.send_message(QueueUrl=urls["articles"]["url"], MessageBody=seed_message(job))
    started = daemon.wait_for("message.started", job_id=job)[0]
    daemon.wait_until(lambda: (store.get_job(job) or {}).get("status") == "processing",
                      what="claimed")
    os.kill(started["pid"], signal.SIGKILL)
    done = daemon.wait_for("message.succeeded", job_id=job, timeout=40)[0]
    assert done["pid"] != started["pid"]
    final = store.get_job(job)
    assert final["status"] == "completed" and final["attempts"] == 2
    assert len(store.get_content("generated_content", job)) == 1


def test_permanent_failure_marks_the_job_failed_and_dead_letters(sqs, pipeline, generation):
    daemon, urls, store = pipeline()
    job = new_id()
    sqs.send_message(QueueUrl=urls["articles"]["url"],
                     MessageBody=seed_message(job, mode="no-such-mode", topic="x"))
    daemon.wait_for("message.dead_lettered", job_id=job)
    failed = store.get_job(job)
    assert failed["status"] == "failed" and "no-such-mode" in failed["error"]
    dead = sqs.receive_message(QueueUrl=urls["articles"]["dlq"], MessageAttributeNames=["All"],
                               WaitTimeSeconds=1)["Messages"]
    assert json.loads(dead[0]["Body"])["jobId"] == job
    assert "no-such-mode" in dead[0]["MessageAttributes"]["vip_error"]["StringValue"]
    assert not store.get_content("generated_content", job)
    assert queue_counts(sqs, urls["articles"]["url"]) == (0, 0)


def test_service_errors_are_retried_and_the_job_completes(sqs, pipeline, generation):
    generation.failure_rate = 1.0
    daemon, urls, store = pipeline(retry_backoff_base_s=1, retry_backoff_max_s=1)
    job = new_id()
    sqs.send_message(QueueUrl=urls["articles"]["url"], MessageBody=seed_message(job))
    daemon.wait_for("message.retried", job_id=job)
    requeued = store.get_job(job)
    assert requeued["status"] == "queued" and "Retrying" in requeued["message"]
    generation.failure_rate = 0.0
    daemon.wait_for("message.succeeded", job_id=job, timeout=30)
    assert store.get_job(job)["status"] == "completed"


def test_last_attempt_marks_the_job_failed_before_the_dlq(sqs, pipeline, generation):
    generation.failure_rate = 1.0
    daemon, urls, store = pipeline(max_attempts=2, retry_backoff_base_s=0,
                                   retry_backoff_max_s=0)
    job = new_id()
    sqs.send_message(QueueUrl=urls["articles"]["url"], MessageBody=seed_message(job))
    daemon.wait_for("message.dead_lettered", job_id=job, timeout=30)
    failed = store.get_job(job)
    assert failed["status"] == "failed" and "gave up after 2 attempts" in failed["error"]


def test_a_redriven_dead_letter_runs_its_job_again_cleanly(sqs, sqs_endpoint, pipeline,
                                                           generation):
    import subprocess
    import sys

    generation.failure_rate = 1.0
    daemon, urls, store = pipeline(max_attempts=1)
    job = new_id()
    sqs.send_message(QueueUrl=urls["articles"]["url"], MessageBody=seed_message(job))
    daemon.wait_for("message.dead_lettered", job_id=job, timeout=30)
    assert store.get_job(job)["status"] == "failed"
    generation.failure_rate = 0.0  # the service is back: move the dead letter home
    config_path = daemon.log_path.parent / "vip-worker.toml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIP_WORKER_")}
    env["AWS_ENDPOINT_URL_SQS"] = sqs_endpoint
    moved = subprocess.run([sys.executable, "-m", "vip_worker", "dlq", "redrive", "articles",
                            "--config", str(config_path)], env=env, capture_output=True,
                           text=True, timeout=60)
    assert moved.returncode == 0, moved.stdout + moved.stderr
    daemon.wait_for("message.succeeded", job_id=job, timeout=30)
    final = store.get_job(job)
    assert final["status"] == "completed" and final["error"] is None
    assert len(store.get_content("generated_content", job)) == 1
