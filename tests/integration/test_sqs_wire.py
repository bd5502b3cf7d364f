"""The wire transport against moto's server and LocalStack over HTTP: the same
answers as boto3's.

Each call is made through both transports on the same queues; the consumer must
not be able to tell them apart (shapes, per-entry failures, error codes). Every
test runs against each endpoint (LocalStack is skipped, saying why, where it
cannot be built or started).
"""

from __future__ import annotations

import asyncio

import pytest

from tests.support.sqs import boto3_client, queue_counts
from vip_worker.sqs.api import error_code
from vip_worker.sqs.boto import AsyncSqs, SqsClient, make_client
from vip_worker.sqs.wire import WireSqs, open_sqs

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sqs_endpoint(each_endpoint):
    """This module's endpoint: moto's server, then LocalStack."""
    return each_endpoint


@pytest.fixture(scope="module")
def sqs(sqs_endpoint):
    return boto3_client(sqs_endpoint)


@pytest.fixture(params=["wire", "boto3"])
def transport(request, sqs_endpoint):
    """Runs ``transport(lambda api: api.<call>(...))`` on a fresh loop through the named
    transport and returns the call's answer."""
    kind = request.param
    runner = asyncio.Runner()

    async def make():
        return open_sqs("us-east-1", sqs_endpoint, 1, kind)

    sqs, _ = runner.run(make())
    assert isinstance(sqs, WireSqs) == (kind == "wire")

    def call(make_call):
        return runner.run(make_call(sqs))

    call.kind = kind
    yield call
    sqs.close()
    runner.close()


def test_receive_delete_and_visibility_report_per_entry_failures(transport, sqs, make_queue,
                                                                 endpoint_kind):
    urls = make_queue("wire")
    for n in range(3):
        sqs.send_message(QueueUrl=urls["url"], MessageBody=f"m{n}")
    got = transport(lambda api: api.receive(urls["url"], 10, 1, 30))
    assert sorted(m["Body"] for m in got) == ["m0", "m1", "m2"]
    assert {m["Attributes"]["ApproximateReceiveCount"] for m in got} == {"1"}
    assert all(m["MessageId"] and m["ReceiptHandle"] for m in got)
    entries = [(str(n), m["ReceiptHandle"]) for n, m in enumerate(got)]
    failures = transport(lambda api: api.delete_batch(
        urls["url"], [*entries[:2], ("bad", "garbage-handle")]))
    assert [f.id for f in failures] == ["bad"] and failures[0].code == "ReceiptHandleIsInvalid"
    # As SQS reports it; LocalStack says False (to both transports).
    assert failures[0].sender_fault is (endpoint_kind == "moto")
    failures = transport(lambda api: api.change_visibility_batch(
        urls["url"], [("0", got[2]["ReceiptHandle"], 0), ("x", "garbage", 5)]))
    assert [f.id for f in failures] == ["x"]
    assert queue_counts(sqs, urls["url"]) == (1, 0)


def test_empty_long_poll_returns_an_empty_list(transport, make_queue):
    url = make_queue("empty")["url"]
    assert transport(lambda api: api.receive(url, 10, 1, 30)) == []


ATTRIBUTES = {"reason": {"DataType": "String", "StringValue": "bad json"},
              "blob": {"DataType": "Binary", "BinaryValue": b"\x00\xffraw"}}


def test_attributes_sent_through_the_transport_read_the_same_in_boto3(transport, sqs,
                                                                      make_queue):
    urls = make_queue("attrs-out")
    message_id = transport(lambda api: api.send(urls["url"], "body", ATTRIBUTES))
    got = sqs.receive_message(QueueUrl=urls["url"], MessageAttributeNames=["All"],
                              WaitTimeSeconds=1)["Messages"][0]
    assert got["MessageId"] == message_id and got["Body"] == "body"
    assert {k: {f: v[f] for f in v if f in ("DataType", "StringValue", "BinaryValue")}
            for k, v in got["MessageAttributes"].items()} == ATTRIBUTES


