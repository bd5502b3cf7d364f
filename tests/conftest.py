"""Shared fixtures: fake AWS credentials, moto's SQS server on 127.0.0.1, queue factory.

Nothing here may reach AWS or the EC2 metadata address: the environment is
pinned to fake credentials with the metadata lookup disabled, and every client
points at the loopback endpoint.
"""

from __future__ import annotations

import json
import os
import uuid

import boto3
import pytest

from vip_worker.sqs.local import LOCAL_AWS_ENV as FAKE_AWS


@pytest.fixture(autouse=True, scope="session")
def fake_aws_env():
    saved = {k: os.environ.get(k) for k in FAKE_AWS}
    os.environ.update(FAKE_AWS)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SQS"):
        os.environ.pop(name, None)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def sqs_endpoint(fake_aws_env, vip_worker_sqs_endpoint):
    """moto's SQS server over HTTP on 127.0.0.1, for the whole session: the one the
    vip_worker pytest plugin (vip_worker.testing.pytest_plugin) starts for plugin authors."""
    return vip_worker_sqs_endpoint


@pytest.fixture(scope="session")
def sqs(sqs_endpoint):
    return boto3.client("sqs", endpoint_url=sqs_endpoint, region_name="us-east-1")


@pytest.fixture
def make_queue(sqs):
    """``make_queue(name, dlq=True, visibility_s=30, fifo=False, max_receives=50)`` -> urls.

    Names get a random suffix so tests never share a queue.
    """

    def make(name="q", dlq=True, visibility_s=30, fifo=False, max_receives=50):
        base = f"{name}-{uuid.uuid4().hex[:8]}"
        suffix = ".fifo" if fifo else ""
        fifo_attrs = {"FifoQueue": "true", "ContentBasedDeduplication": "true"} if fifo else {}
        attrs = {"VisibilityTimeout": str(visibility_s), **fifo_attrs}
        urls = {}
        if dlq:
            urls["dlq"] = sqs.create_queue(QueueName=f"{base}-dlq{suffix}",
                                           Attributes=fifo_attrs)["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=urls["dlq"], AttributeNames=["QueueArn"])[
                "Attributes"]["QueueArn"]
            attrs["RedrivePolicy"] = json.dumps(
                {"deadLetterTargetArn": arn, "maxReceiveCount": str(max_receives)})
        urls["url"] = sqs.create_queue(QueueName=base + suffix, Attributes=attrs)["QueueUrl"]
        return urls

    return make


def envelope(job_id=None, type_="articles", payload=None, user_id="u1"):
    """A body in the seed's exact format."""
    return json.dumps({
        "jobId": job_id or uuid.uuid4().hex[:24],
        "userId": user_id,
        "type": type_,
        "timestamp": "2025-01-15T10:30:00Z",
        "payload": payload if payload is not None else {"topic": "t", "wordCount": 1500},
    })


def queue_counts(sqs, url):
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return (int(attrs["ApproximateNumberOfMessages"]),
            int(attrs["ApproximateNumberOfMessagesNotVisible"]))
