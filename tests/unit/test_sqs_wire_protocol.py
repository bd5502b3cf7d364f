"""The wire transport's HTTP client, retries and error mapping, against a scripted
server on 127.0.0.1 (each test says what the server answers, byte for byte)."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading

import pytest
import uvloop

from tests.support.wait import wait_until_async
from vip_worker.sqs.api import error_code
from vip_worker.sqs.http11 import Origin
from vip_worker.sqs.wire import WireSqs
from vip_worker.testing import capture_logs


class Scripted:
    """An asyncio server that answers each request with the next scripted reply.

    A reply is bytes to write, ``"close"`` (close without answering), ``"reset"``
    (answer nothing and reset the connection) or ``"hang"`` (never answer); a
    ``(delay_s, bytes)`` pair answers late. ``keep=False`` closes each connection
    after one reply, ``reset_after=True`` resets it instead.
    """

    def __init__(self, replies, keep=True, reset_after=False):
        self.replies = list(replies)
        self.keep = keep
        self.reset_after = reset_after
        self.requests: list[bytes] = []
        self.connections = 0
        self.open = 0
        self.most_open = 0

    async def __aenter__(self):
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()

    async def serve(self, reader, writer):
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        reset = False
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int([line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")][0])
                self.requests.append(head + await reader.readexactly(length))
                reply = self.replies.pop(0)
                if reply == "close":
                    break
                if reply == "reset":
                    reset = True
                    break
                if reply == "hang":
                    await asyncio.sleep(3600)  # the scripted fault: never answer
                if isinstance(reply, tuple):
                    await asyncio.sleep(reply[0])  # the scripted fault: a slow answer
                    reply = reply[1]
                writer.write(reply)
                await writer.drain()
                if self.reset_after:
                    reset = True
                    break
                if not self.keep:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open -= 1
            if reset:  # SO_LINGER 0: close sends RST, as a NAT gateway's drop does
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
            else:
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

    kwargs.setdefault("credentials", lambda: ("AKID", "secret", None))
    kwargs.setdefault("sleep", no_sleep)
    sqs = WireSqs(NoThreads(), url, "us-east-1", **kwargs)
    sqs.sleeps = sleeps
    return sqs


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    """Runs a coroutine on asyncio's default loop or on uvloop (the pollers' loop):
    they fail differently when a peer has closed a connection."""
    return asyncio.run if request.param == "asyncio" else uvloop.run


# -- the HTTP client ---------------------------------------------------------------

def test_keep_alive_reuses_one_connection(run):
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


def test_chunked_body_is_read_whole(run):
    reply = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"5\r\n{\"a\":\r\n3;ext=1\r\n 1}\r\n0\r\n\r\n")

    async def go():
        async with Scripted([reply]) as server:
            origin = Origin(server.url)
            response = await origin.request(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 5)
            origin.close()
            return response
    assert json.loads(run(go()).body) == {"a": 1}


def test_connection_close_is_not_reused(run):
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


def test_a_kept_connection_closed_by_the_server_is_replaced_silently(run):
    # The server answers once and closes without saying so: the next call finds
    # the kept connection dead before any byte and goes again on a new one.
    async def go():
        async with Scripted([ok({"n": 1}), ok({"n": 2})], keep=False) as server:
            origin = Origin(server.url)
            data = b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
            await origin.request(data, 5)
            await wait_until_async(lambda: not origin.idle[-1].usable(), 5,
                                   message="the server's close to reach the kept connection")
            second = await origin.request(data, 5)
            origin.close()
            return second, server.connections
    second, connections = run(go())
    assert json.loads(second.body) == {"n": 2} and connections == 2


def test_a_call_past_its_deadline_times_out_and_drops_the_connection(run):
    async def go():
        async with Scripted(["hang"]) as server:
            origin = Origin(server.url)
            with pytest.raises(TimeoutError):
                await origin.request(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 0.2)
            return len(origin.idle)
    assert run(go()) == 0


def test_a_response_cut_short_is_a_connection_error(run):
    async def go():
        async with Scripted([b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}"],
                            keep=False) as server:
            origin = Origin(server.url)
            with pytest.raises(ConnectionError, match="body ended"):
                await origin.request(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 5)
    run(go())


def test_not_http_is_a_connection_error(run):
    async def go():
        async with Scripted([b"SSH-2.0-OpenSSH\r\n\r\n"]) as server:
            origin = Origin(server.url)
            with pytest.raises(ConnectionError, match="not an HTTP"):
                await origin.request(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 5)
    run(go())


def test_refused_connection_is_an_oserror(run):
    async def go():
        async with Scripted([]) as server:
            url = server.url
        origin = Origin(url)  # the server is gone: nothing listens there now
        with pytest.raises(OSError):
            await origin.request(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 5)
    run(go())


# -- requests, retries and errors ------------------------------------------------------

def test_request_is_signed_json_with_the_sqs_target(run):
    async def go():
        async with Scripted([ok({"Successful": [{"Id": "0"}]})]) as server:
            sqs = wire(server.url)
            failed = await sqs.delete_batch("http://q/1/work", [("0", "rh")])
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


def test_throttling_and_5xx_are_retried_then_succeed(run):
    async def go():
        async with Scripted([
            error(400, {"__type": "com.amazonaws.sqs#RequestThrottled"},
                  "AWS.SimpleQueueService.RequestThrottled;Sender"),
            error(503, {"__type": "ServiceUnavailable"}),
            ok({"Messages": [{"Body": "b", "ReceiptHandle": "r", "MessageId": "m"}]}),
        ]) as server:
            sqs = wire(server.url, rand=lambda: 0.5)
            got = await sqs.receive("http://q/1/work", 10, 0, 30)
            sqs.close()
            return got, sqs.sleeps
    got, sleeps = run(go())
    assert [m["Body"] for m in got] == ["b"]
    # botocore's standard mode: rand x base x 2**(attempt-1); throttling from 1 s,
    # other transient errors from 50 ms
    assert sleeps == [0.5 * 1.0, 0.5 * 0.05 * 2]


def test_transport_errors_are_retried_three_times_then_raised(run):
    async def go():
        async with Scripted(["close", "close", "close"]) as server:
            sqs = wire(server.url)
            with pytest.raises(ConnectionError):
                await sqs.send("http://q/1/work", "body")
            sqs.close()
            return len(server.requests), sqs.sleeps
    attempts, sleeps = run(go())
    assert attempts == 3 and len(sleeps) == 2


def test_retries_draw_on_botocores_quota_and_successes_refill_it(run):
    from vip_worker.sqs import wire as sqs_wire

    unavailable = error(503, {"__type": "ServiceUnavailable"})
    throttled = error(400, {"__type": "com.amazonaws.sqs#RequestThrottled"},
                      "AWS.SimpleQueueService.RequestThrottled;Sender")

    async def go():
        async with Scripted([unavailable, ok({"MessageId": "1"}),
                             throttled, ok({"MessageId": "2"}),
                             ok({"MessageId": "3"}), ok({"MessageId": "4"})]) as server:
            during = []

            async def sleep(seconds):  # the quota while a retry waits
                during.append(sqs.quota)

            sqs = wire(server.url, sleep=sleep)
            sqs.quota = 100
            after = []
            for body in "abc":
                await sqs.send("http://q/1/work", body)
                after.append(sqs.quota)
            sqs.quota = sqs_wire.RETRY_QUOTA
            await sqs.send("http://q/1/work", "d")
            full = sqs.quota
            sqs.close()
            return during, after, full
    during, after, full = run(go())
    # A retry takes 14 (5 after throttling) and the success gives it back; a call that
    # needed no retry gives 1, never past the quota's 500.
    assert during == [100 - 14, 100 - 5]
    assert after == [100, 100, 101]
    assert full == sqs_wire.RETRY_QUOTA == 500


def send_body(sqs):
    return sqs.send("http://q/1/work", "body")


def receive_ten(sqs):
    return sqs.receive("http://q/1/work", 10, 0, 30)


@pytest.mark.parametrize("make_call,waits", [(send_body, False), (receive_ten, True)])
def test_a_spent_quota_answers_the_first_error_without_retrying(run, make_call, waits):
    # A sustained outage: the quota is spent, so each call makes one request instead of
    # three; a long poll still waits its backoff first, so a receive loop cannot spin.
    async def go():
        async with Scripted([error(500, {"__type": "InternalError"})] * 2) as server:
            sqs = wire(server.url, rand=lambda: 0.5)
            sqs.quota = 20  # one retry left (14), not two
            with pytest.raises(Exception) as first:
                await make_call(sqs)
            requests_first = len(server.requests)
            sleeps_first = list(sqs.sleeps)
            sqs.close()
            return first.value, requests_first, sleeps_first, sqs.quota
    caught, requests, sleeps, quota = run(go())
    assert error_code(caught) == "InternalError"
    assert requests == 2 and quota == 6  # one retry taken; the second was refused
    assert len(sleeps) == (2 if waits else 1)


def test_a_client_error_is_not_retried_and_has_botocores_code(run):
    async def go():
        async with Scripted([error(400, {"__type": "com.amazonaws.sqs#QueueDoesNotExist",
                                         "message": "The specified queue does not exist."},
                                   "AWS.SimpleQueueService.NonExistentQueue;Sender")]) as server:
            sqs = wire(server.url)
            with pytest.raises(Exception) as caught:
                await sqs.receive("http://q/1/gone", 1, 0, 30)
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


def test_an_error_without_a_query_code_uses_the_json_type(run):
    async def go():
        async with Scripted([error(400, {"__type": "com.amazonaws.sqs#InvalidParameterValue",
                                         "message": "too big"})]) as server:
            sqs = wire(server.url)
            with pytest.raises(Exception) as caught:
                await sqs.send("http://q/1/work", "x" * 10)
            sqs.close()
            return caught.value
    assert error_code(run(go())) == "InvalidParameterValue"


def test_a_non_json_error_page_names_the_status(run):
    page = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 9\r\n\r\nForbidden"

    async def go():
        async with Scripted([page]) as server:
            sqs = wire(server.url)
            with pytest.raises(Exception) as caught:
                await sqs.receive("http://q/1/work", 1, 0, 30)
            sqs.close()
            return caught.value
    exc = run(go())
    assert error_code(exc) == "403" and exc.response["Error"]["Message"] == "Forbidden"


def test_credentials_are_read_again_after_a_minute(run):
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
            await sqs.send("http://q/1/work", "a")
            now[0] += 30
            await sqs.send("http://q/1/work", "b")
            now[0] += 31
            await sqs.send("http://q/1/work", "c")
            sqs.close()
            return server.requests
    requests = run(go())
    assert reads == [1000.0, 1061.0]
    assert [b"Credential=AKID%d/" % n in r for n, r in ((1, requests[0]), (1, requests[1]),
                                                         (2, requests[2]))] == [True] * 3
    assert all(b"x-amz-security-token: token" in r for r in requests)


# -- what the review of the first version found ------------------------------------------

DATA = b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"


@pytest.mark.parametrize("reset_after", [False, True], ids=["fin", "rst"])
def test_an_idle_connection_the_server_dropped_costs_no_attempt(run, reset_after):
    # A NAT gateway drops idle flows and answers the next packet with a reset; a
    # restarted endpoint closes them. Either way the call succeeds at once.
    async def go():
        async with Scripted([ok({"MessageId": "1"}), ok({"MessageId": "2"})],
                            keep=False, reset_after=reset_after) as server:
            sqs = wire(server.url)
            await sqs.send("http://q/1/work", "a")
            await wait_until_async(lambda: not sqs.origin.idle[-1].usable(), 5,
                                   message="the close or reset to reach the kept connection")
            second = await sqs.send("http://q/1/work", "b")
            sqs.close()
            return second, sqs.sleeps, server.connections
    assert run(go()) == ("2", [], 2)


def test_a_dead_connection_found_only_on_use_is_replaced_at_once(run):
    # The check before reuse cannot see a reset that arrives after it; the write or
    # the read then fails before any response byte, and the request goes again on a
    # new connection, still without counting as an attempt.
    async def go():
        async with Scripted([ok({"n": 1}), "reset", ok({"n": 2})]) as server:
            origin = Origin(server.url)
            await origin.request(DATA, 5)
            second = await origin.request(DATA, 5)
            origin.close()
            return json.loads(second.body), server.connections
    assert run(go()) == ({"n": 2}, 2)


def test_a_request_that_met_a_dead_connection_goes_again_on_a_new_one(run):
    # Two idle connections; the newest turns out dead on use. The other one may be as
    # dead (a restarted endpoint closed both): the request goes once more, on a new
    # connection, not to the next idle one (which a server that resets every reused
    # connection would make an endless, uncounted loop).
    async def go():
        async with Scripted([ok({"n": 1}), ok({"n": 2}), "reset", ok({"n": 3})]) as server:
            origin = Origin(server.url)
            await asyncio.gather(origin.request(DATA, 5), origin.request(DATA, 5))
            third = await origin.request(DATA, 5)
            idle = len(origin.idle)
            origin.close()
            return json.loads(third.body), server.connections, idle
    assert run(go()) == ({"n": 3}, 3, 2)


def test_a_200_that_is_not_json_is_a_transport_error_and_retried(run):
    page = b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n<html>hi</html>"

    async def go():
        async with Scripted([page, page, page]) as server:
            sqs = wire(server.url)
            with pytest.raises(ConnectionError, match="without a JSON object"):
                await sqs.receive("http://q/1/work", 10, 0, 30)
            sqs.close()
            return len(server.requests)
    assert run(go()) == 3


@pytest.mark.parametrize("make_call,payload", [
    (send_body, {}),
    (receive_ten, {"Messages": ["not-a-message"]}),
    (receive_ten, {"Messages": [{"MessageId": "1", "ReceiptHandle": "rh", "Body": "b",
                                 "MessageAttributes": {"a": {"BinaryValue": 5}}}]}),
    (receive_ten, {"Messages": [{"MessageId": "1", "Body": "no receipt handle"}]}),
    (receive_ten, {"Messages": [{"MessageId": "1", "ReceiptHandle": "rh", "Body": None}]}),
])
def test_an_answer_of_the_wrong_shape_is_a_transport_error(run, make_call, payload):
    async def go():
        async with Scripted([ok(payload)]) as server:
            sqs = wire(server.url)
            with pytest.raises(ConnectionError, match="unusable response"):
                await make_call(sqs)
            sqs.close()
    run(go())


def test_malformed_framing_is_a_connection_error(run):
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: lots\r\n\r\n{}"

    async def go():
        async with Scripted([reply]) as server:
            origin = Origin(server.url)
            with pytest.raises(ConnectionError, match="malformed"):
                await origin.request(DATA, 5)
    run(go())


def test_open_connections_are_capped(run):
    async def go():
        async with Scripted([(0.2, ok({"n": n})) for n in range(5)]) as server:
            origin = Origin(server.url, max_connections=2)
            answers = await asyncio.gather(*(origin.request(DATA, 5) for _ in range(5)))
            origin.close()
            return len(answers), server.most_open
    assert run(go()) == (5, 2)


def test_429_and_retry_after_are_honoured(run):
    throttled = (b"HTTP/1.1 429 Too Many\r\nContent-Length: 2\r\n"
                 b"x-amz-retry-after: 3000\r\n\r\n{}")

    async def go():
        async with Scripted([throttled, ok({"MessageId": "1"})]) as server:
            sqs = wire(server.url, rand=lambda: 0.5)
            await sqs.send("http://q/1/work", "a")
            sqs.close()
            return sqs.sleeps
    # throttling: 0.5 x 1 s, raised to the server's 3 s (at most 5 s more than ours)
    assert run(go()) == [3.0]


def test_rejected_credentials_are_read_again_and_the_call_repeated_once(run):
    reads = []

    def credentials():
        reads.append(1)
        return (f"AKID{len(reads)}", "secret", None)

    expired = error(403, {"__type": "com.amazon.coral.service#ExpiredTokenException"},
                    "ExpiredToken;Sender")

    async def go():
        async with Scripted([expired, ok({"MessageId": "1"}), expired, expired]) as server:
            sqs = wire(server.url, credentials=credentials)
            first = await sqs.send("http://q/1/work", "a")
            with pytest.raises(Exception) as caught:
                await sqs.send("http://q/1/work", "b")
            sqs.close()
            return first, error_code(caught.value), sqs.sleeps, server.requests
    first, code, sleeps, requests = run(go())
    assert (first, code, sleeps, len(reads)) == ("1", "ExpiredToken", [], 3)
    assert b"Credential=AKID2/" in requests[1] and b"Credential=AKID3/" in requests[3]


def test_a_failed_credentials_read_keeps_the_last_good_ones(run):
    now = [0.0]
    answers = [("AKID", "secret", None), RuntimeError("metadata service down")]

    def credentials():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def go():
        async with Scripted([ok({"MessageId": "1"}), ok({"MessageId": "2"})]) as server:
            sqs = wire(server.url, credentials=credentials, clock=lambda: now[0])
            await sqs.send("http://q/1/work", "a")
            now[0] += 61
            second = await sqs.send("http://q/1/work", "b")
            sqs.close()
            return second, server.requests[1]
    second, request = run(go())
    assert second == "2" and b"Credential=AKID/" in request


def second_read_hangs():
    """A provider chain whose first read answers AKID and whose second hangs (a slow
    metadata service) until ``release`` is set; then it answers AKID2."""
    release = threading.Event()
    keys = iter(["AKID", "AKID2"])

    def credentials():
        key = next(keys)
        if key == "AKID2":
            release.wait(30)
        return (key, "secret", None)

    return credentials, release


def test_a_slow_credentials_read_does_not_hold_calls_that_have_credentials(run):
    # After a minute the credentials are read again; the provider chain hangs (a slow
    # metadata service). Calls go on with the last good credentials after a short wait
    # instead of waiting for the chain.
    now = [0.0]
    credentials, release = second_read_hangs()

    async def go():
        async with Scripted([ok({"MessageId": "1"}), ok({"MessageId": "2"})]) as server:
            sqs = wire(server.url, credentials=credentials, clock=lambda: now[0])
            await sqs.send("http://q/1/work", "a")
            now[0] += 61
            second = await sqs.send("http://q/1/work", "b")
            still_reading = sqs.reading is not None and not sqs.reading.done()
            release.set()
            sqs.close()
            return second, still_reading, server.requests[1]
    try:
        second, still_reading, request = run(go())
    finally:
        release.set()
    assert (second, still_reading) == ("2", True)
    assert b"Credential=AKID/" in request


def test_a_call_waiting_on_a_slow_read_keeps_its_credentials_when_another_drops_them(run):
    # While one call waits out a slow read, another is told ExpiredToken and drops the
    # snapshot to read again: the waiting call still signs with what it had.
    now = [0.0]
    credentials, release = second_read_hangs()

    async def go():
        async with Scripted([ok({"MessageId": "1"}), ok({"MessageId": "2"})]) as server:
            sqs = wire(server.url, credentials=credentials, clock=lambda: now[0])
            await sqs.send("http://q/1/work", "a")
            now[0] += 61

            async def expired_elsewhere():
                await asyncio.sleep(0.2)  # the stimulus: drop the snapshot mid-wait
                sqs.snapshot = None

            second, _ = await asyncio.gather(sqs.send("http://q/1/work", "b"),
                                             expired_elsewhere())
            release.set()
            sqs.close()
            return second, server.requests[1]
    try:
        second, request = run(go())
    finally:
        release.set()
    assert second == "2" and b"Credential=AKID/" in request


def test_concurrent_calls_share_one_credentials_read(run):
    reads = []

    def credentials():
        reads.append(1)
        return ("AKID", "secret", None)

    async def go():
        async with Scripted([ok({"MessageId": str(n)}) for n in range(4)]) as server:
            sqs = wire(server.url, credentials=credentials)
            await asyncio.gather(*(sqs.send("http://q/1/work", "x") for _ in range(4)))
            sqs.close()
    run(go())
    assert len(reads) == 1


@pytest.mark.parametrize("payload,header,code", [
    ({"__type": "com.amazonaws.sqs#QueueDoesNotExist:http://internal/"}, "",
     "QueueDoesNotExist"),
    ({"__type": "InvalidAddress"}, ";Sender", "InvalidAddress"),  # malformed header: ignored
    ({"__type": "x#OverLimit"}, "AWS.SimpleQueueService.OverLimit;Sender",
     "AWS.SimpleQueueService.OverLimit"),
])
def test_error_codes_are_parsed_as_botocore_does(run, payload, header, code):
    async def go():
        async with Scripted([error(400, payload, header)]) as server:
            sqs = wire(server.url)
            with pytest.raises(Exception) as caught:
                await sqs.send("http://q/1/work", "a")
            sqs.close()
            return caught.value
    assert error_code(run(go())) == code


def test_binary_values_of_every_kind_go_as_base64(run):
    async def go():
        async with Scripted([ok({"MessageId": "1"})]) as server:
            sqs = wire(server.url)
            await sqs.send("http://q/1/work", "a", {
                "b": {"DataType": "Binary", "BinaryValue": b"\x00\x01"},
                "ba": {"DataType": "Binary", "BinaryValue": bytearray(b"\x00\x01")},
                "s": {"DataType": "Binary", "BinaryValue": "\x00\x01"}})
            sqs.close()
            return server.requests[0]
    body = json.loads(run(go()).partition(b"\r\n\r\n")[2])
    assert {v["BinaryValue"] for v in body["MessageAttributes"].values()} == {"AAE="}


def test_an_ipv6_endpoint_is_bracketed_in_the_host_header():
    assert Origin("http://[::1]:4566").authority == "[::1]:4566"
    assert Origin("https://[2001:db8::1]").authority == "[2001:db8::1]"


class RecordingFallback(NoThreads):
    """The boto3 transport's stand-in: records the calls handed to it."""

    def __init__(self):
        self.calls = []

    async def send(self, *args):
        self.calls.append(("send", *args))
        return "from-boto3"

    async def delete_batch(self, *args):
        self.calls.append(("delete_batch", *args))
        return "from-boto3"


