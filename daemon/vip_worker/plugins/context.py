"""What a plugin is handed: the poller's context and each message's context.

The poller's context holds the resources shared by a poller's handlers: a plain
dict (``resources``) that start hooks fill, and named resources opened on first
use (``provide`` / ``resource``). The job store is one of those: the spine never
opens it itself, the store package provides it (``vip_worker.store.factory.provide_store``)
and ``ctx.store`` reads it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from vip_worker.errors import JobCancelled

log = logging.getLogger("vip_worker.plugins.context")

# The name the job store is provided under.
STORE = "store"
# The name the quota governor is provided under (vip_worker.pipeline.quota.provide_quota).
QUOTA = "quota"
# ``drop(job_id)``, provided by the ledger: forget the job's pending streamed progress
# (``ctx.progress`` writes a later step itself, which that older value must not follow).
PROGRESS_DROP = "vip_worker.ledger.progress_drop"
# A permit's lease past the job's time left (the call may end a little after it).
PERMIT_MARGIN_S = 30.0


class FreePermit:
    """``ctx.quota``'s permit where no governor is provided (a plugin's own tests): no
    limit, nothing recorded."""

    def used(self, tokens: int | None) -> None:
        """The call's real usage (ignored here)."""

    def __enter__(self) -> FreePermit:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None


class MessageLogger(logging.LoggerAdapter):
    """A plugin's logger whose lines carry the message's fields, merged with the call's."""

    def process(self, msg, kwargs):
        kwargs["extra"] = {**self.extra, **kwargs.get("extra", {})}
        return msg, kwargs


@dataclass(frozen=True, slots=True)
class Provider:
    """How to open a named resource on first use, and how to close it."""

    open: Callable[[], Any]
    close: Callable[[Any], None] | None = None


@dataclass
class PollerContext:
    """One per poller process (or per inline producer run).

    :ivar index: this poller's slot number in the master (0..processes-1).
    :ivar settings: the daemon's effective :class:`vip_worker.config.Settings`.
    :ivar resources: a dict shared with every handler of this poller, for
        clients opened in ``vip_worker_poller_start``.
    """

    index: int
    settings: Any
    resources: dict[str, Any] = field(default_factory=dict)
    plugin_values: dict[str, dict[str, Any]] = field(default_factory=dict)
    _providers: dict[str, Provider] = field(default_factory=dict)
    # name -> (the resource, the provider that opened it), in the order they were opened.
    _opened: dict[str, tuple[Any, Provider]] = field(default_factory=dict)
    # Guards the two dicts only, never held during an open(): a slow or failing open of
    # one resource (a store that is down) must not block lookups of the others.
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # One lock per name, held during that name's open(): handlers in threads asking for
    # it at once open it once.
    _opening: dict[str, threading.Lock] = field(default_factory=dict)

    def plugin_settings(self, plugin: str) -> dict[str, Any]:
        """A plugin's resolved settings (its declared defaults, the config file's
        ``[plugins.<plugin>]`` table, the environment)."""
        return self.plugin_values.get(plugin, {})

    def provide(self, name: str, open: Callable[[], Any],
                close: Callable[[Any], None] | None = None) -> None:
        """Register a resource opened on first use in this process by ``open()`` and
        closed by ``close(resource)`` when the poller stops (after the stop hooks).

        A second registration of a name replaces the first (until it is opened).
        """
        with self._lock:
            self._providers[name] = Provider(open, close)

    def resource(self, name: str) -> Any:
        """The named resource, opened on first use.

        :raises LookupError: nothing provides ``name``.
        """
        with self._lock:
            if name in self._opened:
                return self._opened[name][0]
            if name not in self._providers:
                raise LookupError(f"no resource {name!r} is provided in this process")
            opening = self._opening.setdefault(name, threading.Lock())
        with opening:
            with self._lock:
                if name in self._opened:  # another thread opened it while this one waited
                    return self._opened[name][0]
                provider = self._providers[name]
            resource = provider.open()
            with self._lock:
                self._opened[name] = (resource, provider)
            return resource

    def provides(self, name: str) -> bool:
        """Whether a resource ``name`` is provided (opened or not) in this process."""
        with self._lock:
            return name in self._providers or name in self._opened

    @property
    def store(self):
        """The job store (MongoDB or the embedded SQLite), opened on first use in this process."""
        return self.resource(STORE)

    def close(self) -> None:
        """Close the opened resources, the last opened first, each with the provider
        that opened it. A close that raises is logged (``resource.close_failed``) and
        the others are still closed: one broken client must not leave the store open."""
        with self._lock:
            opened, self._opened = self._opened, {}
        for name in reversed(list(opened)):
            resource, provider = opened[name]
            if provider.close is None:
                continue
            try:
                provider.close(resource)
            except Exception as exc:  # noqa: BLE001 - logged; the other resources still close
                log.error("resource.close_failed", extra={
                    "resource": name, "error_class": type(exc).__name__, "error": str(exc)[:300]})


