"""The only module that imports boto3: a narrow, blocking SQS client.

The poller calls these methods from a thread pool (``AsyncSqs``) so the event
loop never blocks on HTTP. Clients are made after fork, one per poller.
Tests substitute any object with the same methods (see ``tests/fakes.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import botocore.httpsession
import botocore.session

# Requests per call, the first included (botocore's total_max_attempts; its
# Config(retries={"max_attempts": n}) counts retries, n + 1 requests). Both transports.
MAX_ATTEMPTS = 3
RECEIVE_SYSTEM_ATTRIBUTES = ["ApproximateReceiveCount"]
# FIFO queues also need each message's group (standard queues have none).
RECEIVE_SYSTEM_ATTRIBUTES_FIFO = [*RECEIVE_SYSTEM_ATTRIBUTES, "MessageGroupId"]

ClientError = botocore.exceptions.ClientError
TRANSPORT_ERRORS = (botocore.exceptions.BotoCoreError, ClientError, OSError)


@dataclass(frozen=True, slots=True)
class EntryFailure:
    """One failed entry of a batch call, as SQS reported it."""

    id: str
    code: str
    message: str
    sender_fault: bool


def make_client(region: str, endpoint_url: str = "", max_pool: int = 32,
                botocore_session=None):
    """A boto3 SQS client for one process. ``endpoint_url`` empty: AWS's default."""
    config = botocore.config.Config(
        region_name=region,
        # A long poll holds its connection for WaitTimeSeconds (at most 20 s).
        read_timeout=40,
        connect_timeout=5,
        max_pool_connections=max_pool,
        retries={"mode": "standard", "total_max_attempts": MAX_ATTEMPTS},
        # The requests are built here from typed values; SQS validates them anyway.
        # Client-side validation costs ~50 us a call (5 us a message).
        parameter_validation=False,
    )
    session = boto3.session.Session(botocore_session=botocore_session)
    return session.client("sqs", endpoint_url=endpoint_url or None, config=config)


def make_session():
    """A botocore session: the credential chain and settings one process shares."""
    return botocore.session.get_session()


def credentials_reader(session) -> Callable[[], tuple[str, str, str | None]]:
    """Returns a function giving (access key, secret key, token) from the session's
    provider chain; it may block (an instance role's refresh asks the metadata service)."""
    def read() -> tuple[str, str, str | None]:
        credentials = session.get_credentials()
        if credentials is None:
            raise botocore.exceptions.NoCredentialsError()
        frozen = credentials.get_frozen_credentials()
        return frozen.access_key, frozen.secret_key, frozen.token
    return read


def ca_bundle(session) -> str:
    """The CA bundle (a file or a directory) botocore would verify TLS with:
    AWS_CA_BUNDLE or the profile's ca_bundle, else certifi's."""
    return session.get_config_variable("ca_bundle") or botocore.httpsession.get_cert_path(True)


class SqsClient:
    """Blocking calls, shaped for the consumer: plain lists in, plain lists out."""

    def __init__(self, client) -> None:
        self.client = client

    def receive(self, queue_url: str, max_messages: int, wait_s: int,
                visibility_s: int) -> list[dict[str, Any]]:
        response = self.client.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=max_messages,
            WaitTimeSeconds=wait_s,
            VisibilityTimeout=visibility_s,
            MessageSystemAttributeNames=(RECEIVE_SYSTEM_ATTRIBUTES_FIFO
                                         if queue_url.endswith(".fifo")
                                         else RECEIVE_SYSTEM_ATTRIBUTES),
            MessageAttributeNames=["All"],
        )
        return response.get("Messages", [])

    def delete_batch(self, queue_url: str, entries: Sequence[tuple[str, str]]
                     ) -> list[EntryFailure]:
        """Delete up to 10 (id, receipt_handle); return the entries that failed."""
        response = self.client.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[{"Id": i, "ReceiptHandle": rh} for i, rh in entries],
        )
        return failures(response)

    def change_visibility_batch(self, queue_url: str, entries: Sequence[tuple[str, str, int]]
                                ) -> list[EntryFailure]:
        """Set visibility of up to 10 (id, receipt_handle, timeout_s); return failures."""
        response = self.client.change_message_visibility_batch(
            QueueUrl=queue_url,
            Entries=[{"Id": i, "ReceiptHandle": rh, "VisibilityTimeout": t}
                     for i, rh, t in entries],
        )
        return failures(response)

    def send(self, queue_url: str, body: str, attributes: dict[str, dict] | None = None,
             group_id: str | None = None, dedup_id: str | None = None,
             delay_s: int = 0) -> str:
        kwargs: dict[str, Any] = {"QueueUrl": queue_url, "MessageBody": body}
        if attributes:
            kwargs["MessageAttributes"] = attributes
        if group_id is not None:
            kwargs["MessageGroupId"] = group_id
            kwargs["MessageDeduplicationId"] = dedup_id or ""
        elif delay_s:
            kwargs["DelaySeconds"] = delay_s
        return self.client.send_message(**kwargs)["MessageId"]

    def queue_attributes(self, queue_url: str, names: Sequence[str]) -> dict[str, str]:
        response = self.client.get_queue_attributes(QueueUrl=queue_url, AttributeNames=list(names))
        return response.get("Attributes", {})

    def queue_url(self, name: str, owner_account: str = "") -> str:
        kwargs = {"QueueName": name}
        if owner_account:
            kwargs["QueueOwnerAWSAccountId"] = owner_account
        return self.client.get_queue_url(**kwargs)["QueueUrl"]


def failures(response: dict) -> list[EntryFailure]:
    return [
        EntryFailure(f["Id"], f.get("Code", ""), f.get("Message", ""), f.get("SenderFault", False))
        for f in response.get("Failed", [])
    ]


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return exc.response.get("Error", {}).get("Code", "ClientError")
    return type(exc).__name__


class AsyncSqs:
    """Runs a blocking client's calls in thread pools of their own.

    Never the handlers' pool, so a poller full of blocking handlers still
    heartbeats and acknowledges. With ``receivers``, long polls get a pool of that
    many threads (one per queue) and every other call the ``max_workers`` pool:
    each thread then keeps making the same kind of call on its own warm
    connection, instead of all calls rotating over every thread.
    """

    def __init__(self, client: Any, max_workers: int, receivers: int = 0) -> None:
        self.client = client
        self.executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="sqs")
        self.receive_executor = (ThreadPoolExecutor(max_workers=receivers,
                                                    thread_name_prefix="sqs-receive")
                                 if receivers else self.executor)

    async def call(self, method: str, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        executor = self.receive_executor if method == "receive" else self.executor
        return await loop.run_in_executor(executor, getattr(self.client, method), *args)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.receive_executor.shutdown(wait=False, cancel_futures=True)
