"""vip_worker.sqs.queues: one reading of a RedrivePolicy for the poller and the commands."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.fakes import AsyncFakeSqs, FakeSqs, make_queue_settings
from vip_worker.sqs import queues


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
