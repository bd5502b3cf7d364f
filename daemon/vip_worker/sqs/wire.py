"""The hot-path SQS calls spoken directly on the event loop (the ``wire`` transport).

boto3 is blocking, so the ``boto3`` transport runs every call in a thread; each
call then costs ~0.6 ms of CPU in botocore (serialise, sign, send through
urllib3, parse) and a thread hop that competes with the event loop for the GIL.
SQS speaks a small JSON protocol (``X-Amz-Target: AmazonSQS.<Operation>``), so
the four calls a poller makes per message - ReceiveMessage, DeleteMessageBatch,
ChangeMessageVisibilityBatch and SendMessage - are written here on asyncio
streams: ``json.dumps``, a SigV4 signature (``vip_worker.sqs.sigv4``), one write,
one read, ``json.loads``. Everything else (queue attributes, queue URLs) and
everything about finding the endpoint and the credentials stays with botocore.

The results have the shapes boto3 returns, and errors are botocore's
``ClientError`` with the same codes (SQS's query-compatible codes, as botocore
reads them from ``x-amzn-query-error``), so the consumer cannot tell the two
transports apart. Retries follow botocore's ``standard`` mode with the boto3
client's own limit (``MAX_ATTEMPTS`` requests in all), jittered exponential
backoff, on throttling, 5xx and transport errors.

Over 400 lines because the four calls share their retries, retry quota, credentials
refresh and boto3 fallback; signing is in ``sigv4.py``, the HTTP/1.1 exchange in
``http11.py``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import logging
import os
import random
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import urlsplit

import botocore.httpsession
import botocore.utils

from vip_worker.sqs.api import ClientError, EntryFailure, SqsApi
from vip_worker.sqs.boto import (
    MAX_ATTEMPTS,
    RECEIVE_SYSTEM_ATTRIBUTES,
    RECEIVE_SYSTEM_ATTRIBUTES_FIFO,
    AsyncSqs,
    SqsClient,
    ca_bundle,
    credentials_reader,
    failures,
    make_client,
    make_session,
)
from vip_worker.sqs.http11 import Origin, TlsHandshakeError
from vip_worker.sqs.sigv4 import Credentials, Signer

USER_AGENT = "vip-worker-wire/1"
MAX_BACKOFF_S = 20.0
CALL_TIMEOUT_S = 40.0  # a whole call but a long poll (which adds its wait)
CREDENTIALS_CHECK_S = 60.0
# How long a call waits for a credentials read when it already has credentials that
# worked: a provider chain stuck on a slow metadata service must not stall the hot path.
CREDENTIALS_WAIT_S = 1.0
# How long a call waits for the first credentials read (nothing to fall back on): a
# provider chain that hangs is then a transport error, retried, not a stuck poller.
CREDENTIALS_FIRST_WAIT_S = 10.0
# Connections beyond one per long poll: batch calls, heartbeats, hand-backs, dead letters.
EXTRA_CONNECTIONS = 16
# botocore's standard retry mode (botocore/retries/standard.py): throttling backs off
# from 1 s, other transient errors from 50 ms; both double per attempt, capped at 20 s.
THROTTLING_CODES = frozenset((
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "ProvisionedThroughputExceededException",
    "TransactionInProgressException", "RequestLimitExceeded", "BandwidthLimitExceeded",
    "LimitExceededException", "RequestThrottled", "SlowDown", "PriorRequestNotComplete",
    "EC2ThrottledException",
    # SQS's own throttling code, as its query-compatible header spells it.
    "AWS.SimpleQueueService.RequestThrottled",
))
THROTTLING_STATUS = frozenset((429,))
TRANSIENT_CODES = frozenset(("RequestTimeout", "RequestTimeoutException",
                             "PriorRequestNotComplete"))
TRANSIENT_STATUS = frozenset((500, 502, 503, 504))
THROTTLING_BASE_S = 1.0
TRANSIENT_BASE_S = 0.05
RETRY_AFTER_MAX_EXTRA_S = 5.0
# botocore's standard-mode retry quota (botocore.retries.quota and .standard), one per
# client as there: a retry takes 14 (5 after throttling) from 500; a call that succeeds
# gives back what its last retry took, or 1 when it needed none. Empty, a failure is not
# retried (a long poll first waits its backoff), so a sustained outage is not tripled.
RETRY_QUOTA = 500
RETRY_COST = 14
THROTTLING_RETRY_COST = 5
NO_RETRY_INCREMENT = 1
# The credentials were rejected: read them again (a rotated role) and try once more.
# Query-protocol codes and their JSON-protocol names (no x-amzn-query-error header).
CREDENTIAL_CODES = frozenset(("ExpiredToken", "ExpiredTokenException", "InvalidClientTokenId",
                              "UnrecognizedClientException", "RequestExpired"))
# The wire client could not complete a TLS handshake (a CA bundle botocore's TLS
# settings accept and these refuse...): not SQS's answer, but handled as a refusal.
TLS_REFUSED = "WireTlsHandshakeFailed"
# SQS refused the request's signature or authentication: hand the poller to boto3.
SIGNATURE_CODES = frozenset(("SignatureDoesNotMatch", "IncompleteSignature",
                             "IncompleteSignatureException", "InvalidSignatureException",
                             "MissingAuthenticationToken", "MissingAuthenticationTokenException",
                             TLS_REFUSED))
log = logging.getLogger("vip_worker.sqs.wire")
P = ParamSpec("P")
T = TypeVar("T")


def open_sqs(region: str, endpoint_url: str, receivers: int, transport: str
             ) -> tuple[SqsApi, str]:
    """The poller's SQS client, after fork; also says which transport it got and why.

    ``wire`` needs a direct connection to an endpoint at ``/``: with a proxy
    configured for the endpoint (``HTTPS_PROXY``...) or an endpoint URL with a
    path, it is ``boto3``, which handles both.
    """
    session = make_session()
    client = make_client(region, endpoint_url, max_pool=receivers + 2 * 10,
                         botocore_session=session)
    threaded = AsyncSqs(SqsClient(client), max_workers=8, receivers=receivers)
    if transport == "boto3":
        return threaded, "configured"
    resolved = client.meta.endpoint_url
    if proxy_for(resolved):
        return threaded, "a proxy is configured for the endpoint"
    if urlsplit(resolved).path not in ("", "/"):
        return threaded, "the endpoint URL has a path"
    wire = WireSqs(threaded, resolved, client.meta.region_name, credentials_reader(session),
                   ssl_context=tls_context(ca_bundle(session)),
                   max_connections=receivers + EXTRA_CONNECTIONS)
    return wire, "configured"


def proxy_for(url: str) -> str:
    """The proxy botocore would use for ``url``; empty: none. Its own functions, so
    both transports take the same route (``NO_PROXY`` matched against ``host:port``,
    IPv6 literals in brackets)."""
    proxies = botocore.utils.get_environ_proxies(url)
    return botocore.httpsession.ProxyConfiguration(proxies=proxies).proxy_url_for(url) or ""


def tls_context(bundle: str) -> ssl.SSLContext:
    """A TLS context as botocore builds it (``create_urllib3_context``: no
    ``VERIFY_X509_STRICT``, which Python 3.13's default context adds and which
    refuses CA certificates without an Authority Key Identifier), verifying the
    host name and the CA bundle (a file or a directory) botocore would use."""
    context = botocore.httpsession.create_urllib3_context()
    context.check_hostname = True  # urllib3 checks it itself; here, OpenSSL does
    if os.path.isdir(bundle):
        context.load_verify_locations(capath=bundle)
    else:
        context.load_verify_locations(cafile=bundle)
    return context


def falls_back(to: Callable[[AsyncSqs], Callable[P, Awaitable[T]]]):
    """A ``WireSqs`` call made on the wire, and through ``to(self.fallback)`` (boto3) once
    SQS has refused the wire client's signature: that call and every later one."""
    def decorate(wire_call: Callable[Concatenate[WireSqs, P], Awaitable[T]]
                 ) -> Callable[Concatenate[WireSqs, P], Awaitable[T]]:
        @functools.wraps(wire_call)
        async def call(self: WireSqs, *args: P.args, **kwargs: P.kwargs) -> T:
            if not self.refused:
                try:
                    return await wire_call(self, *args, **kwargs)
                except ClientError as exc:
                    if not self.signature_refused(exc):
                        raise
            return await to(self.fallback)(*args, **kwargs)
        return call
    return decorate


