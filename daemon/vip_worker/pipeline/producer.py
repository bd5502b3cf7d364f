"""The producer: what the web app does, for Python apps (and ``vip-worker enqueue``).

It creates the job (``queued``) in the job store, then sends the message in the
app's exact message format (``jobId``, ``userId``, ``type``, ``timestamp``, ``payload``)
to the queue named after the type (``articles`` -> the ``articles`` queue).

The app's own fallback: when SQS is not configured for the type, the handler runs
inline in the caller's process and the log says so ("the system still works").

A message that cannot be sent raises ``SendFailed`` (``QueueNotFound`` when SQS says
the queue does not exist), naming the queue and its URL. When the message certainly
never reached SQS the job is marked ``failed`` with that reason, so no job waits
``queued`` for a message that does not exist (docs/pipeline.md, "When the send fails").

    from vip_worker.pipeline.producer import queue_article_generation, is_sqs_configured
    job_id = queue_article_generation(None, user_id, {"mode": "topic", "topic": "..."})
"""

from __future__ import annotations

import asyncio
import functools
import logging
from datetime import UTC, datetime
from typing import Any

from bson import ObjectId

from vip_worker import config
from vip_worker.message import Envelope
from vip_worker.plugins.context import HandlerContext, PollerContext
from vip_worker.plugins.hooks import call_hook
from vip_worker.store.factory import provide_store

log = logging.getLogger("vip_worker.pipeline.producer")
INLINE_TIME_S = 3600.0  # ctx.time_left_s of an inline run (nothing interrupts it)


def new_job_id() -> str:
    """A fresh id in the app's shape: a 24-hex MongoDB ObjectId string."""
    return str(ObjectId())


class NoHandler(LookupError):
    """An inline run was asked for a message type that no loaded plugin handles."""


class SendFailed(Exception):
    """The job's message could not be sent to its queue; ``str()`` says which and why.

    :ivar job_id: the job created for it.
    :ivar queue: the queue's name; ``url`` its URL.
    :ivar error_code: SQS's error code, else the exception's class name.
    :ivar job_status: ``"failed"``: the message certainly never reached SQS (SQS
        answered with an error, or no connection was made), and the job this call
        created is failed with the reason. ``"queued"``: it may have been sent (a
        timeout after the request left), or the job existed before this call; the job
        is left as it was.
    """

    def __init__(self, reason: str, *, job_id: str, queue: str, url: str, error_code: str,
                 job_status: str) -> None:
        super().__init__(reason)
        self.job_id = job_id
        self.queue = queue
        self.url = url
        self.error_code = error_code
        self.job_status = job_status


class QueueNotFound(SendFailed):
    """SQS says the type's queue does not exist: a setting names a queue that is not
    there (or it was deleted). Retrying will not help; ``vip-worker enqueue`` exits 78."""


