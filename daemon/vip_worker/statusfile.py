"""The daemon's state, as one schema: what the master publishes, status.json, the health endpoint.

The master builds a ``DaemonStatus`` once per loop pass and publishes it (an attribute
swapped in one assignment). Readers in other threads (the health endpoint) take whatever
was published last and never call into the master's own state, which the loop mutates
meanwhile. Every ``STATUS_EVERY_S`` the master also writes it to ``<runtime_dir>/status.json``,
which ``vip-worker status`` reads (``read``). Keys: docs/status-and-dlq.md.

No imports beyond the standard library: the master loads this module.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any

FILENAME = "status.json"


@dataclass(frozen=True)
class DaemonStatus:
    """One published state of the daemon. Frozen, its pollers and totals read-only views:
    a reader can keep it as long as it likes.

    :param pid: the master's pid.
    :param written_at: Unix time it was built.
    :param stopping: ``None``, or the stop mode (``"graceful"``, ``"fast"``).
    :param stop_reason: while stopping, why: ``"signal"``, or the spot watcher's notice
        (``"spot_interruption"``, ``"asg_termination"``); else ``None``.
    :param ready: READY=1 was announced for the current generation.
    :param pollers: one read-only mapping per poller, by index (keys: ``POLLER_KEYS``).
    :param totals: counters since the master started, exited pollers included.
    :param rate_per_min: messages handled per minute over ``rate_window_s``, or ``None``.
    """

    pid: int
    written_at: float
    uptime_s: float
    target: int
    generation: int
    stopping: str | None
    ready: bool
    pollers: tuple[Mapping[str, Any], ...]
    totals: Mapping[str, float]
    rate_per_min: float | None
    rate_window_s: int
    queues: tuple[str, ...]
    stop_reason: str | None = None

    @classmethod
    def build(cls, pollers: list[dict[str, Any]], totals: dict[str, float],
              queues: list[str], **values: Any) -> DaemonStatus:
        """A status from fresh containers (the caller must not keep or change them)."""
        return cls(pollers=tuple(MappingProxyType(p) for p in pollers),
                   totals=MappingProxyType(totals), queues=tuple(queues), **values)

    def as_dict(self) -> dict[str, Any]:
        """A plain, JSON-ready copy (status.json's document)."""
        # Not dataclasses.asdict: it deep-copies, and a mappingproxy cannot be copied.
        doc = {f.name: getattr(self, f.name) for f in fields(self)}
        doc.update(pollers=[dict(p) for p in self.pollers], totals=dict(self.totals),
                   queues=list(self.queues))
        return doc


# What ``vip-worker status`` copies from the file (``written_at`` is its age instead).
KEYS = tuple(f.name for f in fields(DaemonStatus) if f.name != "written_at")
# Each of ``pollers``: these, then one key per counter (``liveness.COUNTERS``).
POLLER_KEYS = ("index", "pid", "generation", "ready", "stopping", "in_flight", "uptime_s",
               "last_tick_s")


def path(run_dir: str) -> str:
    return os.path.join(run_dir, FILENAME)


def write(run_dir: str, status: DaemonStatus) -> str:
    """Write ``status`` to ``<run_dir>/status.json`` atomically; its path. Raises OSError."""
    target = path(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    tmp = f"{target}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(status.as_dict(), fh)
    os.replace(tmp, target)  # readers never see a half-written file
    return target


def read(run_dir: str) -> dict[str, Any]:
    """The document at ``<run_dir>/status.json``. Raises ``FileNotFoundError``, another
    ``OSError``, or ``ValueError`` for a file that is not such a document (``written_at``
    is then a float)."""
    with open(path(run_dir), encoding="utf-8") as fh:
        doc = json.load(fh)
    try:
        doc["written_at"] = float(doc["written_at"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"no valid written_at ({exc!r})") from None
    return doc