class WireSqs:
    """``SqsApi`` with the hot-path calls made on the loop: ReceiveMessage,
    DeleteMessageBatch, ChangeMessageVisibilityBatch and SendMessage. Queue
    attributes and URLs are the fallback's calls.

    Raises only what the boto3 transport raises: ``ClientError`` for an error
    answer, ``OSError`` (``ConnectionError``, ``TimeoutError``) for everything
    else, an unusable answer included; and, as boto3 does, botocore's own errors
    from reading credentials (``NoCredentialsError``, a ``BotoCoreError``) when
    the provider chain fails and no earlier credentials are at hand.

    :param fallback: an ``AsyncSqs`` for the calls not made here, and for
        reading credentials (botocore's provider chain may block on a refresh).
    :param endpoint_url: where SQS is (the boto3 client's resolved endpoint).
    :param credentials: returns (access key, secret key, token); called in a
        thread at most once a minute, so refreshable credentials (an instance
        role) renew.
    """

    def __init__(self, fallback: AsyncSqs, endpoint_url: str, region: str,
                 credentials: Callable[[], tuple], ssl_context=None,
                 max_connections: int = 32, sleep=asyncio.sleep, clock=time.monotonic,
                 rand=random.random) -> None:
        self.fallback = fallback
        self.origin = Origin(endpoint_url, max_connections=max_connections,
                             ssl_context=ssl_context)
        self.signer = Signer(region)
        self.credentials = credentials
        self.snapshot: Credentials | None = None
        self.snapshot_at = 0.0
        self.reading: asyncio.Future | None = None
        self.reading_since = 0.0  # time.monotonic() when ``reading`` began
        self.refused = False  # SQS refused our signature once: boto3 from then on
        self.quota = RETRY_QUOTA
        self.sleep = sleep
        self.clock = clock
        self.rand = rand
        self.path_head = f"POST / HTTP/1.1\r\nHost: {self.origin.authority}\r\n"

    def signature_refused(self, exc: ClientError) -> bool:
        """True when SQS refused the wire client's signature: the call then goes through
        the fallback, and so does every later one."""
        code = exc.response["Error"]["Code"]
        if code not in SIGNATURE_CODES:
            return False
        # A safety net for what no test here can reach (a real AWS endpoint):
        # boto3 signs its own way; if it is refused too, the cause is the
        # credentials and boto3's error says so. Logged once: calls in flight
        # when the first refusal came are refused too.
        if not self.refused:
            self.refused = True
            log.warning("sqs.transport_fallback", extra={
                "configured": "wire", "used": "boto3",
                "reason": f"SQS refused the wire client's request: {code}"})
        return True

    async def queue_attributes(self, queue_url: str, names: Sequence[str]) -> dict[str, str]:
        return await self.fallback.queue_attributes(queue_url, names)

    async def queue_url(self, name: str, owner_account: str = "") -> str:
        return await self.fallback.queue_url(name, owner_account)

    def close(self) -> None:
        self.origin.close()
        self.fallback.close()

    # -- the calls --------------------------------------------------------------

    @falls_back(lambda fallback: fallback.receive)
    async def receive(self, queue_url: str, max_messages: int, wait_s: int,
                      visibility_s: int) -> list[dict[str, Any]]:
        params: dict[str, Any] = {
            "QueueUrl": queue_url,
            "MaxNumberOfMessages": max_messages,
            "WaitTimeSeconds": wait_s,
            "VisibilityTimeout": visibility_s,
            "MessageSystemAttributeNames": (RECEIVE_SYSTEM_ATTRIBUTES_FIFO
                                            if queue_url.endswith(".fifo")
                                            else RECEIVE_SYSTEM_ATTRIBUTES),
            "MessageAttributeNames": ["All"],
        }
        if queue_url.endswith(".fifo"):
            # The same id on every retry of this receive: if an answer was lost, SQS
            # hands the same messages back instead of hiding them for the timeout.
            params["ReceiveRequestAttemptId"] = uuid.uuid4().hex
        response = await self.request("ReceiveMessage", params,
                                      timeout_s=CALL_TIMEOUT_S + wait_s)
        with unusable("ReceiveMessage"):
            messages = response.get("Messages") or []  # null, as absent: none
            for i, message in enumerate(messages):
                # botocore drops JSON nulls ("Attributes": null is no attributes): so here.
                message = messages[i] = {k: v for k, v in message.items() if v is not None}
                if not (message["MessageId"] and message["ReceiptHandle"]
                        and isinstance(message["Body"], str)):
                    raise ValueError("a message without its id, receipt handle or body")
                for value in (message.get("MessageAttributes") or {}).values():
                    # base64 on the wire; bytes from boto3
                    if "BinaryValue" in value:
                        value["BinaryValue"] = base64.b64decode(value["BinaryValue"])
                    if value.get("BinaryListValues"):
                        value["BinaryListValues"] = [base64.b64decode(item) for item
                                                     in value["BinaryListValues"]]
            return messages

    @falls_back(lambda fallback: fallback.delete_batch)
    async def delete_batch(self, queue_url: str, entries: Sequence[tuple[str, str]]
                           ) -> list[EntryFailure]:
        response = await self.request("DeleteMessageBatch", {
            "QueueUrl": queue_url,
            "Entries": [{"Id": i, "ReceiptHandle": rh} for i, rh in entries],
        })
        with unusable("DeleteMessageBatch"):
            return failures(response)

    @falls_back(lambda fallback: fallback.change_visibility_batch)
    async def change_visibility_batch(self, queue_url: str,
                                      entries: Sequence[tuple[str, str, int]]
                                      ) -> list[EntryFailure]:
        response = await self.request("ChangeMessageVisibilityBatch", {
            "QueueUrl": queue_url,
            "Entries": [{"Id": i, "ReceiptHandle": rh, "VisibilityTimeout": t}
                        for i, rh, t in entries],
        })
        with unusable("ChangeMessageVisibilityBatch"):
            return failures(response)

    @falls_back(lambda fallback: fallback.send)
    async def send(self, queue_url: str, body: str, attributes: dict[str, dict] | None = None,
                   group_id: str | None = None, dedup_id: str | None = None,
                   delay_s: int = 0) -> str:
        params: dict[str, Any] = {"QueueUrl": queue_url, "MessageBody": body}
        if attributes:
            params["MessageAttributes"] = {
                name: ({**value, "BinaryValue": blob(value["BinaryValue"])}
                       if "BinaryValue" in value else value)
                for name, value in attributes.items()}
        if group_id is not None:
            params["MessageGroupId"] = group_id
            if dedup_id is not None or queue_url.endswith(".fifo"):
                params["MessageDeduplicationId"] = dedup_id or ""
        if delay_s and not queue_url.endswith(".fifo"):  # a standard queue's group (fair)
            params["DelaySeconds"] = delay_s
        response = await self.request("SendMessage", params)
        with unusable("SendMessage"):
            return response["MessageId"]

    # -- one request, with retries ----------------------------------------------

    async def request(self, operation: str, params: dict[str, Any],
                      timeout_s: float = CALL_TIMEOUT_S) -> dict[str, Any]:
        body = json.dumps(params, separators=(",", ":")).encode()
        attempt = 1
        reread = False
        acquired = 0  # what the last retry took from the quota
        while True:
            retry_after_s = 0.0
            try:
                result = await self.attempt(operation, body, timeout_s)
            except ClientError as exc:
                code = exc.response["Error"]["Code"]
                status = exc.response["ResponseMetadata"]["HTTPStatusCode"]
                if code in CREDENTIAL_CODES and not reread:
                    reread = True  # once, at once, not counted as an attempt
                    self.snapshot = None
                    continue
                throttled = code in THROTTLING_CODES or status in THROTTLING_STATUS
                if throttled:
                    base_s = THROTTLING_BASE_S
                elif code in TRANSIENT_CODES or status in TRANSIENT_STATUS:
                    base_s = TRANSIENT_BASE_S
                else:
                    raise
                if attempt >= MAX_ATTEMPTS:
                    raise
                retry_after_s = retry_after(exc.response["ResponseMetadata"]["HTTPHeaders"])
                failure: Exception = exc
            except OSError as exc:  # ConnectionError, TimeoutError: the transport
                if attempt >= MAX_ATTEMPTS:
                    raise
                base_s = TRANSIENT_BASE_S
                throttled = False
                failure = exc
            else:
                if self.quota < RETRY_QUOTA:  # full, as nearly always: nothing to give back
                    self.quota = min(RETRY_QUOTA,
                                     self.quota + (acquired or NO_RETRY_INCREMENT))
                return result
            delay_s = self.rand() * min(MAX_BACKOFF_S, base_s * 2.0 ** (attempt - 1))
            if retry_after_s:
                delay_s = max(delay_s, min(retry_after_s, delay_s + RETRY_AFTER_MAX_EXTRA_S))
            cost = THROTTLING_RETRY_COST if throttled else RETRY_COST
            if cost > self.quota:
                if operation == "ReceiveMessage":
                    await self.sleep(delay_s)  # as botocore: a receive loop must not spin
                raise failure  # the quota is spent: this error is the answer
            self.quota -= cost
            acquired = cost
            await self.sleep(delay_s)
            attempt += 1

    async def attempt(self, operation: str, body: bytes, timeout_s: float) -> dict[str, Any]:
        headers = self.signer.sign({
            "host": self.origin.authority,
            "content-type": "application/x-amz-json-1.0",
            "x-amz-target": "AmazonSQS." + operation,
            "x-amzn-query-mode": "true",
        }, body, await self.current_credentials())
        del headers["host"]  # written first, by path_head
        head = self.path_head + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        # Accept-Encoding unsigned, as http.client adds it to botocore's requests.
        data = (f"{head}User-Agent: {USER_AGENT}\r\nAccept-Encoding: identity\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        try:
            response = await self.origin.request(data, timeout_s)
        except TlsHandshakeError as exc:
            raise ClientError({"Error": {"Code": TLS_REFUSED, "Message": str(exc)},
                               "ResponseMetadata": {"HTTPStatusCode": 0, "HTTPHeaders": {}}},
                              operation) from None
        if response.status != 200:
            raise client_error(operation, response)
        try:
            parsed = json.loads(response.body) if response.body else {}
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):  # a captive portal, a proxy's page...
            raise ConnectionError(f"SQS {operation}: HTTP 200 without a JSON object: "
                                  f"{response.body[:100]!r}")
        return parsed

    async def current_credentials(self) -> Credentials:
        if self.snapshot is not None and self.clock() - self.snapshot_at < CREDENTIALS_CHECK_S:
            return self.snapshot
        if self.reading is None:  # one read for every call that needs it
            loop = asyncio.get_running_loop()
            self.reading = loop.run_in_executor(self.fallback.executor, self.credentials)
            self.reading.add_done_callback(self.read_done)
            self.reading_since = time.monotonic()
        reading, snapshot = self.reading, self.snapshot
        if snapshot is not None:
            # Credentials that worked are at hand: wait for the read only briefly (the
            # first CREDENTIALS_WAIT_S of it, not that long per call), and keep them if
            # it fails (the chain failed now; the last answer may still do; if they have
            # expired, SQS says so and the call reads again, waiting).
            wait_s = self.reading_since + CREDENTIALS_WAIT_S - time.monotonic()
            if wait_s > 0:
                await asyncio.wait({reading}, timeout=wait_s)
            if not reading.done() or reading.cancelled() or reading.exception() is not None:
                return snapshot
        try:
            async with asyncio.timeout(CREDENTIALS_FIRST_WAIT_S):
                return Credentials(*await asyncio.shield(reading))
        except TimeoutError:
            raise TimeoutError(f"reading the credentials took over {CREDENTIALS_FIRST_WAIT_S} s"
                               ) from None

    def read_done(self, future: asyncio.Future) -> None:
        self.reading = None
        if not future.cancelled() and future.exception() is None:
            self.snapshot = Credentials(*future.result())
            self.snapshot_at = self.clock()


