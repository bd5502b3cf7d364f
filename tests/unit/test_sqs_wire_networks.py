"""The wire client where a hand-written HTTP/1.1 client meets real networks: each test
puts a loopback server from ``tests.support.misbehaving_http`` in front of it and
checks it behaves as botocore (urllib3) does."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import threading
import time

import botocore.httpsession
import pytest
import uvloop

from tests.support.misbehaving_http import (
    Authority,
    LoopbackServer,
    answer_then_408,
    answer_then_cut,
    cut_every_answer,
    hanging_address,
    reply_with,
    response,
)
from vip_worker.sqs import wire as wire_module
from vip_worker.sqs.boto import MAX_ATTEMPTS, make_client
from vip_worker.sqs.http11 import Origin, TlsHandshakeError
from vip_worker.sqs.wire import WireSqs, proxy_for, tls_context
from vip_worker.testing import capture_logs

QUEUE = "http://q/1/work"
POST = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"


class NoThreads:
    executor = None

    def close(self):
        pass


class RecordingFallback(NoThreads):
    def __init__(self):
        self.calls = []

    async def record(self, method, *args):
        self.calls.append((method, *args))
        return "from-boto3"

    async def receive(self, *args):
        return await self.record("receive", *args)

    async def delete_batch(self, *args):
        return await self.record("delete_batch", *args)

    async def change_visibility_batch(self, *args):
        return await self.record("change_visibility_batch", *args)

    async def send(self, *args):
        return await self.record("send", *args)


def wire(url, fallback=None, **kwargs) -> WireSqs:
    sleeps = []

    async def no_sleep(seconds):
        sleeps.append(seconds)

    kwargs.setdefault("credentials", lambda: ("AKID", "secret", None))
    sqs = WireSqs(fallback or NoThreads(), url, "us-east-1", sleep=no_sleep, **kwargs)
    sqs.sleeps = sleeps
    return sqs


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    return asyncio.run if request.param == "asyncio" else uvloop.run


# -- 1. an idle connection with bytes waiting is dead ------------------------------

def test_an_unsolicited_408_on_an_idle_connection_is_not_taken_as_the_answer(run):
    with LoopbackServer(answer_then_408(response(200, {}))) as server:
        async def go():
            sqs = wire(server.url)
            await sqs.delete_batch(QUEUE, [("0", "rh")])
            await asyncio.to_thread(server.said.wait, 5)  # the 408 is in our socket
            return await sqs.delete_batch(QUEUE, [("1", "rh")]), sqs.sleeps
        failures, sleeps = run(go())
    assert failures == [] and sleeps == []
    assert (len(server.requests), server.connections) == (2, 2)


# -- 2. a reset after part of the answer is one of the caller's attempts -----------

def test_a_reset_after_part_of_the_answer_counts_as_an_attempt(run):
    partial = b"HTTP/1.1 200 OK\r\nContent-Le"
    with LoopbackServer(answer_then_cut(response(200, {}), partial,
                                        response(200, {"MessageId": "m"}))) as server:
        async def go():
            sqs = wire(server.url)
            await sqs.delete_batch(QUEUE, [("0", "rh")])
            return await sqs.send(QUEUE, "body"), sqs.sleeps
        message_id, sleeps = run(go())
    assert message_id == "m"
    assert len(sleeps) == 1  # the cut answer was an attempt: backoff, then the retry
    assert len(server.requests) == 3


def test_answers_cut_every_time_make_max_attempts_sends(run):
    with LoopbackServer(cut_every_answer(response(200, {}),
                                         b"HTTP/1.1 200 OK\r\n")) as server:
        async def go():
            sqs = wire(server.url)
            await sqs.delete_batch(QUEUE, [("0", "rh")])
            with pytest.raises(ConnectionError):
                await sqs.delete_batch(QUEUE, [("1", "rh")])
        run(go())
    assert len(server.requests) == 1 + MAX_ATTEMPTS


# -- 3. each resolved address has its own connect timeout --------------------------

def test_a_hanging_first_address_does_not_fail_the_call(run):
    with hanging_address() as hang, LoopbackServer(reply_with(response(200, {"n": 1}))) as good:
        async def resolve(host, port):
            return [(2, 1, 6, "", hang), (2, 1, 6, "", ("127.0.0.1", good.port))]

        async def go():
            origin = Origin(good.url, connect_timeout_s=0.3, resolve=resolve)
            started = time.monotonic()
            answer = await origin.request(POST, 5)
            origin.close()
            return answer, time.monotonic() - started
        answer, took_s = run(go())
    assert json.loads(answer.body) == {"n": 1}
    assert took_s < 3


def test_every_address_failing_names_each(run):
    with hanging_address() as hang:
        async def resolve(host, port):
            return [(2, 1, 6, "", hang), (2, 1, 6, "", hang)]

        async def go():
            origin = Origin("http://sqs.example:80", connect_timeout_s=0.2, resolve=resolve)
            with pytest.raises(ConnectionError) as failed:
                await origin.request(POST, 5)
            return str(failed.value)
        message = run(go())
    assert message.count("timed out after 0.2 s") == 2


# -- 4. TLS as botocore sets it up, and boto3 when the handshake fails -------------

def test_the_tls_context_is_botocores(tmp_path):
    bundle = Authority().write_bundle(tmp_path / "ca.pem")
    ours = tls_context(bundle)
    theirs = botocore.httpsession.create_urllib3_context()
    assert ours.options == theirs.options
    assert ours.verify_flags == theirs.verify_flags
    assert not ours.verify_flags & ssl.VERIFY_X509_STRICT
    assert [c["name"] for c in ours.get_ciphers()] == [c["name"] for c in theirs.get_ciphers()]
    assert (ours.verify_mode, ours.check_hostname) == (ssl.CERT_REQUIRED, True)


def test_a_ca_without_key_identifiers_is_accepted(run, tmp_path):
    # Python 3.13's default context (VERIFY_X509_STRICT) refuses this CA; botocore's doesn't.
    authority = Authority(key_ids=False)
    context = tls_context(authority.write_bundle(tmp_path / "ca.pem"))
    with LoopbackServer(reply_with(response(200, {"MessageId": "m"})),
                        tls=authority.server_context(tmp_path)) as server:
        async def go():
            return await wire(server.url, ssl_context=context).send(QUEUE, "b")
        assert run(go()) == "m"


def test_that_ca_is_one_python_313s_default_context_refuses(run, tmp_path):
    # What the old context did on 3.13 (this venv may be older): VERIFY_X509_STRICT.
    authority = Authority(key_ids=False)
    strict = ssl.create_default_context(cafile=authority.write_bundle(tmp_path / "ca.pem"))
    strict.verify_flags |= ssl.VERIFY_X509_STRICT
    with LoopbackServer(reply_with(), tls=authority.server_context(tmp_path)) as server:
        async def go():
            with pytest.raises(TlsHandshakeError):
                await Origin(server.url, ssl_context=strict).request(POST, 5)
        run(go())


def test_a_refused_handshake_hands_the_poller_to_boto3_and_logs_once(run, tmp_path):
    trusted = tls_context(Authority().write_bundle(tmp_path / "ca.pem"))
    stranger = Authority(name="someone else")
    with LoopbackServer(reply_with(), tls=stranger.server_context(tmp_path)) as server:
        async def go():
            fallback = RecordingFallback()
            sqs = wire(server.url, fallback=fallback, ssl_context=trusted)
            with capture_logs("vip_worker.sqs.wire") as records:
                answers = [await sqs.send(QUEUE, "a"),
                           await sqs.delete_batch(QUEUE, [("0", "rh")])]
            return answers, fallback.calls, records, sqs.sleeps
        answers, calls, records, sleeps = run(go())
    assert answers == ["from-boto3", "from-boto3"] and sleeps == []
    assert [c[0] for c in calls] == ["send", "delete_batch"]
    [line] = records.events("sqs.transport_fallback")
    assert wire_module.TLS_REFUSED in line.reason


# -- 5. both transports make the same number of requests ---------------------------

def test_boto3_and_the_wire_client_make_the_same_number_of_requests(run):
    busy = response(503, {"__type": "ServiceUnavailable"})
    with LoopbackServer(reply_with(*[busy] * 10)) as server:
        client = make_client("us-east-1", server.url)
        with pytest.raises(client.exceptions.ClientError):
            client.delete_message_batch(QueueUrl=QUEUE,
                                        Entries=[{"Id": "0", "ReceiptHandle": "rh"}])
        boto3_requests = len(server.requests)

        async def go():
            with pytest.raises(Exception) as failed:
                await wire(server.url).delete_batch(QUEUE, [("0", "rh")])
            return failed.value
        run(go())
        wire_requests = len(server.requests) - boto3_requests
    assert boto3_requests == wire_requests == MAX_ATTEMPTS


# -- 6. the JSON protocol's names of authentication errors -------------------------

def test_unrecognized_client_reads_the_credentials_again(run):
    refused = response(400, {"__type": "com.amazon.coral.service#UnrecognizedClientException"})
    reads = []

    def credentials():
        reads.append(1)
        return ("AKID", "secret", None)

    with LoopbackServer(reply_with(refused, response(200, {"MessageId": "m"}))) as server:
        async def go():
            return await wire(server.url, credentials=credentials).send(QUEUE, "b")
        assert run(go()) == "m"
    assert len(reads) == 2


@pytest.mark.parametrize("code", ["IncompleteSignatureException",
                                  "MissingAuthenticationTokenException"])
def test_json_names_of_a_refused_signature_hand_over_to_boto3(run, code):
    refused = response(403, {"__type": f"com.amazon.coral.service#{code}"})
    with LoopbackServer(reply_with(refused)) as server:
        async def go():
            fallback = RecordingFallback()
            return await wire(server.url, fallback=fallback).send(QUEUE, "b")
        assert run(go()) == "from-boto3"


# -- 7. interim responses ----------------------------------------------------------

def test_interim_responses_are_skipped(run):
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\nX: y\r\n\r\n"
    with LoopbackServer(reply_with(interim + response(200, {"MessageId": "m"}),
                                   response(200, {"MessageId": "n"}))) as server:
        async def go():
            sqs = wire(server.url)
            return [await sqs.send(QUEUE, "a"), await sqs.send(QUEUE, "b")]
        assert run(go()) == ["m", "n"]
    assert server.connections == 1


# -- 8. encodings ------------------------------------------------------------------

def test_requests_ask_for_identity(run):
    with LoopbackServer(reply_with(response(200, {"MessageId": "m"}))) as server:
        run(wire(server.url).send(QUEUE, "b"))
    assert b"\r\nAccept-Encoding: identity\r\n" in server.requests[0]


@pytest.mark.parametrize("header,named", [
    ("Content-Encoding: gzip", "Content-Encoding 'gzip'"),
    ("Transfer-Encoding: gzip, chunked", "Transfer-Encoding 'gzip, chunked'"),
])
def test_an_encoding_not_asked_for_is_refused_by_name(run, header, named):
    answer = f"HTTP/1.1 200 OK\r\n{header}\r\nContent-Length: 4\r\n\r\nxxxx".encode()
    with LoopbackServer(reply_with(answer)) as server:
        async def go():
            origin = Origin(server.url)
            with pytest.raises(ConnectionError) as failed:
                await origin.request(POST, 5)
            return str(failed.value)
        message = run(go())
    assert named in message and "not asked for" in message


# -- 9. NO_PROXY as botocore matches it --------------------------------------------

@pytest.mark.parametrize("endpoint,no_proxy", [
    ("http://127.0.0.1:4566", "127.0.0.1:4566"),
    ("http://127.0.0.1:4566", "127.0.0.1:9999"),
    ("http://127.0.0.1:4566", "127.0.0.1"),
    ("http://localhost:4566", "localhost:4566,example.com"),
    ("https://sqs.eu-west-1.amazonaws.com", ".amazonaws.com"),
    ("https://sqs.eu-west-1.amazonaws.com", "sqs.eu-west-1.amazonaws.com:443"),
    ("https://sqs.eu-west-1.amazonaws.com", ""),
    ("http://[::1]:4566", "::1"),
    ("http://[::1]:4566", "[::1]:4566"),
    ("http://[::1]:4566", "[::1]"),
    ("http://[::1]:4566", "*"),
])
def test_the_wire_client_routes_as_boto3_does(monkeypatch, endpoint, no_proxy):
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("no_proxy", no_proxy)
    client = make_client("eu-west-1", endpoint)
    boto3_proxy = client._endpoint.http_session._proxy_config.proxy_url_for(endpoint)
    assert bool(proxy_for(endpoint)) == bool(boto3_proxy)


# -- 10. framing -------------------------------------------------------------------

def test_a_chunk_longer_than_its_size_is_malformed(run):
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n"
    with LoopbackServer(reply_with(answer)) as server:
        async def go():
            with pytest.raises(ConnectionError, match="chunk"):
                await Origin(server.url).request(POST, 5)
        run(go())


def test_bytes_after_an_answer_drop_its_connection(run):
    with LoopbackServer(reply_with(response(200, {}) + b"HTTP/1.1 200 stray",
                                   response(200, {}))) as server:
        async def go():
            sqs = wire(server.url)
            await sqs.delete_batch(QUEUE, [("0", "rh")])
            await sqs.delete_batch(QUEUE, [("1", "rh")])
            return sqs.sleeps
        assert run(go()) == []
    assert (len(server.requests), server.connections) == (2, 2)


# -- the rest of the issue ---------------------------------------------------------

def test_null_messages_is_an_empty_receive(run):
    with LoopbackServer(reply_with(response(200, {"Messages": None}))) as server:
        assert run(wire(server.url).receive(QUEUE, 10, 0, 30)) == []


def test_binary_list_values_are_decoded(run):
    message = {"MessageId": "m", "ReceiptHandle": "rh", "Body": "b", "MessageAttributes": {
        "blobs": {"DataType": "Binary",
                  "BinaryListValues": [base64.b64encode(b"\x00\x01").decode(), ""]}}}
    with LoopbackServer(reply_with(response(200, {"Messages": [message]}))) as server:
        [got] = run(wire(server.url).receive(QUEUE, 10, 0, 30))
    assert got["MessageAttributes"]["blobs"]["BinaryListValues"] == [b"\x00\x01", b""]


def test_a_retried_fifo_receive_carries_one_attempt_id(run):
    busy = response(500, {"__type": "InternalError"})
    with LoopbackServer(reply_with(busy, response(200, {}), response(200, {}))) as server:
        async def go():
            sqs = wire(server.url)
            await sqs.receive(QUEUE + ".fifo", 10, 0, 30)
            await sqs.receive(QUEUE, 10, 0, 30)
        run(go())
    bodies = [json.loads(r.partition(b"\r\n\r\n")[2]) for r in server.requests]
    ids = [b.get("ReceiveRequestAttemptId") for b in bodies]
    assert ids[0] and ids[0] == ids[1]
    assert ids[2] is None  # a standard queue has none


def test_the_first_credentials_read_has_a_timeout(run, monkeypatch):
    monkeypatch.setattr(wire_module, "CREDENTIALS_FIRST_WAIT_S", 0.2)
    stuck = threading.Event()

    def credentials():
        stuck.wait(10)
        return ("AKID", "secret", None)

    with LoopbackServer(reply_with()) as server:
        async def go():
            try:
                with pytest.raises(TimeoutError, match="credentials"):
                    await wire(server.url, credentials=credentials).send(QUEUE, "b")
            finally:
                stuck.set()  # the read's thread ends, so the loop can close
        run(go())
    assert server.requests == []
