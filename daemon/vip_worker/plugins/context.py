"""What a plugin is handed: the poller's context and each message's context."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("vip_worker.plugins.context")

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
    _store: Any = None
    _store_lock: threading.Lock = field(default_factory=threading.Lock)

    def plugin_settings(self, plugin: str) -> dict[str, Any]:
        """A plugin's resolved settings (its declared defaults, the config file's
        ``[plugins.<plugin>]`` table, the environment)."""
        return self.plugin_values.get(plugin, {})

    @property
    def store(self):
        """The job store (MongoDB or the embedded SQLite), opened on first use in this process."""
        with self._store_lock:
            if self._store is None:
                from vip_worker.store.factory import open_store

                self._store = open_store(self.settings)
            return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


@dataclass
class HandlerContext:
    """One per message, the second argument of every handler.

    :ivar message_id: SQS's MessageId.
    :ivar job_id: the envelope's jobId.
    :ivar queue: the name of the queue the message came from.
    :ivar receive_count: SQS's ApproximateReceiveCount (1 on the first delivery).
    :ivar max_attempts: the queue's ``max_attempts``; when ``receive_count``
        reaches it, a transient failure dead-letters the message.
    :ivar deadline: monotonic time when the queue's ``max_job_time_s`` runs out.
    :ivar log: a logger whose lines carry the message's fields.
    :ivar resources: the poller's shared resources (see ``PollerContext``).
    :ivar plugin_settings: the handling plugin's ``[plugins.<name>]`` table.
    :ivar poller: the poller's context (``settings``, ``store``).
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

    @property
    def is_last_attempt(self) -> bool:
        """True when a transient failure now would dead-letter the message."""
        return self.receive_count >= self.max_attempts

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

    def progress(self, percent: int, message: str) -> None:
        """Record the job's progress (0-100) and a human message, as the app shows it.

        Also logged (``job.progress``): the store keeps only the latest step, and a step
        followed at once by the next one (80 "Saving content...") is otherwise never seen.
        """
        self.store.progress(self.job_id, percent, message, datetime.now(UTC))
        # vip-worker's line, not the plugin's: with the message's fields, on our logger.
        fields = dict(getattr(self.log, "extra", None) or {})
        log.info("job.progress", extra={**fields, "progress": int(percent), "step": message})