def test_a_refused_signature_hands_the_poller_to_boto3(run):
    # The one thing this project's CI cannot check is a real AWS endpoint: if it ever
    # refuses the wire client's signature, the poller goes on with boto3 (which finds
    # its own credentials and signs its own way) instead of failing every call.
    refused = error(403, {"__type": "com.amazon.coral.service#SignatureDoesNotMatch",
                          "message": "The request signature we calculated does not match"})

    async def go():
        async with Scripted([refused]) as server:
            fallback = RecordingFallback()
            sqs = WireSqs(fallback, server.url, "us-east-1", lambda: ("AKID", "s", None))
            with capture_logs("vip_worker.sqs.wire") as records:
                first = await sqs.send("http://q/1/work", "a")
                second = await sqs.delete_batch("http://q/1/work", [("0", "rh")])
            return first, second, fallback.calls, len(server.requests), records
    first, second, calls, wire_requests, records = run(go())
    assert (first, second, wire_requests) == ("from-boto3", "from-boto3", 1)
    assert [c[0] for c in calls] == ["send", "delete_batch"]
    [line] = records.events("sqs.transport_fallback")
    assert (line.configured, line.used) == ("wire", "boto3")
    assert "SignatureDoesNotMatch" in line.reason


def test_the_fallback_is_logged_once_when_calls_in_flight_are_refused_too(run):
    refused = error(403, {"__type": "com.amazon.coral.service#SignatureDoesNotMatch"})

    async def go():
        async with Scripted([refused, refused]) as server:
            sqs = WireSqs(RecordingFallback(), server.url, "us-east-1",
                          lambda: ("AKID", "s", None))
            with capture_logs("vip_worker.sqs.wire") as records:
                answers = await asyncio.gather(sqs.send("http://q/1/work", "a"),
                                               sqs.send("http://q/1/work", "b"))
            return answers, len(server.requests), records
    answers, wire_requests, records = run(go())
    assert (answers, wire_requests) == (["from-boto3", "from-boto3"], 2)
    assert len(records.events("sqs.transport_fallback")) == 1
