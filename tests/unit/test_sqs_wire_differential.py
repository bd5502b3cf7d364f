"""The wire client against botocore, differentially.

- Signatures: hypothesis drives the wire client against a capture server on
  127.0.0.1, and botocore's ``SigV4Auth`` signs again what was captured (the bytes
  as sent, the clock frozen at the request's ``X-Amz-Date``). The two must be the
  same, and must differ once one signed header or one byte of the body changes.
- Request shapes: the JSON body (and the protocol headers) of each operation,
  against what boto3 sends for the same call, caught by a ``before-send`` hook
  that answers it without any network.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import string

import botocore.auth
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.credentials import Credentials as BotoCredentials
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.misbehaving_http import LoopbackServer, answer_all, response, split_request
from vip_worker.sqs.boto import SqsClient, make_client
from vip_worker.sqs.wire import WireSqs

CANNED = {"MessageId": "m", "Messages": [], "Successful": [], "Failed": []}
# What botocore never signs (added after signing by http.client, or on its list).
UNSIGNED = {"user-agent", "accept-encoding", "content-length", "authorization"}
FAST = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

ENDPOINTS = [  # (region, scheme://host): partitions, ports, IPv6 literals, local endpoints
    ("us-east-1", "http://sqs.us-east-1.amazonaws.com"),
    ("eu-west-1", "http://sqs.eu-west-1.amazonaws.com"),
    ("cn-north-1", "http://sqs.cn-north-1.amazonaws.com.cn"),
    ("us-gov-west-1", "http://sqs.us-gov-west-1.amazonaws.com"),
    ("us-iso-east-1", "http://sqs.us-iso-east-1.c2s.ic.gov"),
    ("eu-isoe-west-1", "http://sqs.eu-isoe-west-1.cloud.adc-e.uk"),
    ("us-east-1", "http://127.0.0.1"),
    ("us-east-1", "http://[::1]"),
    ("ap-southeast-2", "http://[fd00:ec2::254]"),
    ("elasticmq", "http://localhost"),
]


class NoThreads:
    executor = None

    def close(self):
        pass


@pytest.fixture(scope="module")
def capture():
    with LoopbackServer(answer_all(response(200, CANNED))) as server:
        yield server


def open_wire(server, endpoint: str, region: str, credentials) -> WireSqs:
    sqs = WireSqs(NoThreads(), endpoint, region, lambda: credentials)

    async def to_the_capture_server(host, port):
        return [(2, 1, 6, "", ("127.0.0.1", server.port))]
    sqs.origin.resolve = to_the_capture_server  # any host: our server, same bytes
    return sqs


keys = st.text(string.ascii_uppercase + string.digits, min_size=16, max_size=20)
secrets = st.text(string.ascii_letters + string.digits + "/+", min_size=1, max_size=40)
tokens = st.none() | st.text(string.ascii_letters + string.digits + "/+=", max_size=300)
texts = st.text(max_size=60)
attributes = st.dictionaries(
    st.text(string.ascii_letters + "_-.", min_size=1, max_size=12),
    st.one_of(
        st.builds(lambda v: {"DataType": "String", "StringValue": v}, texts),
        st.builds(lambda v: {"DataType": "Number", "StringValue": str(v)}, st.integers()),
        st.builds(lambda v: {"DataType": "Binary", "BinaryValue": v}, st.binary(max_size=40)),
    ), max_size=4)
queues = st.sampled_from(["https://sqs.us-east-1.amazonaws.com/123456789012/work",
                          "https://sqs.us-east-1.amazonaws.com/123456789012/work.fifo",
                          "http://127.0.0.1:4566/000000000000/q"])
receipts = st.text(string.ascii_letters + string.digits + "+/=", min_size=1, max_size=60)
calls = st.one_of(
    st.tuples(st.just("send"), queues, texts, attributes,
              st.none() | st.text(string.ascii_letters, min_size=1, max_size=8),
              st.none() | st.text(string.hexdigits, min_size=1, max_size=16),
              st.integers(0, 900)),
    st.tuples(st.just("receive"), queues, st.integers(1, 10), st.integers(0, 20),
              st.integers(0, 43200)),
    st.tuples(st.just("delete_batch"), queues,
              st.lists(st.tuples(st.text(string.digits, min_size=1, max_size=2), receipts),
                       min_size=1, max_size=10)),
    st.tuples(st.just("change_visibility_batch"), queues,
              st.lists(st.tuples(st.text(string.digits, min_size=1, max_size=2), receipts,
                                 st.integers(0, 43200)), min_size=1, max_size=10)),
)


async def make_call(sqs: WireSqs, call: tuple) -> None:
    name, *args = call
    try:
        await getattr(sqs, name)(*args)
    finally:
        sqs.close()  # on the loop that opened its connection


def botocore_authorization(raw: bytes, region: str, key: str, secret: str) -> str:
    """botocore's Authorization for a captured request, signed again from its bytes."""
    line, headers, body = split_request(raw)
    method, path, _ = line.split(" ")
    host = dict((n.lower(), v) for n, v in headers)["host"]
    stamp = dict((n.lower(), v) for n, v in headers)["x-amz-date"]
    token = dict((n.lower(), v) for n, v in headers).get("x-amz-security-token")
    signed = {n: v for n, v in headers
              if n.lower() not in UNSIGNED | {"x-amz-date", "x-amz-security-token"}}
    request = AWSRequest(method=method, url=f"http://{host}{path}", data=body, headers=signed)
    now = datetime.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ")
    saved = botocore.auth.get_current_datetime
    botocore.auth.get_current_datetime = lambda: now
    try:
        SigV4Auth(BotoCredentials(key, secret, token), "sqs", region).add_auth(request)
    finally:
        botocore.auth.get_current_datetime = saved
    return request.headers["Authorization"]


