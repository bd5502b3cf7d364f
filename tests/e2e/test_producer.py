"""The producer API and the enqueue / jobs commands, with the seed's fallback."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from vip_worker import config
from vip_worker.pipeline.producer import Producer

pytestmark = pytest.mark.e2e
PROJECT_PLUGINS = os.path.join(os.path.dirname(__file__), "..", "..", "plugins")


@pytest.fixture
def generation():
    from vip_worker.dev.stubservice import StubGenerationService

    with StubGenerationService() as service:
        yield service


def settings(tmp_path, **env):
    return config.load(environ={"VIP_WORKER_STATE_DIR": str(tmp_path / "state"), **env},
                       require_queues=False)


def test_enqueue_creates_the_job_and_sends_the_seed_format(tmp_path, sqs, sqs_endpoint,
                                                          make_queue):
    urls = make_queue("articles")
    producer = Producer(settings(tmp_path, ARTICLES_QUEUE_URL=urls["url"],
                                 AWS_ENDPOINT_URL_SQS=sqs_endpoint))
    assert producer.is_sqs_configured("articles") and not producer.is_sqs_configured("images")
    params = {"mode": "topic", "topic": "Fantasy Football", "wordCount": 1500}
    job_id = producer.enqueue("articles", params, user_id="u-1")
    assert len(job_id) == 24 and int(job_id, 16) >= 0  # an ObjectId string, as the app makes
    job = producer.store.get_job(job_id)
    assert job["status"] == "queued" and job["userId"] == "u-1" and job["type"] == "articles"
    message = sqs.receive_message(QueueUrl=urls["url"], WaitTimeSeconds=1)["Messages"][0]
    body = json.loads(message["Body"])
    assert list(body) == ["jobId", "userId", "type", "timestamp", "payload"]
    assert body["jobId"] == job_id and body["payload"] == params
    assert body["timestamp"].endswith("Z")
    producer.close()


def test_without_sqs_the_handler_runs_inline(tmp_path, generation, caplog):
    producer = Producer(settings(tmp_path, FASTAPI_URL=generation.url,
                                 VIP_WORKER_PLUGIN_DIRS=os.path.abspath(PROJECT_PLUGINS)))
    assert not producer.is_sqs_configured("articles")
    with caplog.at_level(logging.WARNING, logger="vip_worker.pipeline.producer"):
        job_id = producer.enqueue("articles", {"topic": "Inline", "wordCount": 120},
                                  user_id="u-2")
    assert [r.getMessage() for r in caplog.records] == ["producer.inline"]
    job = producer.store.get_job(job_id)
    assert job["status"] == "completed" and job["progress"] == 100
    assert len(producer.store.get_content("generated_content", job_id)) == 1
    assert generation.total_calls == 1
    producer.close()


def vip(*args, env):
    full = {k: v for k, v in os.environ.items()
            if not k.startswith(("VIP_WORKER_", "ARTICLES_", "IMAGES_"))}
    full.update(env)
    return subprocess.run([sys.executable, "-m", "vip_worker", *args], env=full,
                          capture_output=True, text=True, timeout=60)


def test_enqueue_and_jobs_commands(tmp_path, sqs_endpoint, make_queue):
    urls = make_queue("articles")
    env = {"VIP_WORKER_STATE_DIR": str(tmp_path / "state"), "ARTICLES_QUEUE_URL": urls["url"],
           "AWS_ENDPOINT_URL_SQS": sqs_endpoint}
    result = vip("enqueue", "articles", "--topic", "Fantasy Football", "--word-count", "1500",
                 "--tone", "Professional", env=env)
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    shown = vip("jobs", "show", job_id, "--json", env=env)
    job = json.loads(shown.stdout)
    assert job["status"] == "queued"
    assert job["params"] == {"topic": "Fantasy Football", "wordCount": 1500,
                             "tone": "Professional"}
    human = vip("jobs", "show", job_id, env=env).stdout
    assert "status    queued" in human and "progress  0%" in human
    bulk = tmp_path / "jobs.jsonl"
    bulk.write_text('{"topic": "a"}\n{"topic": "b"}\n')
    result = vip("enqueue", "articles", "--file", str(bulk), env=env)
    assert len(result.stdout.split()) == 2
    listed = json.loads(vip("jobs", "list", "--status", "queued", "--json", env=env).stdout)
    assert len(listed) == 3 and listed[-1]["_id"] == job_id  # newest first
    assert json.loads(vip("jobs", "list", "--status", "failed", "--json", env=env).stdout) == []
    missing = vip("jobs", "show", "nope", env=env)
    assert missing.returncode == 66 and "no job 'nope'" in missing.stderr
