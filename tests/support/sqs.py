"""SQS helpers: the fake AWS environment, a message body in the seed's format, queue counts."""

from __future__ import annotations

import json
import uuid

import boto3

from vip_worker.sqs.local import LOCAL_AWS_ENV

FAKE_AWS = LOCAL_AWS_ENV  # the package's own, declared once


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
    """``(visible, in flight)`` for the queue at ``url``."""
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return (int(attrs["ApproximateNumberOfMessages"]),
            int(attrs["ApproximateNumberOfMessagesNotVisible"]))


def boto3_client(endpoint_url: str):
    """A plain boto3 SQS client on a local endpoint, for a test's own set-up and checks."""
    return boto3.client("sqs", endpoint_url=endpoint_url, region_name="us-east-1")
