"""The SQS client and the consumer against moto's server and LocalStack over HTTP on
127.0.0.1 (LocalStack is skipped, saying why, where it cannot be built or started)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from tests.support.sqs import boto3_client, envelope, queue_counts
from tests.support.wait import wait_until_async
from vip_worker import PermanentError, config
from vip_worker.consumer import Consumer
from vip_worker.heartbeat import Heartbeat
from vip_worker.plugins.context import PollerContext
from vip_worker.plugins.registry import HandlerRegistry
from vip_worker.sqs.boto import AsyncSqs, SqsClient, make_client
from vip_worker.sqs.queues import dlq_size_limit, resolve_dlq

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sqs_endpoint(each_endpoint):
    """This module's endpoint: moto's server, then LocalStack."""
    return each_endpoint


@pytest.fixture(scope="module")
def sqs(sqs_endpoint):
    return boto3_client(sqs_endpoint)


@pytest.fixture
def client(sqs_endpoint):
    return SqsClient(make_client("us-east-1", sqs_endpoint))


def settings_for(urls, name="work", fifo_wait=None, **queue):
    env = {f"VIP_WORKER_QUEUE_{name.upper()}_URL": urls["url"],
           f"VIP_WORKER_QUEUE_{name.upper()}_WAIT_TIME_S": str(fifo_wait if fifo_wait is not None
                                                               else 1)}
    for key, value in queue.items():
        env[f"VIP_WORKER_QUEUE_{name.upper()}_{key.upper()}"] = str(value)
    return config.load(environ=env)


def test_batch_calls_report_per_entry_failures(client, sqs, make_queue):
    urls = make_queue("batch")
    for n in range(3):
        sqs.send_message(QueueUrl=urls["url"], MessageBody=f"m{n}")
    got = client.receive(urls["url"], 10, 1, 30)
    assert len(got) == 3
    entries = [(str(n), m["ReceiptHandle"]) for n, m in enumerate(got)]
    failures = client.delete_batch(urls["url"], [*entries[:2], ("bad", "garbage-handle")])
    assert [f.id for f in failures] == ["bad"] and failures[0].code == "ReceiptHandleIsInvalid"
    failures = client.change_visibility_batch(urls["url"], [("0", got[2]["ReceiptHandle"], 0),
                                                            ("x", "garbage", 5)])
    assert [f.id for f in failures] == ["x"]
    assert queue_counts(sqs, urls["url"]) == (1, 0)


def test_receive_carries_the_receive_count(client, sqs, make_queue):
    urls = make_queue("count")
    sqs.send_message(QueueUrl=urls["url"], MessageBody="x")
    first = client.receive(urls["url"], 1, 1, 30)[0]
    client.change_visibility_batch(urls["url"], [("0", first["ReceiptHandle"], 0)])
    second = client.receive(urls["url"], 1, 1, 30)[0]
    assert first["Attributes"]["ApproximateReceiveCount"] == "1"
    assert second["Attributes"]["ApproximateReceiveCount"] == "2"


def test_dlq_is_found_from_the_redrive_policy(client, make_queue, caplog):
    with_dlq = make_queue("withdlq")
    without = make_queue("nodlq", dlq=False)

    async def resolve():
        sqs = AsyncSqs(client, 2)
        try:
            found = await resolve_dlq(sqs, settings_for(with_dlq).queue("work"))
            missing = await resolve_dlq(sqs, settings_for(without).queue("work"))
        finally:
            sqs.close()
        return found, missing

    found, missing = asyncio.run(resolve())
    assert found == with_dlq["dlq"] and missing is None
    assert [r.queue for r in caplog.records if r.getMessage() == "queue.no_dlq"] == ["work"]


def run_consumer(settings, client, handlers, until, timeout_s=20.0):
    """Run a Consumer in this process until ``until(consumer)`` holds, then drain it."""
    registry = HandlerRegistry()
    for type_, fn in handlers.items():
        registry.add("test", type_, fn)

    async def main():
        sqs = AsyncSqs(client, 4)
        dlqs = {q.name: await resolve_dlq(sqs, q) for q in settings.queues}
        heartbeat = Heartbeat(sqs, time.monotonic)
        consumer = Consumer(settings, registry, sqs, heartbeat, PollerContext(0, settings), dlqs)
        beat = asyncio.get_running_loop().create_task(heartbeat.run())
        consumer.start()
        await wait_until_async(lambda: until(consumer), timeout_s, interval_s=0.05,
                               message="until(consumer)")
        await consumer.drain(grace_s=5, wait_for_polls=True)
        beat.cancel()
        consumer.close()
        sqs.close()
        return consumer

    return asyncio.run(main())


def test_consumer_acks_retries_and_dead_letters(client, sqs, make_queue):
    urls = make_queue("consume")
    settings = settings_for(urls, max_attempts=2, retry_backoff_base_s=0, retry_backoff_max_s=0)
    seen = []

    def ok(message, ctx):
        seen.append(("ok", ctx.receive_count))

    def flaky(message, ctx):
        seen.append(("flaky", ctx.receive_count))
        raise RuntimeError("still failing")

    async def permanent(message, ctx):
        seen.append(("permanent", ctx.receive_count))
        raise PermanentError("bad request")

    for type_ in ("ok", "flaky", "permanent"):
        sqs.send_message(QueueUrl=urls["url"], MessageBody=envelope(type_=type_))
    run_consumer(settings, client, {"ok": ok, "flaky": flaky, "permanent": permanent},
                 until=lambda c: queue_counts(sqs, urls["url"]) == (0, 0) and not c.held)
    assert sorted(seen) == [("flaky", 1), ("flaky", 2), ("ok", 1), ("permanent", 1)]
    dead = sqs.receive_message(QueueUrl=urls["dlq"], MaxNumberOfMessages=10,
                               MessageAttributeNames=["All"])["Messages"]
    reasons = {json.loads(m["Body"])["type"]: m["MessageAttributes"] for m in dead}
    assert reasons["flaky"]["vip_error"]["StringValue"] == "still failing"
    assert reasons["flaky"]["vip_attempts"]["StringValue"] == "2"
    assert reasons["permanent"]["vip_error_class"]["StringValue"] == "PermanentError"


def test_fifo_group_keeps_its_order_across_a_retry(client, sqs, make_queue, endpoint_kind):
    if endpoint_kind == "localstack":
        # Seen with LocalStack 2026-12: after the rest of a received group is handed back
        # (visibility 0) while its head waits out a retry delay, LocalStack delivers the
        # rest of the group at once; SQS does not deliver a group's later messages while
        # an earlier one is in flight. The order can only be checked on moto here.
        pytest.skip("LocalStack delivers a FIFO group's later messages while its head is "
                    "in flight (SQS does not)")
    # moto's FIFO long polls are broken (see sqs-local-endpoints.md): short polls here.
    urls = make_queue("fifo", fifo=True)
    settings = settings_for(urls, fifo_wait=0, retry_backoff_base_s=1, retry_backoff_max_s=1)
    order = []

    def handler(message, ctx):
        n = message.payload["n"]
        if n == 1 and ctx.receive_count == 1:
            order.append(f"{n}:fail")
            raise RuntimeError("first try of message 1 fails")
        order.append(str(n))

    for n in range(4):
        sqs.send_message(QueueUrl=urls["url"], MessageGroupId="g",
                         MessageBody=envelope(type_="seq", payload={"n": n}))
    run_consumer(settings, client, {"seq": handler},
                 until=lambda c: len([o for o in order if ":" not in o]) == 4)
    assert order == ["0", "1:fail", "1", "2", "3"]


def test_the_dlq_size_limit_is_read_and_defaults_when_it_cannot_be(client, sqs, sqs_endpoint,
                                                                   make_queue, caplog):
    urls = make_queue("limit")
    sqs.set_queue_attributes(QueueUrl=urls["dlq"], Attributes={"MaximumMessageSize": "2048"})

    async def read():
        async_sqs = AsyncSqs(client, 2)
        try:
            return (await dlq_size_limit(async_sqs, "work", urls["dlq"]),
                    await dlq_size_limit(async_sqs, "other",
                                         sqs_endpoint + "/123456789012/no-such-dlq"))
        finally:
            async_sqs.close()

    assert asyncio.run(read()) == (2048, 1024 * 1024)
    [record] = [r for r in caplog.records if r.getMessage() == "queue.dlq_size_unknown"]
    assert record.queue == "other"
    assert record.error_code == "AWS.SimpleQueueService.NonExistentQueue"