@contextlib.contextmanager
def unusable(operation: str):
    """An answer of the wrong shape (or with bad base64) is a transport error to the
    caller, like any other answer that cannot be used; only the reading of an
    answer is wrapped, so a bug in building a request still shows as what it is."""
    try:
        yield
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ConnectionError(f"SQS {operation}: unusable response: "
                              f"{type(exc).__name__}: {exc}") from exc


def blob(value: bytes | bytearray | memoryview | str) -> str:
    """A Binary attribute's value as the JSON protocol carries it (base64), as botocore does."""
    if isinstance(value, str):
        value = value.encode()
    return base64.b64encode(value).decode()


def retry_after(headers: dict[str, str]) -> float:
    """``x-amz-retry-after`` (milliseconds) in seconds; 0 when absent or malformed."""
    try:
        return max(0.0, int(headers.get("x-amz-retry-after", "")) / 1000)
    except ValueError:
        return 0.0


def client_error(operation: str, response) -> ClientError:
    """botocore's ``ClientError`` for an error response, with the code botocore gives
    (botocore/parsers.py, ``BaseJSONParser._do_error_parse``)."""
    try:
        parsed = json.loads(response.body) if response.body else {}
    except ValueError:
        parsed = {}
    if not isinstance(parsed, dict):
        parsed = {}
    code = str(parsed.get("__type") or response.status).split(":", 1)[0].rpartition("#")[2]
    error = {"Code": code,
             "Message": parsed.get("message", parsed.get("Message", ""))
             or response.body[:200].decode("utf-8", "replace")}
    parts = response.headers.get("x-amzn-query-error", "").split(";")
    if len(parts) == 2 and parts[0]:  # SQS's query-compatible code, which botocore reports
        error["QueryErrorCode"], error["Code"], error["Type"] = code, parts[0], parts[1]
    return ClientError({
        "Error": error,
        "ResponseMetadata": {"HTTPStatusCode": response.status,
                             "RequestId": response.headers.get("x-amzn-requestid", ""),
                             "HTTPHeaders": response.headers},
    }, operation)
