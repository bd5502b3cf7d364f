"""The producer API and the enqueue / jobs commands, with the seed's fallback."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid

import botocore.exceptions
import pytest

from vip_worker import config
from vip_worker.pipeline import producer as producer_module
from vip_worker.pipeline.producer import Producer, QueueNotFound, SendFailed

pytestmark = pytest.mark.e2e
PROJECT_PLUGINS = os.path.join(os.path.dirname(__file__), "..", "..", "plugins")


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


def absent_queue_url(sqs_endpoint):
    return f"{sqs_endpoint}/123456789012/absent-{uuid.uuid4().hex[:8]}"


def test_a_queue_that_does_not_exist_fails_the_job_naming_the_queue(tmp_path, sqs_endpoint,
                                                                   caplog):
    url = absent_queue_url(sqs_endpoint)
    producer = Producer(settings(tmp_path, ARTICLES_QUEUE_URL=url,
                                 AWS_ENDPOINT_URL_SQS=sqs_endpoint))
    with caplog.at_level(logging.ERROR, logger="vip_worker.pipeline.producer"), \
            pytest.raises(QueueNotFound) as raised:
        producer.enqueue("articles", {"topic": "Nowhere"}, user_id="u-3")
    failure = raised.value
    assert str(failure) == f"queue 'articles' does not exist ({url})"
    assert (failure.queue, failure.url, failure.job_status) == ("articles", url, "failed")
    job = producer.store.get_job(failure.job_id)
    assert job["status"] == "failed" and job["error"] == str(failure)
    assert job["queue"] == "articles"  # where its message was meant to go
    (record,) = [r for r in caplog.records if r.getMessage() == "producer.send_failed"]
    assert record.job_status == "failed" and record.url == url
    producer.close()


def test_queue_article_generation_names_the_missing_queue_too(tmp_path, sqs_endpoint,
                                                             monkeypatch):
    url = absent_queue_url(sqs_endpoint)
    for name, value in {"VIP_WORKER_STATE_DIR": str(tmp_path / "state"),
                        "ARTICLES_QUEUE_URL": url, "AWS_ENDPOINT_URL_SQS": sqs_endpoint}.items():
        monkeypatch.setenv(name, value)
    producer_module.default_producer.cache_clear()
    try:
        with pytest.raises(QueueNotFound, match="queue 'articles' does not exist") as raised:
            producer_module.queue_article_generation(None, "u-4", {"topic": "Nowhere"})
        job = producer_module.default_producer().store.get_job(raised.value.job_id)
        assert job["status"] == "failed" and url in job["error"]
    finally:
        producer_module.default_producer().close()
        producer_module.default_producer.cache_clear()


def test_a_message_sqs_refuses_fails_the_job_with_sqs_reason(tmp_path, sqs_endpoint,
                                                            make_queue):
    urls = make_queue("articles")
    producer = Producer(settings(tmp_path, ARTICLES_QUEUE_URL=urls["url"],
                                 AWS_ENDPOINT_URL_SQS=sqs_endpoint))
    with pytest.raises(SendFailed) as raised:  # over SQS's 1 MiB
        producer.enqueue("articles", {"topic": "x" * 1_100_000}, user_id="u-5")
    failure = raised.value
    assert not isinstance(failure, QueueNotFound) and failure.job_status == "failed"
    assert urls["url"] in str(failure) and failure.error_code in str(failure)
    assert producer.store.get_job(failure.job_id)["error"] == str(failure)
    producer.close()


class TimesOut:
    """An AWS SDK client whose send times out after the request left: sent or not?"""

    def send_message(self, **kwargs):
        raise botocore.exceptions.ReadTimeoutError(endpoint_url="http://127.0.0.1:9")


def test_a_send_that_may_have_reached_sqs_leaves_the_job_queued(tmp_path):
    producer = Producer(settings(tmp_path, ARTICLES_QUEUE_URL="http://127.0.0.1:9/1/articles"),
                        sqs_client=TimesOut())
    with pytest.raises(SendFailed, match="ReadTimeoutError") as raised:
        producer.enqueue("articles", {"topic": "Maybe"}, user_id="u-6")
    assert raised.value.job_status == "queued"
    job = producer.store.get_job(raised.value.job_id)
    assert job["status"] == "queued" and job["queue"] == "articles"
    producer.close()


def test_enqueue_to_a_queue_that_does_not_exist_exits_78_and_fails_the_job(tmp_path,
                                                                          sqs_endpoint):
    url = absent_queue_url(sqs_endpoint)
    env = {"VIP_WORKER_STATE_DIR": str(tmp_path / "state"), "ARTICLES_QUEUE_URL": url,
           "AWS_ENDPOINT_URL_SQS": sqs_endpoint}
    result = vip("enqueue", "articles", "--topic", "Nowhere", "--job-id",
                 "64b7f0c2a1b2c3d4e5f60718", env=env)
    assert result.returncode == 78, result.stderr
    assert "queue 'articles' does not exist" in result.stderr and url in result.stderr
    assert "64b7f0c2a1b2c3d4e5f60718" in result.stderr and "the job is failed" in result.stderr
    job = json.loads(vip("jobs", "show", "64b7f0c2a1b2c3d4e5f60718", "--json", env=env).stdout)
    assert job["status"] == "failed" and url in job["error"]


def test_enqueue_of_a_message_sqs_refuses_exits_69_and_fails_the_job(tmp_path, sqs_endpoint,
                                                                    make_queue):
    urls = make_queue("articles")
    env = {"VIP_WORKER_STATE_DIR": str(tmp_path / "state"), "ARTICLES_QUEUE_URL": urls["url"],
           "AWS_ENDPOINT_URL_SQS": sqs_endpoint}
    big = tmp_path / "big.jsonl"  # over SQS's 1 MiB (too long for an argument)
    big.write_text(json.dumps({"topic": "x" * 1_100_000}) + "\n")
    result = vip("enqueue", "articles", "--file", str(big), env=env)
    assert result.returncode == 69, result.stderr
    assert urls["url"] in result.stderr and "the job is failed" in result.stderr
    (job,) = json.loads(vip("jobs", "list", "--json", env=env).stdout)
    assert job["status"] == "failed" and urls["url"] in job["error"]
