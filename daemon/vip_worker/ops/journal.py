"""The manual redrive's journal: what a run moved, durable before the next SQS call relies on it.

Append-only JSON lines, fsynced. One line per state change of a DLQ message,
``{"id": <DLQ MessageId>, "state": ...}`` (the last line of an id wins)::

    (absent) -> sending -> sent -> deleted
                sending -> unsent          (SQS refused the entry; absent again)

and one header line ``{"run": {"budget": N, "started_at": T}}``: the number of
messages the DLQ held when the redrive began. A dashboard redrive of some messages adds
``"selection"``: ``{"ids": [...]}`` or ``{"reason": ..., "type": ...}`` (the filter), so
the run that continues it (``vip-worker dlq redrive``) moves those only. A redrive
that stops before it is done (Ctrl-C, an error, a failed entry, ``kill -9``) keeps the
header and every entry, ``deleted`` ones included, so the next run continues the same
redrive:
the same budget, and it still knows which messages it moved (so it never moves
again a copy that failed again). A finished redrive leaves no file.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from typing import Any

SENDING, SENT, UNSENT, DELETED = "sending", "sent", "unsent", "deleted"
PENDING = (SENDING, SENT)  # sent, or maybe sent, and still in the DLQ
MOVED = (SENDING, SENT, DELETED)  # maybe sent at least once by this redrive
RUN = "run"


class JournalBusy(Exception):
    """Another redrive holds the journal's lock."""


class Journal:
    """The journal of one DLQ's redrive; ``<path>.lock`` (``flock``, held until
    ``close()``) keeps two redrives of one DLQ apart.

    ``close()`` rewrites the file compacted: without the run and the ``deleted``
    entries once ``finish()`` was called (only ``pending()`` entries stay, and the
    file goes when there are none); with everything otherwise.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        self.lock_fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.lock_fd)
            raise JournalBusy(f"another redrive holds {path}.lock") from None
        try:
            self.run, self.entries = read_journal(path)
            self.fh = open(path, "a", encoding="utf-8")
            sync_dir(directory)
        except BaseException:
            os.close(self.lock_fd)
            raise
        self.finished = False
        # The DLQ copies a redriven message can come back as carry one of these ids.
        self.new_ids = {r["new_id"] for r in self.entries.values() if r.get("new_id")}

    def state(self, message_id: str) -> str | None:
        row = self.entries.get(message_id)
        return row["state"] if row else None

    def pending(self) -> dict[str, str]:
        return {i: r["state"] for i, r in self.entries.items() if r["state"] in PENDING}

    def count(self, *states: str) -> int:
        return sum(1 for r in self.entries.values() if r["state"] in states)

    def begin(self, budget: int, selection: dict[str, Any] | None = None) -> None:
        """Start a redrive of the ``budget`` messages the DLQ holds now (durable at once);
        ``selection``: only those messages (``ops.dlq.selector``)."""
        self.run = {"budget": budget, "started_at": round(time.time(), 3)}
        if selection:
            self.run["selection"] = selection
        self.append([{RUN: self.run}])

    def record(self, rows: list[dict[str, Any]]) -> None:
        """Append ``rows`` (each with ``id`` and ``state``) and fsync before returning."""
        if not rows:
            return
        now = round(time.time(), 3)
        for row in rows:
            row.setdefault("at", now)
            self.entries[row["id"]] = {**self.entries.get(row["id"], {}), **row}
            if row.get("new_id"):
                self.new_ids.add(row["new_id"])
        self.append(rows)

    def append(self, rows: list[dict[str, Any]]) -> None:
        self.fh.write("".join(json.dumps(row) + "\n" for row in rows))
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def finish(self) -> None:
        """The redrive is done: ``close()`` forgets the run and what it moved."""
        self.finished = True

    def close(self) -> None:
        self.fh.close()
        if self.finished or self.run is None:
            keep = [r for r in self.entries.values() if r["state"] in PENDING]
        else:
            keep = [{RUN: self.run}, *self.entries.values()]
        if keep:
            tmp = f"{self.path}.tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write("".join(json.dumps(r) + "\n" for r in keep))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        elif os.path.exists(self.path):
            os.unlink(self.path)
        sync_dir(os.path.dirname(os.path.abspath(self.path)))
        os.close(self.lock_fd)

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def read_journal(path: str) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]]]:
    """(the run's header or None, the entries by DLQ MessageId) of the file at ``path``."""
    run = None
    entries: dict[str, dict[str, Any]] = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    row = json.loads(line)
                    if RUN in row:
                        run = dict(row[RUN])
                        continue
                    entries[row["id"]] = {**entries.get(row["id"], {}), **row}
                except (ValueError, KeyError, TypeError):
                    continue  # a line torn by a crash mid-write: its state never became durable
    return run, entries


def sync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
