"""The SQS interface the poller calls, and what it returns and raises.

``SqsApi`` is what the consumer, the heartbeat, the batchers and the poller's DLQ
lookups hold; ``vip_worker.sqs.boto.AsyncSqs`` (boto3 in threads) and
``vip_worker.sqs.wire.WireSqs`` (the hot-path calls on the event loop) implement it,
and so does the unit tests' fake (``tests/fakes.py``). Every transport raises only
``TRANSPORT_ERRORS``: botocore's ``ClientError`` for an error answer (with the
codes boto3 reports), ``OSError`` or a ``BotoCoreError`` for everything else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import botocore.exceptions

ClientError = botocore.exceptions.ClientError
TRANSPORT_ERRORS = (botocore.exceptions.BotoCoreError, ClientError, OSError)


@dataclass(frozen=True, slots=True)
class EntryFailure:
    """One failed entry of a batch call, as SQS reported it."""

    id: str
    code: str
    message: str
    sender_fault: bool


@dataclass(frozen=True, slots=True)
class SendEntry:
    """One message of a SendMessageBatch; ``group_id`` and ``dedup_id`` for FIFO queues."""

    id: str
    body: str
    attributes: dict[str, dict[str, Any]] | None = None
    group_id: str | None = None
    dedup_id: str | None = None


def error_code(exc: BaseException) -> str:
    """SQS's error code of a ``ClientError``, else the exception's class name."""
    if isinstance(exc, ClientError):
        return exc.response.get("Error", {}).get("Code", "ClientError")
    return type(exc).__name__


class SqsApi(Protocol):
    """The asynchronous SQS client of one poller. Results have boto3's shapes."""

    async def receive(self, queue_url: str, max_messages: int, wait_s: int,
                      visibility_s: int) -> list[dict[str, Any]]:
        """ReceiveMessage: up to ``max_messages`` (at most 10) messages with every
        message attribute, ``ApproximateReceiveCount`` and (FIFO) ``MessageGroupId``."""

    async def delete_batch(self, queue_url: str, entries: Sequence[tuple[str, str]]
                           ) -> list[EntryFailure]:
        """DeleteMessageBatch of up to 10 (id, receipt handle); returns the entries that failed."""

    async def change_visibility_batch(self, queue_url: str,
                                      entries: Sequence[tuple[str, str, int]]
                                      ) -> list[EntryFailure]:
        """ChangeMessageVisibilityBatch of up to 10 (id, receipt handle, timeout_s);
        returns the entries that failed."""

    async def send(self, queue_url: str, body: str, attributes: dict[str, dict] | None = None,
                   group_id: str | None = None, dedup_id: str | None = None,
                   delay_s: int = 0) -> str:
        """SendMessage; returns the new MessageId. ``group_id`` (FIFO) ignores ``delay_s``."""

    async def queue_attributes(self, queue_url: str, names: Sequence[str]) -> dict[str, str]:
        """GetQueueAttributes: the named attributes SQS has (absent ones are left out)."""

    async def queue_url(self, name: str, owner_account: str = "") -> str:
        """GetQueueUrl of a queue name, in ``owner_account`` if given."""

    def close(self) -> None:
        """Release the client's threads and connections (calls in flight are abandoned)."""
