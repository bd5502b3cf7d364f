"""The wire transport's HTTP client, retries and error mapping, against a scripted
server on 127.0.0.1 (each test says what the server answers, byte for byte)."""

from __future__ import annotations

import asyncio
import json

import pytest

from vip_worker.http11 import Origin
from vip_worker.sqs import error_code
from vip_worker.sqs_wire import WireSqs


class Scripted:
    """An asyncio server that answers each request with the next scripted reply.

    A reply is bytes to write, ``"close"`` (close without answering) or
    ``"hang"`` (never answer). ``keep=False`` closes each connection after one reply.
    """

    def __init__(self, replies, keep=True):
        self.replies = list(replies)
        self.keep = keep
        self.requests: list[bytes] = []
        self.connections = 0

    async def __aenter__(self):
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()

    async def serve(self, reader, writer):
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int([line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")][0])
                self.requests.append(head + await reader.readexactly(length))
                reply = self.replies.pop(0)
                if reply == "close":
                    break
                if reply == "hang":
                    await asyncio.sleep(3600)
                writer.write(reply)
                await writer.drain()
                if not self.keep:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def ok(payload: dict, extra: str = "") -> bytes:
    body = json.dumps(payload).encode()
    return (f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n").encode() + body


def error(status: int, payload: dict, query_error: str = "") -> bytes:
    body = json.dumps(payload).encode()
    header = f"x-amzn-query-error: {query_error}\r\n" if query_error else ""
    return (f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n"
            f"x-amzn-RequestId: req-1\r\n{header}\r\n").encode() + body


class NoThreads:
    """The fallback ``AsyncSqs`` stand-in: credentials are read in its executor."""

    executor = None

    def close(self):
        pass


def wire(url, **kwargs) -> WireSqs:
    sleeps = []

    async def no_sleep(seconds):
        sleeps.append(seconds)

    sqs = WireSqs(NoThreads(), url, "us-east-1", lambda: ("AKID", "secret", None),
                  sleep=no_sleep, **kwargs)
    sqs.sleeps = sleeps
    return sqs


def run(coro):
    return asyncio.run(coro)


# -- the HTTP client ---------------------------------------------------------------

def test_keep_alive_reuses_one_connection():
    async def go():
        async with Scripted([ok({"n": 1}), ok({"n": 2})]) as server:
            origin = Origin(server.url)
            data = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
            first = await origin.request(data, 5)
            second = await origin.request(data, 5)
            origin.close()
            return first, second, server.connections
    first, second, connections = run(go())
    assert json.loads(first.body) == {"n": 1} and json.loads(second.body) == {"n": 2}
    assert connections == 1


def test_chunked_body_is_read_whole():
    reply = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"5\r\n{\"a\":\r\n3;ext=1\r\n 1}\r\n0\r\n\r\n")

    async def go():
        async with Scripted([reply]) as server:
            origin = Origin(server.url)
            response = await origin.request(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 5)
            origin.close()
            return response
    assert json.loads(run(go()).body) == {"a": 1}


def test_connection_close_is_not_reused():
    async def go():
        async with Scripted([ok({}, "Connection: close\r\n"), ok({})], keep=False) as server:
            origin = Origin(server.url)
            data = b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
            await origin.request(data, 5)
            idle_after_close = len(origin.idle)
            await origin.request(data, 5)
            origin.close()
            return idle_after_close, server.connections
    assert run(go()) == (0, 2)


def test_a_kept_connection_closed_by_the_server_is_replaced_silently():
    # The server answers once and closes without saying so: the next call finds
    # the kept connection dead before any byte and goes again on a new one.
    async def go():
        async with Scripted([ok({"n": 1}), ok({"n": 2})], keep=False) as server:
            origin = Origin(server.url)
            data = b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
            await origin.request(data, 5)
            await asyncio.sleep(0.05)  # let the close reach us
            second = await origin.request(data, 5)
            origin.close()
            return second, server.connections
    second, connections = run(go())
    assert json.loads(second.body) == {"n": 2} and connections == 2


def test_a_call_past_its_deadline_times_out_and_drops_the_connection():
    async def go():
        async with Scripted(["hang"]) as server:
            origin = Origin(server.url)
            with pytest.raises(TimeoutError):
                await origin.request(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 0.2)
            return len(origin.idle)
    assert run(go()) == 0


def test_a_response_cut_short_is_a_connection_error():
    async def go():
        async with Scripted([b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}"],
                            keep=False) as server:
            origin = Origin(server.url)
            with pytest.raises(ConnectionError, match="body ended"):
                await origin.request(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 5)
    run(go())


def test_not_http_is_a_connection_error():
    async def go():
        async with Scripted([b"SSH-2.0-OpenSSH\r\n\r\n"]) as server:
            origin = Origin(server.url)
            with pytest.raises(ConnectionError, match="not an HTTP"):
                await origin.request(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 5)
    run(go())


def test_refused_connection_is_an_oserror():
    async def go():
        async with Scripted([]) as server:
            url = server.url
        origin = Origin(url)  # the server is gone: nothing listens there now
        with pytest.raises(OSError):
            await origin.request(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 5)
    run(go())


# -- requests, retries and errors ------------------------------------------------------

def test_request_is_signed_json_with_the_sqs_target():
    async def go():
        async with Scripted([ok({"Successful": [{"Id": "0"}]})]) as server:
            sqs = wire(server.url)
            failed = await sqs.call("delete_batch", "http://q/1/work", [("0", "rh")])
            sqs.close()
            return failed, server.requests[0]
    failed, request = run(go())
    head, _, body = request.partition(b"\r\n\r\n")
    headers = {line.split(b":", 1)[0].lower(): line.split(b":", 1)[1].strip()
               for line in head.split(b"\r\n")[1:]}
    assert failed == []
    assert head.startswith(b"POST / HTTP/1.1\r\nHost: 127.0.0.1:")
    assert headers[b"x-amz-target"] == b"AmazonSQS.DeleteMessageBatch"
    assert headers[b"content-type"] == b"application/x-amz-json-1.0"
    assert headers[b"authorization"].startswith(b"AWS4-HMAC-SHA256 Credential=AKID/")
    assert json.loads(body) == {"QueueUrl": "http://q/1/work",
                                "Entries": [{"Id": "0", "ReceiptHandle": "rh"}]}


def test_throttling_and_5xx_are_retried_then_succeed():
    async def go():
        async with Scripted([
            error(400, {"__type": "com.amazonaws.sqs#RequestThrottled"},
                  "AWS.SimpleQueueService.RequestThrottled;Sender"),
            error(503, {"__type": "ServiceUnavailable"}),
            ok({"Messages": [{"Body": "b", "ReceiptHandle": "r", "MessageId": "m"}]}),
        ]) as server:
            sqs = wire(server.url)
            got = await sqs.call("receive", "http://q/1/work", 10, 0, 30)
            sqs.close()
            return got, sqs.sleeps
    got, sleeps = run(go())
    assert [m["Body"] for m in got] == ["b"]
    assert len(sleeps) == 2 and sleeps[0] <= 1 and sleeps[1] <= 2  # jittered, growing caps


def test_transport_errors_are_retried_three_times_then_raised():
    async def go():
        async with Scripted(["close", "close", "close"]) as server:
            sqs = wire(server.url)
            with pytest.raises(ConnectionError):
                await sqs.call("send", "http://q/1/work", "body")
            sqs.close()
            return len(server.requests), sqs.sleeps
    attempts, sleeps = run(go())
    assert attempts == 3 and len(sleeps) == 2


def test_a_client_error_is_not_retried_and_has_botocores_code():
    async def go():
        async with Scripted([error(400, {"__type": "com.amazonaws.sqs#QueueDoesNotExist",
                                         "message": "The specified queue does not exist."},
                                   "AWS.SimpleQueueService.NonExistentQueue;Sender")]) as server:
            sqs = wire(server.url)
            with pytest.raises(Exception) as caught:
                await sqs.call("receive", "http://q/1/gone", 1, 0, 30)
            sqs.close()
            return caught.value, len(server.requests)
    exc, attempts = run(go())
    assert attempts == 1
    assert error_code(exc) == "AWS.SimpleQueueService.NonExistentQueue"
    assert exc.response["Error"]["Message"] == "The specified queue does not exist."
    assert exc.response["ResponseMetadata"] == {
        "HTTPStatusCode": 400, "RequestId": "req-1", "HTTPHeaders": exc.response[
            "ResponseMetadata"]["HTTPHeaders"]}
    assert exc.operation_name == "ReceiveMessage"


def test_an_error_without_a_query_code_uses_the_json_type():
    async def go():
        async with Scripted([error(400, {"__type": "com.amazonaws.sqs#InvalidParameterValue",
                                         "message": "too big"})]) as server:
            sqs = wire(server.url)
            with pytest.raises(Exception) as caught:
                await sqs.call("send", "http://q/1/work", "x" * 10)
            sqs.close()
            return caught.value
    assert error_code(run(go())) == "InvalidParameterValue"


def test_a_non_json_error_page_names_the_status():
    page = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 9\r\n\r\nForbidden"

    async def go():
        async with Scripted([page]) as server:
            sqs = wire(server.url)
            with pytest.raises(Exception) as caught:
                await sqs.call("receive", "http://q/1/work", 1, 0, 30)
            sqs.close()
            return caught.value
    exc = run(go())
    assert error_code(exc) == "403" and exc.response["Error"]["Message"] == "Forbidden"


def test_credentials_are_read_again_after_a_minute():
    reads = []
    now = [1000.0]

    def credentials():
        reads.append(now[0])
        return (f"AKID{len(reads)}", "secret", "token")

    async def go():
        async with Scripted([ok({"MessageId": "1"}), ok({"MessageId": "2"}),
                             ok({"MessageId": "3"})]) as server:
            sqs = WireSqs(NoThreads(), server.url, "us-east-1", credentials,
                          clock=lambda: now[0])
            await sqs.call("send", "http://q/1/work", "a")
            now[0] += 30
            await sqs.call("send", "http://q/1/work", "b")
            now[0] += 31
            await sqs.call("send", "http://q/1/work", "c")
            sqs.close()
            return server.requests
    requests = run(go())
    assert reads == [1000.0, 1061.0]
    assert [b"Credential=AKID%d/" % n in r for n, r in ((1, requests[0]), (1, requests[1]),
                                                         (2, requests[2]))] == [True] * 3
    assert all(b"x-amz-security-token: token" in r for r in requests)
