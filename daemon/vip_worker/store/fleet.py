"""The fleet registry: one record per daemon, upserted once per report interval.

A record (``report_daemon``'s ``record``, camelCase like the jobs)::

    {"daemonId", "hostname", "pid", "version", "pollers": int,
     "inflight": [int per poller], "startedAt", "lastSeen",
     "state": running|draining|spot_notice|stopped, "intervalS": float}

``lastSeen`` is the report's ``now``. A daemon that stops reporting is *lost*: its
``lastSeen`` is older than ``LOST_AFTER_INTERVALS`` x ``intervalS`` (``is_lost``, the one
place the rule is written). A clean shutdown writes ``stopped``, which is never lost. A
daemon is *live* when it is neither lost nor stopped (``live``: the one count of live
daemons, for the ``BacklogPerInstance`` metric and the dashboard's fleet page alike).

Records go away with the buckets' retention (``metrics_retention_h``): a TTL index on
``lastSeen`` in MongoDB, ``SqliteBuckets``' prune in SQLite.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from vip_worker.store.ledger import utc

STATES = ("running", "draining", "spot_notice", "stopped")
LOST_AFTER_INTERVALS = 3
DEFAULT_INTERVAL_S = 10.0
SQLITE_TABLE = "daemons"
MONGO_COLLECTION = "daemons"


def is_lost(record: Mapping[str, Any], now: datetime) -> bool:
    """Whether a daemon stopped reporting: ``lastSeen`` older than 3 x ``intervalS``. A
    ``stopped`` daemon said goodbye: it is stopped, not lost."""
    if record.get("state") == "stopped":
        return False
    last_seen = record.get("lastSeen")
    if last_seen is None:
        return True
    interval_s = float(record.get("intervalS") or DEFAULT_INTERVAL_S)
    return utc(now) - utc(last_seen) > timedelta(seconds=LOST_AFTER_INTERVALS * interval_s)


def live(records: Iterable[Mapping[str, Any]], now: datetime) -> list[Mapping[str, Any]]:
    """The live daemons among ``records``, in their order: neither lost (``is_lost``) nor
    ``stopped``. Draining and spot-noticed daemons still count: they hold work in flight."""
    return [r for r in records if r.get("state") != "stopped" and not is_lost(r, now)]


def checked(daemon_id: str, record: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The record as stored: ``daemonId`` and ``lastSeen`` = ``now`` set.

    :raises ValueError: an empty ``daemon_id`` or an unknown ``state`` (named).
    """
    if not daemon_id:
        raise ValueError("report_daemon: daemon_id must not be empty")
    state = record.get("state", "running")
    if state not in STATES:
        raise ValueError(f"report_daemon: state {state!r} is not one of {', '.join(STATES)}")
    out = {k: v for k, v in record.items() if k != "_id"}
    out.update(daemonId=daemon_id, state=state, lastSeen=utc(now))
    if isinstance(out.get("startedAt"), datetime):
        out["startedAt"] = utc(out["startedAt"])
    return out


class SqliteFleet:
    """The registry on ``SqliteStore``: table ``daemons`` (``id``, ``last_seen``, ``doc``)."""

    def report_daemon(self, daemon_id: str, record: dict[str, Any], now: datetime) -> None:
        """Upsert the daemon's record (one write)."""
        from vip_worker.store.sqlite_schema import encode, iso

        doc = checked(daemon_id, record, now)
        with self._write() as conn:
            conn.execute(f"INSERT INTO {SQLITE_TABLE} (id, last_seen, doc) VALUES (?, ?, ?) "
                         "ON CONFLICT(id) DO UPDATE SET last_seen = excluded.last_seen, "
                         "doc = excluded.doc", (daemon_id, iso(doc["lastSeen"]), encode(doc)))

    def daemons(self) -> list[dict[str, Any]]:
        """Every daemon's record, by hostname then pid."""
        from vip_worker.store.sqlite_schema import decode

        with self._read() as conn:
            rows = conn.execute(f"SELECT doc FROM {SQLITE_TABLE}").fetchall()
        return sorted((decode(row[0]) for row in rows), key=order)


class MongoFleet:
    """The registry on ``MongoStore``: collection ``daemons``, ``_id`` = daemonId."""

    def _index_fleet(self) -> None:
        from vip_worker.store.buckets import ttl_index

        ttl_index(self._db, MONGO_COLLECTION, "lastSeen", self.metrics_retention_h)

    def report_daemon(self, daemon_id: str, record: dict[str, Any], now: datetime) -> None:
        doc = checked(daemon_id, record, now)
        with self._errors():
            self._db[MONGO_COLLECTION].replace_one({"_id": daemon_id}, doc, upsert=True)

    def daemons(self) -> list[dict[str, Any]]:
        from vip_worker.store.mongo_codec import aware

        with self._errors():
            docs = list(self._db[MONGO_COLLECTION].find({}, {"_id": 0}))
        return sorted((aware(doc) for doc in docs), key=order)


def order(record: Mapping[str, Any]) -> tuple[str, int, str]:
    return (str(record.get("hostname") or ""), int(record.get("pid") or 0),
            str(record.get("daemonId")))