class Producer:
    """Creates jobs and queues their messages; runs them inline when SQS is absent.

    :param settings: from ``config.load(require_queues=False)``.
    :param sqs_client: a blocking ``vip_worker.sqs.boto.SqsClient``, or an AWS SDK client
        (``vip_worker.sqs.boto.make_client``'s) to wrap in one; default: one made from the
        settings.
    """

    def __init__(self, settings, sqs_client=None) -> None:
        self.settings = settings
        self.sqs_client = sqs_client
        self.context = PollerContext(index=-1, settings=settings)
        provide_store(self.context)
        self.inline = None  # plugins loaded on the first inline run

    @property
    def store(self):
        return self.context.store

    def queue_for(self, message_type: str):
        for queue in self.settings.queues:
            if queue.name == message_type:
                return queue
        return None

    def is_sqs_configured(self, message_type: str = "articles") -> bool:
        return self.queue_for(message_type) is not None

    def enqueue(self, message_type: str, payload: dict[str, Any], *, user_id: str,
                job_id: str | None = None) -> str:
        """Create the job and queue (or run) it; return its jobId."""
        if not isinstance(payload, dict):
            raise TypeError("payload must be a dict")
        job_id = job_id or new_job_id()
        now = datetime.now(UTC)
        stamp = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        envelope = Envelope(job_id=job_id, user_id=user_id, type=message_type,
                            timestamp=stamp, payload=payload)
        queue = self.queue_for(message_type)
        if queue is None:
            self.inline_handler(message_type)  # NoHandler before any job is created
        created = self.store.create_job(job_id, user_id, message_type, payload, now,
                                        queue=queue.name if queue else None)
        if queue is None:
            log.warning("producer.inline", extra={
                "job_id": job_id, "type": message_type,
                "detail": f"no SQS queue configured for {message_type!r}: running the "
                          f"handler in this process"})
            self.run_inline(envelope)
            return job_id
        from vip_worker.sqs.api import TRANSPORT_ERRORS

        group, dedup = (user_id, job_id) if queue.fifo else (None, None)
        if not queue.fifo and getattr(self.settings, "fair_message_groups", False):
            group = user_id  # SQS fair queues: one user's backlog does not hold back others
        try:
            message_id = self.client().send(queue.url, envelope.to_body(), group_id=group,
                                            dedup_id=dedup)
        except TRANSPORT_ERRORS as exc:
            raise self.send_failed(job_id, message_type, queue, exc, created) from exc
        log.info("producer.queued", extra={"job_id": job_id, "type": message_type,
                                           "queue": queue.name, "message_id": message_id})
        return job_id

    def send_failed(self, job_id: str, message_type: str, queue, exc: BaseException,
                    created: bool) -> SendFailed:
        """The ``SendFailed`` to raise for ``exc``; first, when the message certainly
        never reached SQS, the job this call created goes ``queued`` -> ``failed`` with
        the reason (nothing will ever claim it). A job that existed before is left as
        it was: an earlier message of it may be running."""
        from vip_worker.sqs.api import error_code
        from vip_worker.sqs.queues import is_missing_queue, never_sent

        code = error_code(exc)
        if is_missing_queue(exc):
            kind, reason = QueueNotFound, f"queue {queue.name!r} does not exist ({queue.url})"
        else:
            kind, reason = SendFailed, (f"sending to queue {queue.name!r} ({queue.url}) "
                                        f"failed: {code}: {str(exc)[:300]}")
        status = "failed" if created and never_sent(exc) else "queued"
        if status == "failed":
            # queued -> failed: the job's message does not exist, nothing will claim it.
            self.store.fail(job_id, reason, datetime.now(UTC))
        log.error("producer.send_failed", extra={
            "job_id": job_id, "type": message_type, "queue": queue.name, "url": queue.url,
            "error_code": code, "error": reason, "job_status": status})
        return kind(reason, job_id=job_id, queue=queue.name, url=queue.url, error_code=code,
                    job_status=status)

    def client(self):
        from vip_worker.sqs.boto import SqsClient, connect

        if self.sqs_client is None:
            self.sqs_client = connect(self.settings.region, self.settings.sqs_endpoint_url)
        elif not isinstance(self.sqs_client, SqsClient):
            self.sqs_client = SqsClient(self.sqs_client)  # an SDK client, as callers gave
        return self.sqs_client

    def inline_handler(self, message_type: str):
        """The type's handler for an inline run; loads and starts the plugins the first time.

        :raises PluginError, ConfigError: a plugin or its settings are wrong.
        :raises HookFailed: a plugin's ``vip_worker_poller_start`` raised.
        :raises NoHandler: no loaded plugin handles ``message_type``.
        """
        if self.inline is None:
            from vip_worker.plugins import load_plugins

            loaded = load_plugins(self.settings)
            self.context.plugin_values = loaded.registry.plugin_settings
            asyncio.run(call_hook(loaded.manager.hook.vip_worker_poller_start,
                                  context=self.context))
            # Only once started: close() runs the stop hooks, as a poller does.
            self.inline = loaded
        handler = self.inline.registry.get(message_type)
        if handler is None:
            raise NoHandler(f"no plugin handles type {message_type!r}")
        return handler

    def run_inline(self, envelope: Envelope) -> None:
        """Run the type's handler here, once, as a poller would (errors are the caller's)."""
        handler = self.inline_handler(envelope.type)
        fields = {"message_id": None, "job_id": envelope.job_id, "type": envelope.type,
                  "queue": None, "receive_count": 1}
        ctx = HandlerContext.for_message(
            self.context, plugin=handler.plugin, message_id=f"inline-{envelope.job_id}",
            job_id=envelope.job_id, queue="", receive_count=1, max_attempts=1,
            max_job_time_s=INLINE_TIME_S, log_fields=fields,
            plugin_settings=self.inline.registry.plugin_settings.get(handler.plugin, {}))
        if handler.is_async:
            asyncio.run(handler.fn(envelope, ctx))
        else:
            handler.fn(envelope, ctx)

    def close(self) -> None:
        """Run the plugins' stop hooks (after an inline run), then close the job store.

        A stop hook that raises is logged (``producer.stop_hook_failed``), not raised.
        """
        from vip_worker.errors import HookFailed

        try:
            if self.inline is not None:
                asyncio.run(call_hook(self.inline.manager.hook.vip_worker_poller_stop,
                                      context=self.context))
        except HookFailed as exc:
            log.error("producer.stop_hook_failed", extra={"error": str(exc)})
        finally:
            self.inline = None
            self.context.close()


@functools.cache
def default_producer() -> Producer:
    """A producer configured from the environment (and VIP_WORKER_CONFIG), made once."""
    return Producer(config.load(require_queues=False))


def is_sqs_configured(message_type: str = "articles") -> bool:
    return default_producer().is_sqs_configured(message_type)


def enqueue(message_type: str, payload: dict[str, Any], *, user_id: str,
            job_id: str | None = None) -> str:
    return default_producer().enqueue(message_type, payload, user_id=user_id, job_id=job_id)


def queue_article_generation(job_id: str | None, user_id: str, params: dict[str, Any]) -> str:
    """The app's ``queueArticleGeneration(jobId, userId, params)``; returns the jobId."""
    return enqueue("articles", params, user_id=user_id, job_id=job_id)


def queue_image_generation(job_id: str | None, user_id: str, params: dict[str, Any]) -> str:
    """The app's ``queueImageGeneration(jobId, userId, params)``; returns the jobId."""
    return enqueue("images", params, user_id=user_id, job_id=job_id)