def test_attributes_sent_by_boto3_are_received_as_boto3_gives_them(transport, sqs, make_queue):
    urls = make_queue("attrs-in")
    sqs.send_message(QueueUrl=urls["url"], MessageBody="body", MessageAttributes=ATTRIBUTES)
    got = transport(lambda api: api.receive(urls["url"], 1, 1, 30))[0]
    assert got["MessageAttributes"]["reason"]["StringValue"] == "bad json"
    assert got["MessageAttributes"]["blob"]["BinaryValue"] == b"\x00\xffraw"


def test_fifo_send_and_receive_carry_the_group(transport, make_queue):
    urls = make_queue("fifo", fifo=True)
    transport(lambda api: api.send(urls["url"], "first", None, "group-1", "dedup-1"))
    got = transport(lambda api: api.receive(urls["url"], 1, 1, 30))[0]
    assert got["Body"] == "first" and got["Attributes"]["MessageGroupId"] == "group-1"


def test_delayed_send_is_not_visible_at_once(transport, sqs, make_queue):
    urls = make_queue("delay")
    transport(lambda api: api.send(urls["url"], "later", delay_s=30))
    attrs = sqs.get_queue_attributes(QueueUrl=urls["url"], AttributeNames=[
        "ApproximateNumberOfMessagesDelayed"])["Attributes"]
    assert attrs["ApproximateNumberOfMessagesDelayed"] == "1"


def test_errors_have_the_codes_boto3_gives(transport, sqs_endpoint):
    missing = sqs_endpoint + "/123456789012/no-such-queue"
    with pytest.raises(Exception) as wire_error:
        transport(lambda api: api.receive(missing, 1, 0, 30))
    client = SqsClient(make_client("us-east-1", sqs_endpoint))
    with pytest.raises(Exception) as boto_error:
        client.receive(missing, 1, 0, 30)
    assert error_code(wire_error.value) == error_code(boto_error.value)
    assert error_code(wire_error.value) == "AWS.SimpleQueueService.NonExistentQueue"


def test_calls_the_wire_does_not_make_go_to_boto3(transport, make_queue):
    urls = make_queue("attrs-call")
    attrs = transport(lambda api: api.queue_attributes(urls["url"], ["VisibilityTimeout"]))
    assert attrs == {"VisibilityTimeout": "30"}


def test_transport_boto3_is_the_threaded_client(sqs_endpoint):
    sqs, why = open_sqs("us-east-1", sqs_endpoint, 1, "boto3")
    try:
        assert isinstance(sqs, AsyncSqs) and why == "configured"
    finally:
        sqs.close()


def test_a_proxy_for_the_endpoint_falls_back_to_boto3(monkeypatch):
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("no_proxy", "")
    sqs, why = open_sqs("eu-west-1", "", 1, "wire")
    try:
        assert isinstance(sqs, AsyncSqs) and "proxy" in why
    finally:
        sqs.close()


def test_no_proxy_keeps_the_wire(monkeypatch, sqs_endpoint):
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    sqs, _ = open_sqs("us-east-1", sqs_endpoint, 1, "wire")
    try:
        assert isinstance(sqs, WireSqs)
    finally:
        sqs.close()


def test_the_default_endpoint_is_the_regions_https_one():
    sqs, _ = open_sqs("eu-west-1", "", 1, "wire")
    try:
        assert isinstance(sqs, WireSqs)
        assert (sqs.origin.scheme, sqs.origin.authority) == ("https", "sqs.eu-west-1.amazonaws.com")
        assert sqs.signer.region == "eu-west-1"
    finally:
        sqs.close()


def test_an_endpoint_url_with_a_path_falls_back_to_boto3(sqs_endpoint):
    sqs, why = open_sqs("us-east-1", sqs_endpoint + "/sqs", 1, "wire")
    try:
        assert isinstance(sqs, AsyncSqs) and "path" in why
    finally:
        sqs.close()


def test_a_ca_directory_is_accepted(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_CA_BUNDLE", str(tmp_path))
    sqs, _ = open_sqs("eu-west-1", "", 1, "wire")
    try:
        assert isinstance(sqs, WireSqs)
    finally:
        sqs.close()
