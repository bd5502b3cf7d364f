"""What a plugin is handed: the poller's context and each message's context."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any


@dataclass
class PollerContext:
    """One per poller process.

    :ivar index: this poller's slot number in the master (0..processes-1).
    :ivar settings: the daemon's effective :class:`vip_worker.config.Settings`.
    :ivar resources: a dict shared with every handler of this poller, for
        clients opened in ``vip_worker_poller_start``.
    """

    index: int
    settings: Any
    resources: dict[str, Any] = field(default_factory=dict)

    def plugin_settings(self, plugin: str) -> dict[str, Any]:
        """The ``[plugins.<plugin>]`` table of the config file (empty if none)."""
        return self.settings.plugin_settings.get(plugin, {})


@dataclass
class HandlerContext:
    """One per message, the second argument of every handler.

    :ivar message_id: SQS's MessageId.
    :ivar queue: the name of the queue the message came from.
    :ivar receive_count: SQS's ApproximateReceiveCount (1 on the first delivery).
    :ivar max_attempts: the queue's ``max_attempts``; when ``receive_count``
        reaches it, a transient failure dead-letters the message.
    :ivar log: a logger whose lines carry the message's fields.
    :ivar resources: the poller's shared resources (see ``PollerContext``).
    :ivar plugin_settings: the handling plugin's ``[plugins.<name>]`` table.
    """

    message_id: str
    queue: str
    receive_count: int
    max_attempts: int
    log: logging.LoggerAdapter
    resources: dict[str, Any]
    plugin_settings: dict[str, Any]

    @property
    def is_last_attempt(self) -> bool:
        """True when a transient failure now would dead-letter the message."""
        return self.receive_count >= self.max_attempts