@dataclass
class HandlerContext:
    """One per message, the second argument of every handler.

    :ivar message_id: SQS's MessageId.
    :ivar job_id: the envelope's jobId.
    :ivar queue: the name of the queue the message came from.
    :ivar receive_count: SQS's ApproximateReceiveCount (1 on the first delivery).
    :ivar max_attempts: the queue's ``max_attempts``; when ``attempt`` reaches it, a
        transient failure dead-letters the message.
    :ivar attempt: this run's attempt: the job's ``attempts`` in the ledger when the
        daemon claimed the job, else ``receive_count``.
    :ivar delivery: this receive's delivery token when the daemon claimed the job (the
        claim's holder), else None.
    :ivar deadline: monotonic time when the queue's ``max_job_time_s`` runs out.
    :ivar log: a logger whose lines carry the message's fields.
    :ivar resources: the poller's shared resources (see ``PollerContext``).
    :ivar plugin_settings: the handling plugin's ``[plugins.<name>]`` table.
    :ivar poller: the poller's context (``settings``, ``store``).
    :ivar cancel_event: set when the job's cancellation was asked for (the daemon sets it
        within one heartbeat interval); read it as ``cancelled`` or ``raise_if_cancelled()``.
    :ivar user_id: the envelope's userId ('' when unknown): ``quota`` counts it.
    :ivar checkpoints: a read-only mapping of the job's checkpoints (``checkpoint``),
        those saved by earlier attempts loaded with the claim, and this attempt's own.
    """

    message_id: str
    job_id: str
    queue: str
    receive_count: int
    max_attempts: int
    deadline: float
    log: logging.LoggerAdapter
    resources: dict[str, Any]
    plugin_settings: dict[str, Any]
    poller: PollerContext
    attempt: int = 0
    delivery: str | None = None
    cancel_event: threading.Event = field(default_factory=threading.Event)
    user_id: str = ""
    _checkpoints: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.attempt:
            self.attempt = self.receive_count

    @property
    def checkpoints(self) -> Mapping[str, Any]:
        """The job's checkpoints by name, read-only (see ``checkpoint``)."""
        return MappingProxyType(self._checkpoints)

    def load_checkpoints(self, job: Mapping[str, Any] | None) -> None:
        """Take the checkpoints of a job document a claim returned (``run_job``'s own)."""
        self._checkpoints = dict((job or {}).get("checkpoints") or {})

    def checkpoint(self, name: str, value: Any) -> bool:
        """Save a small JSON ``value`` on the job as ``checkpoints.<name>``, so a later
        attempt finds it in ``checkpoints`` and need not redo the step that made it.
        True when stored; False when this delivery no longer holds the job (nothing is
        written: the holder's checkpoints are not ours to change).

        :raises CheckpointError: a name that is not ``[A-Za-z0-9_-]{1,64}``, a value that
            is not JSON or is larger than the store's limit (256 KiB); the message names it.
        """
        stored = self.store.checkpoint(self.job_id, name, value, datetime.now(UTC),
                                       delivery=self.delivery)
        if stored:
            self._checkpoints[name] = value
        return stored

    @property
    def is_last_attempt(self) -> bool:
        """True when a transient failure now would dead-letter the message."""
        return self.attempt >= self.max_attempts

    @property
    def cancelled(self) -> bool:
        """True once the job's cancellation was asked for: a blocking handler stops at its
        next step (``raise_if_cancelled``), or is abandoned after ``cancel_grace_s``."""
        return self.cancel_event.is_set()

    def raise_if_cancelled(self) -> None:
        """Stop here if the job's cancellation was asked for.

        :raises JobCancelled: it was; the message is deleted, the job ends ``cancelled``.
        """
        if self.cancel_event.is_set():
            raise JobCancelled(f"job {self.job_id} was cancelled")

    @property
    def time_left_s(self) -> float:
        """Seconds until the job's maximum time runs out."""
        return max(0.0, self.deadline - time.monotonic())

    @property
    def settings(self):
        return self.poller.settings

    @property
    def store(self):
        """The job store of this poller (see ``vip_worker.store``)."""
        return self.poller.store

    @classmethod
    def for_message(cls, poller: PollerContext, *, plugin: str, message_id: str, job_id: str,
                    queue: str, receive_count: int, max_attempts: int, max_job_time_s: float,
                    log_fields: dict[str, Any], started: float | None = None,
                    plugin_settings: dict[str, Any] | None = None,
                    logger: logging.Logger | None = None, attempt: int | None = None,
                    delivery: str | None = None, user_id: str = "",
                    checkpoints: Mapping[str, Any] | None = None) -> HandlerContext:
        """The context of one handler call (the consumer, ``run_handler`` and the
        producer's inline run all build it here).

        :param plugin: the handler's plugin: its settings and its logger
            (``vip_worker_plugins.<plugin>``) by default.
        :param log_fields: the message's fields, on every line of ``ctx.log``.
        :param started: monotonic time the handler starts (default: now);
            ``deadline`` is ``max_job_time_s`` after it.
        :param plugin_settings: default ``poller.plugin_settings(plugin)``.
        :param logger: the plugin's logger, when the caller keeps it.
        :param attempt: the ledger's attempt (default: ``receive_count``).
        :param delivery: the delivery token of the daemon's claim, if it claimed the job.
        :param user_id: the envelope's userId (the quota's per-user cap and fairness).
        :param checkpoints: the job's checkpoints as that claim returned them.
        """
        if started is None:
            started = time.monotonic()
        if plugin_settings is None:
            plugin_settings = poller.plugin_settings(plugin)
        if logger is None:
            logger = logging.getLogger(f"vip_worker_plugins.{plugin}")
        return cls(message_id=message_id, job_id=job_id, queue=queue,
                   receive_count=receive_count, max_attempts=max_attempts,
                   deadline=started + max_job_time_s, log=MessageLogger(logger, log_fields),
                   resources=poller.resources, plugin_settings=plugin_settings, poller=poller,
                   attempt=attempt or receive_count, delivery=delivery, user_id=user_id or "",
                   _checkpoints=dict(checkpoints or {}))

    def quota(self, provider: str = "generation", *, tokens: int = 0):
        """A permit to call ``provider`` now, shared with every poller of the fleet (the
        ``quotas`` setting; ``vip_worker.pipeline.quota``). Use it as a context manager
        around the call; ``permit.used(n)`` records the tokens really used::

            with ctx.quota("generation", tokens=1200) as permit:
                result = call_the_service()
                permit.used(result["usage"]["total_tokens"])

        :param tokens: the call's estimated tokens (for ``tpm``).
        :raises Deferred: not now (budget spent, provider paused, breaker open, the user's
            cap): the message comes back when the budget refills, no attempt spent.
        """
        if not self.poller.provides(QUOTA):
            return FreePermit()
        return self.poller.resource(QUOTA).permit(
            provider, tokens=tokens, user=self.user_id, job_id=self.job_id,
            lease_s=self.time_left_s + PERMIT_MARGIN_S)

    def progress(self, percent: int, message: str) -> None:
        """Record the job's progress (0-100) and a human message, as the app shows it.

        Also logged (``job.progress``): the store keeps only the latest step, and a step
        followed at once by the next one (80 "Saving content...") is otherwise never seen.
        The ledger's pending streamed progress of the job is dropped first: written
        after this, it would move the progress back.
        """
        drop = self.resources.get(PROGRESS_DROP)
        if drop is not None:
            drop(self.job_id)
        if self.delivery is None:
            self.store.progress(self.job_id, percent, message, datetime.now(UTC))
        else:  # only while this delivery holds the claim
            self.store.progress(self.job_id, percent, message, datetime.now(UTC),
                                delivery=self.delivery)
        # vip-worker's line, not the plugin's: with the message's fields, on our logger.
        fields = dict(getattr(self.log, "extra", None) or {})
        log.info("job.progress", extra={**fields, "progress": int(percent), "step": message})
