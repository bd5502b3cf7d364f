"""boto3's side of the sqs package: the clients, the credential chain, the blocking calls.

``SqsClient`` is the blocking client: the typed calls the poller makes (which
``AsyncSqs`` runs in threads, one client per poller, made after fork) and the ones
the ``status`` and ``dlq`` commands, the producer and the dev stack make. Nothing
outside ``vip_worker.sqs`` calls boto3 itself. Errors are ``vip_worker.sqs.api``'s
``TRANSPORT_ERRORS``, unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import boto3
import botocore.config
import botocore.exceptions
import botocore.httpsession
import botocore.session

from vip_worker.sqs.api import EntryFailure, SendEntry

# Requests per call, the first included (botocore's total_max_attempts; its
# Config(retries={"max_attempts": n}) counts retries, n + 1 requests). Both transports.
MAX_ATTEMPTS = 3
RECEIVE_SYSTEM_ATTRIBUTES = ["ApproximateReceiveCount"]
# FIFO queues also need each message's group (standard queues have none).
RECEIVE_SYSTEM_ATTRIBUTES_FIFO = [*RECEIVE_SYSTEM_ATTRIBUTES, "MessageGroupId"]
T = TypeVar("T")


def make_client(region: str, endpoint_url: str = "", max_pool: int = 32,
                botocore_session=None, credentials: tuple[str, str] | None = None):
    """A boto3 SQS client for one process. ``endpoint_url`` empty: AWS's default.
    ``credentials`` (access key, secret key): these instead of the provider chain's."""
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
    keys = ({"aws_access_key_id": credentials[0], "aws_secret_access_key": credentials[1]}
            if credentials else {})
    return session.client("sqs", endpoint_url=endpoint_url or None, config=config, **keys)


def connect(region: str, endpoint_url: str = "", max_pool: int = 32,
            credentials: tuple[str, str] | None = None) -> SqsClient:
    """A blocking ``SqsClient`` on a new boto3 client (``make_client``'s arguments)."""
    return SqsClient(make_client(region, endpoint_url, max_pool, credentials=credentials))


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
    """Blocking calls on a boto3 client: plain lists in, plain lists out.

    The first six are ``SqsApi``'s calls (``AsyncSqs`` runs them in threads); the
    rest serve the commands, the producer and the dev stack.
    """

    def __init__(self, client) -> None:
        self.client = client

    def receive(self, queue_url: str, max_messages: int, wait_s: int,
                visibility_s: int) -> list[dict[str, Any]]:
        return self.receive_messages(queue_url, max_messages, wait_s, visibility_s,
                                     RECEIVE_SYSTEM_ATTRIBUTES_FIFO
                                     if queue_url.endswith(".fifo")
                                     else RECEIVE_SYSTEM_ATTRIBUTES)

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
            if dedup_id is not None or queue_url.endswith(".fifo"):
                kwargs["MessageDeduplicationId"] = dedup_id or ""
        if delay_s and not queue_url.endswith(".fifo"):  # a standard queue's group (fair)
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

    # -- beyond the poller's calls -----------------------------------------------------

    def receive_messages(self, queue_url: str, max_messages: int, wait_s: int,
                         visibility_s: int, system_attributes: Sequence[str]
                         ) -> list[dict[str, Any]]:
        """ReceiveMessage with every message attribute and these system attributes."""
        response = self.client.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=max_messages,
            WaitTimeSeconds=wait_s,
            VisibilityTimeout=visibility_s,
            MessageSystemAttributeNames=list(system_attributes),
            MessageAttributeNames=["All"],
        )
        return response.get("Messages", [])

    def send_batch(self, queue_url: str, entries: Sequence[SendEntry]
                   ) -> tuple[dict[str, str], list[EntryFailure]]:
        """SendMessageBatch of up to 10; returns {entry id: new MessageId} of those sent
        (in SQS's order) and the entries that failed."""
        response = self.client.send_message_batch(QueueUrl=queue_url, Entries=[
            batch_entry(entry) for entry in entries])
        sent = {ok["Id"]: ok["MessageId"] for ok in response.get("Successful", [])}
        return sent, failures(response)

    def create_queue(self, name: str, attributes: dict[str, str] | None = None) -> str:
        """CreateQueue (or the existing queue of that name and attributes); returns its URL."""
        kwargs: dict[str, Any] = {"QueueName": name}
        if attributes:
            kwargs["Attributes"] = attributes
        return self.client.create_queue(**kwargs)["QueueUrl"]

    def start_message_move_task(self, source_arn: str, destination_arn: str | None = None
                                ) -> str:
        """SQS's own redrive (StartMessageMoveTask); returns the task handle.

        Without ``destination_arn`` SQS returns each message to the queue it was
        dead-lettered from. Raises ``ClientError`` where the endpoint lacks the API
        (moto: HTTP 500) or refuses this DLQ (e.g. UnsupportedOperation).
        """
        kwargs = {"SourceArn": source_arn}
        if destination_arn:
            kwargs["DestinationArn"] = destination_arn
        return self.client.start_message_move_task(**kwargs)["TaskHandle"]


