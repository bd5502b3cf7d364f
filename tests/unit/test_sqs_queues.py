"""vip_worker.sqs.queues: one reading of a RedrivePolicy for the poller and the commands."""

from __future__ import annotations

import asyncio
import json

import botocore.exceptions
import pytest

from tests.fakes import AsyncFakeSqs, FakeSqs, client_error, make_queue_settings
from vip_worker.sqs import queues
from vip_worker.sqs.api import ClientError


def policy(arn: str) -> dict[str, str]:
    return {"RedrivePolicy": json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": 5})}


@pytest.mark.parametrize("attributes,target", [
    ({}, None),
    ({"RedrivePolicy": ""}, None),
    (policy("arn:aws:sqs:us-east-1:123456789012:work-dlq"), ("work-dlq", "123456789012")),
    (policy("arn:aws:sqs:eu-west-1:210987654321:other-dlq"), ("other-dlq", "210987654321")),
    (policy("work-dlq"), ("work-dlq", "")),
])
def test_the_redrive_target_names_the_dlq_and_its_account(attributes, target):
    assert queues.redrive_target(attributes) == target


def test_a_policy_that_is_not_json_is_a_value_error():
    with pytest.raises(ValueError):
        queues.redrive_target({"RedrivePolicy": "{not json"})


def test_the_poller_and_the_commands_find_the_same_dlq():
    fake = FakeSqs()
    dlq = fake.create_queue("work-dlq")
    url = fake.create_queue("work", dlq_url=dlq)
    bare = fake.create_queue("bare")
    queue = make_queue_settings(url)

    async def poller():
        sqs = AsyncFakeSqs(fake)
        return (await queues.resolve_dlq(sqs, queue),
                await queues.resolve_dlq(sqs, make_queue_settings(bare, name="bare")))

    assert asyncio.run(poller()) == (dlq, None)
    assert queues.resolve_dlq_url(fake, url) == dlq
    assert queues.resolve_dlq_url(fake, bare) is None
    assert queues.resolve_dlq_url(fake, bare, "https://q/1/given") == "https://q/1/given"
    assert fake.calls_to("queue_url") == [("work-dlq",), ("work-dlq",)]


def test_a_failed_lookup_stops_the_poller_naming_the_queue():
    fake = FakeSqs()
    url = fake.create_queue("work")
    fake.fail_next("queue_attributes", "AccessDenied")
    with pytest.raises(queues.DlqLookupFailed, match="queue work: AccessDenied"):
        asyncio.run(queues.resolve_dlq(AsyncFakeSqs(fake), make_queue_settings(url)))


def test_counts_and_arn_read_the_queues_attributes():
    fake = FakeSqs()
    url = fake.create_queue("work")
    fake.send(url, "a")
    assert queues.counts(fake, url) == {"visible": 1, "in_flight": 0, "delayed": 0, "depth": 1}
    assert queues.queue_arn(fake, url) == FakeSqs.arn("work")
    assert queues.queue_name(url + "/") == "work"


def json_protocol_missing_queue():
    """What boto3 raises over SQS's JSON protocol: both codes, the modeled one as
    QueryErrorCode."""
    return ClientError({"Error": {"Code": "AWS.SimpleQueueService.NonExistentQueue",
                                  "QueryErrorCode": "QueueDoesNotExist", "Type": "Sender"},
                        "ResponseMetadata": {"HTTPStatusCode": 400}}, "SendMessage")


@pytest.mark.parametrize("exc,missing", [
    (json_protocol_missing_queue(), True),
    (client_error("AWS.SimpleQueueService.NonExistentQueue"), True),
    (client_error("QueueDoesNotExist"), True),
    (client_error("AccessDenied"), False),
    (client_error("ThrottlingException"), False),
    (botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), False),
    (OSError("unreachable"), False),
])
def test_only_sqs_saying_so_means_the_queue_does_not_exist(exc, missing):
    assert queues.is_missing_queue(exc) is missing


def retried(exc):
    exc.response.setdefault("ResponseMetadata", {})["RetryAttempts"] = 2
    return exc


@pytest.mark.parametrize("exc,sent_nothing", [
    (client_error("AWS.SimpleQueueService.NonExistentQueue"), True),
    (client_error("ThrottlingException"), True),  # SQS answered its only attempt
    # botocore retried: an earlier attempt may have timed out after SQS took the message.
    (retried(client_error("InternalError")), False),
    (botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), False),
    (botocore.exceptions.ConnectTimeoutError(endpoint_url="http://10.0.0.1"), False),
    (botocore.exceptions.NoCredentialsError(), True),
    (botocore.exceptions.ReadTimeoutError(endpoint_url="http://127.0.0.1:9"), False),
    (botocore.exceptions.ConnectionClosedError(endpoint_url="http://127.0.0.1:9"), False),
])
def test_a_send_that_may_have_reached_sqs_is_not_called_unsent(exc, sent_nothing):
    assert queues.never_sent(exc) is sent_nothing


def test_queue_exists_is_false_only_when_sqs_says_so():
    fake = FakeSqs()
    url = fake.create_queue("work")
    assert queues.queue_exists(fake, url) is True
    assert queues.queue_exists(fake, url + "-gone") is False
    fake.fail_next("queue_attributes", "ThrottlingException")
    with pytest.raises(ClientError, match="ThrottlingException"):
        queues.queue_exists(fake, url)
