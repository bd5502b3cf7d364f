"""Helpers for plugin authors' own tests.

Unit level, no SQS, no threads::

    from vip_worker.testing import make_message, run_handler

    def test_refuses_an_empty_topic():
        outcome = run_handler(handle_article, make_message("articles", {"topic": ""}))
        assert outcome.dead_lettered and "topic" in outcome.reason

``run_handler`` classifies the handler's outcome exactly as the daemon does
(succeeded / retried with which delay / dead-lettered with which reason) and
records the progress it reported, against an in-memory job store.

Through a real poller against a local SQS endpoint on 127.0.0.1 (moto's
server): the ``vip_worker_poller`` pytest fixture (see ``pytest_plugin.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from vip_worker.message import Envelope
from vip_worker.outcomes import Action, decide, reason_of
from vip_worker.plugins.context import STORE, HandlerContext, PollerContext
from vip_worker.testing.store import MemoryStore

__all__ = ["LogRecords", "MemoryStore", "Outcome", "capture_logs", "make_message", "run_handler",
           "write_config"]


def make_message(type: str, payload: dict[str, Any] | None = None, *,
                 job_id: str | None = None, user_id: str = "test-user") -> Envelope:
    """A message in the app's message format, as a handler receives it."""
    return Envelope(job_id=job_id or uuid.uuid4().hex[:24], user_id=user_id, type=type,
                    timestamp=datetime.now(UTC).isoformat(timespec="milliseconds"),
                    payload=payload if payload is not None else {})


@dataclass
class Outcome:
    """What the daemon would do with the message after this run of the handler."""

    kind: str  # "succeeded" | "retried" | "dead_lettered" | "cancelled" | "deferred" (KINDS)
    error: BaseException | None = None
    # when retried or deferred: the visibility delay before the next try
    delay_s: float | None = None
    progress: list[tuple[int, str]] = field(default_factory=list)
    store: MemoryStore | None = None

    @property
    def succeeded(self) -> bool:
        return self.kind == "succeeded"

    @property
    def retried(self) -> bool:
        return self.kind == "retried"

    @property
    def dead_lettered(self) -> bool:
        return self.kind == "dead_lettered"

    @property
    def cancelled(self) -> bool:
        """The handler raised ``JobCancelled``: the message deleted, the job cancelled."""
        return self.kind == "cancelled"

    @property
    def deferred(self) -> bool:
        """The handler raised ``Deferred``: run later, no attempt spent."""
        return self.kind == "deferred"

    @property
    def reason(self) -> str:
        """The reason the daemon would record (``ErrorClass: text``), or ''."""
        return reason_of(self.error) if self.error is not None else ""


# How the daemon's decision reads in an Outcome.
KINDS = {Action.ACK: "succeeded", Action.RETRY: "retried", Action.DEAD_LETTER: "dead_lettered",
         Action.CANCEL: "cancelled", Action.DEFER: "deferred"}


class _RecordingStore:
    """Wraps a store to record progress calls in order."""

    def __init__(self, store, progress: list[tuple[int, str]]) -> None:
        self._store = store
        self._progress = progress

    def progress(self, job_id, percent, message, now, **guard):
        self._progress.append((percent, message))
        return self._store.progress(job_id, percent, message, now, **guard)

    def __getattr__(self, name):
        return getattr(self._store, name)


def run_handler(handler, message: Envelope, *, plugin_settings: dict | None = None,
                plugin: str = "test", settings: Any = None, resources: dict | None = None,
                store=None, receive_count: int = 1, max_attempts: int = 5,
                message_id: str = "msg-1", max_job_time_s: float = 1800.0,
                retry_backoff_base_s: float = 10.0,
                retry_backoff_max_s: float = 900.0) -> Outcome:
    """Run one handler (``def`` or ``async def``) once, as a poller would; return the outcome.

    :param plugin_settings: the handler's plugin's settings, seen as ``ctx.plugin_settings``
        and as ``ctx.poller.plugin_settings(plugin)``.
    :param plugin: the name of the handler's plugin (its logger is
        ``vip_worker_plugins.<plugin>``).
    :param store: a job store (default: a fresh :class:`MemoryStore`) seen as ``ctx.store``.
    :param receive_count: SQS's ApproximateReceiveCount for this delivery.
    """
    store = store if store is not None else MemoryStore()
    progress: list[tuple[int, str]] = []
    values = plugin_settings if plugin_settings is not None else {}
    # The same dict both ways, as in a poller (registry.plugin_settings[plugin]).
    poller = PollerContext(index=0, settings=settings, resources=resources or {},
                           plugin_values={plugin: values})
    recording = _RecordingStore(store, progress)
    poller.provide(STORE, lambda: recording)
    fields = {"message_id": message_id, "job_id": message.job_id, "type": message.type,
              "queue": "test", "receive_count": receive_count}
    ctx = HandlerContext.for_message(
        poller, plugin=plugin, message_id=message_id, job_id=message.job_id, queue="test",
        receive_count=receive_count, max_attempts=max_attempts, max_job_time_s=max_job_time_s,
        log_fields=fields, plugin_settings=values)
    error = None
    try:
        result = handler(message, ctx)
        if inspect.isawaitable(result):
            asyncio.run(_await(result))
    except Exception as exc:  # noqa: BLE001 - classified as the consumer does
        error = exc
    # The backoff's upper bound: the jitter is the daemon's, not the plugin's concern.
    decision = decide(error, receive_count, max_attempts, retry_backoff_base_s,
                      retry_backoff_max_s, rand=lambda: 1.0)
    return Outcome(KINDS[decision.action], decision.error, delay_s=decision.delay_s,
                   progress=progress, store=store)


async def _await(awaitable):
    return await awaitable


def write_config(path, queues: dict[str, dict], *, plugins: dict[str, dict] | None = None,
                 type_limits: dict[str, int] | None = None, **worker: Any):
    """Write a vip-worker TOML config for a test: worker settings, then the tables.

    ``write_config(tmp_path / "vip-worker.toml", {"work": {"url": url}}, processes=1,
    plugins={"shop": {"api_key": "x"}})``. Values are TOML-quoted; returns ``path``.
    """
    lines = [f"{key} = {_toml(value)}" for key, value in worker.items()]
    if type_limits:
        lines.append("[type_limits]")
        lines += [f"{key} = {_toml(value)}" for key, value in type_limits.items()]
    for section, tables in (("queues", queues), ("plugins", plugins or {})):
        for name, table in tables.items():
            lines.append(f"[{section}.{name}]")
            lines += [f"{key} = {_toml(value)}" for key, value in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))


class LogRecords(logging.Handler):
    """Keeps every log record it is handed; see ``capture_logs``."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def events(self, name: str) -> list[logging.LogRecord]:
        """The records of event ``name``."""
        return [r for r in self.records if r.getMessage() == name]

    def names(self) -> list[str]:
        """Every record's event name, in order."""
        return [r.getMessage() for r in self.records]


@contextlib.contextmanager
def capture_logs(name: str = "vip_worker", level: int | None = logging.DEBUG):
    """Collect logger ``name``'s records in a ``LogRecords`` while the block runs.

    The handler sits on the logger itself, so it sees the records whether or not
    the logger propagates (the daemon's logging turns propagation off). ``level``
    is set for the block and restored after (None: left as it is).
    """
    logger = logging.getLogger(name)
    handler = LogRecords()
    old_level = logger.level
    logger.addHandler(handler)
    if level is not None:
        logger.setLevel(level)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