def batch_entry(entry: SendEntry) -> dict[str, Any]:
    """A ``SendEntry`` as boto3's SendMessageBatch entry."""
    row: dict[str, Any] = {"Id": entry.id, "MessageBody": entry.body}
    if entry.attributes:
        row["MessageAttributes"] = entry.attributes
    if entry.group_id is not None:
        row["MessageGroupId"] = entry.group_id
    if entry.dedup_id is not None:
        row["MessageDeduplicationId"] = entry.dedup_id
    return row


def failures(response: dict) -> list[EntryFailure]:
    return [
        EntryFailure(f["Id"], f.get("Code", ""), f.get("Message", ""), f.get("SenderFault", False))
        for f in response.get("Failed") or []  # null, as botocore reads it: none
    ]


class AsyncSqs:
    """``SqsApi`` over a blocking client, its calls run in thread pools of their own.

    Never the handlers' pool, so a poller full of blocking handlers still
    heartbeats and acknowledges. With ``receivers``, long polls get a pool of that
    many threads (one per queue) and every other call the ``max_workers`` pool:
    each thread then keeps making the same kind of call on its own warm
    connection, instead of all calls rotating over every thread.
    """

    def __init__(self, client: SqsClient, max_workers: int, receivers: int = 0) -> None:
        self.client = client
        self.executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="sqs")
        self.receive_executor = (ThreadPoolExecutor(max_workers=receivers,
                                                    thread_name_prefix="sqs-receive")
                                 if receivers else self.executor)

    async def receive(self, queue_url: str, max_messages: int, wait_s: int,
                      visibility_s: int) -> list[dict[str, Any]]:
        return await self.run(self.client.receive, queue_url, max_messages, wait_s,
                              visibility_s, executor=self.receive_executor)

    async def delete_batch(self, queue_url: str, entries: Sequence[tuple[str, str]]
                           ) -> list[EntryFailure]:
        return await self.run(self.client.delete_batch, queue_url, entries)

    async def change_visibility_batch(self, queue_url: str,
                                      entries: Sequence[tuple[str, str, int]]
                                      ) -> list[EntryFailure]:
        return await self.run(self.client.change_visibility_batch, queue_url, entries)

    async def send(self, queue_url: str, body: str, attributes: dict[str, dict] | None = None,
                   group_id: str | None = None, dedup_id: str | None = None,
                   delay_s: int = 0) -> str:
        return await self.run(self.client.send, queue_url, body, attributes, group_id,
                              dedup_id, delay_s)

    async def queue_attributes(self, queue_url: str, names: Sequence[str]) -> dict[str, str]:
        return await self.run(self.client.queue_attributes, queue_url, names)

    async def queue_url(self, name: str, owner_account: str = "") -> str:
        return await self.run(self.client.queue_url, name, owner_account)

    async def run(self, method: Callable[..., T], *args: Any,
                  executor: ThreadPoolExecutor | None = None) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor or self.executor, method, *args)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.receive_executor.shutdown(wait=False, cancel_futures=True)