def mutate_header(raw: bytes, name: bytes) -> bytes:
    """``raw`` with header ``name``'s value changed (a date stays a date)."""
    def changed(line: bytes) -> bytes:
        if name != b"x-amz-date":
            return line + b"x"
        stamp = datetime.datetime.strptime(line.split(b":")[1].strip().decode(),
                                           "%Y%m%dT%H%M%SZ")
        return b"X-Amz-Date: " + (stamp + datetime.timedelta(seconds=1)).strftime(
            "%Y%m%dT%H%M%SZ").encode()
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = [changed(line) if line.lower().startswith(name + b":") else line
             for line in head.split(b"\r\n")]
    return b"\r\n".join(lines) + sep + body


@FAST
@given(endpoint=st.sampled_from(ENDPOINTS), port=st.none() | st.integers(1, 65535),
       key=keys, secret=secrets, token=tokens, call=calls)
def test_the_signature_is_botocores_for_the_bytes_sent(capture, endpoint, port, key, secret,
                                                       token, call):
    region, base = endpoint
    url = base if port is None else f"{base}:{port}"
    before = len(capture.requests)
    sqs = open_wire(capture, url, region, (key, secret, token))
    asyncio.run(make_call(sqs, call))
    [raw] = capture.requests[before:]
    _, headers, body = split_request(raw)
    sent = {n.lower(): v for n, v in headers}
    assert sent["host"] == sqs.origin.authority
    assert ("x-amz-security-token" in sent) == bool(token)
    # Every header is signed but the ones botocore never signs: none slips in unsigned.
    signed_names = sent["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    assert set(sent) == set(signed_names) | UNSIGNED
    assert botocore_authorization(raw, region, key, secret) == sent["authorization"]
    # ...and the check is sharp: one changed signed header, or body byte, breaks it.
    for name in signed_names:
        changed = mutate_header(raw, name.encode())
        assert botocore_authorization(changed, region, key, secret) != sent["authorization"]
    if body:
        flipped = raw[:-1] + bytes([raw[-1] ^ 1])
        assert botocore_authorization(flipped, region, key, secret) != sent["authorization"]


# -- request shapes --------------------------------------------------------------

class CannedRaw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_):
        yield self.body


class Sent(list):
    def __repr__(self) -> str:  # hypothesis prints the fixture with each failing case
        return f"<{len(self)} requests>"


@pytest.fixture(scope="module")
def boto3_capture():
    """A boto3 client (the boto3 transport's own) whose requests never leave: a
    ``before-send`` hook records each and answers it."""
    client = make_client("us-east-1", "http://127.0.0.1:9")
    sent = Sent()

    def answer(request, **_):
        sent.append(request)
        return AWSResponse(request.url, 200, {}, CannedRaw(json.dumps(CANNED).encode()))
    client.meta.events.register("before-send.sqs", answer)
    yield SqsClient(client), sent
    client.close()


def boto3_receive(client: SqsClient, queue_url, max_messages, wait_s, visibility_s,
                  attempt_id):
    """SqsClient.receive's call, with the attempt id the wire client chose."""
    kwargs = {"ReceiveRequestAttemptId": attempt_id} if attempt_id else {}
    client.client.receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=max_messages, WaitTimeSeconds=wait_s,
        VisibilityTimeout=visibility_s, MessageAttributeNames=["All"],
        MessageSystemAttributeNames=(["ApproximateReceiveCount", "MessageGroupId"]
                                     if queue_url.endswith(".fifo")
                                     else ["ApproximateReceiveCount"]), **kwargs)


@FAST
@given(call=calls)
def test_each_operation_sends_what_boto3_sends(capture, boto3_capture, call):
    client, boto3_sent = boto3_capture
    before, boto3_before = len(capture.requests), len(boto3_sent)
    sqs = open_wire(capture, "http://127.0.0.1:4566", "us-east-1", ("AKID", "s", None))
    asyncio.run(make_call(sqs, call))
    [raw] = capture.requests[before:]
    _, headers, body = split_request(raw)
    wire_body = json.loads(body)
    name, *args = call
    if name == "receive":
        boto3_receive(client, *args, wire_body.get("ReceiveRequestAttemptId"))
        assert ("ReceiveRequestAttemptId" in wire_body) == args[0].endswith(".fifo")
    else:
        getattr(client, name)(*args)
    [request] = boto3_sent[boto3_before:]
    assert wire_body == json.loads(request.body)
    sent = {n.lower(): v for n, v in headers}
    for header in ("X-Amz-Target", "Content-Type", "x-amzn-query-mode"):
        value = request.headers[header]
        assert sent[header.lower()] == (value.decode() if isinstance(value, bytes) else value)
