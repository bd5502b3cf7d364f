"""Per-minute buckets: the dashboard's history, written by the daemons, never recomputed
from the jobs.

A bucket is one (``series``, ``labels``, ``minute``) with counters (``incs``, summed) and
gauges (``maxes``, the largest value seen in the minute). The daemon writes the ``queue``
series (labels ``{queue}``; incs succeeded, failed, retried, dead_lettered, deferred,
duration_s_sum, duration_n; maxes visible, inflight, delayed, dlq); the ``usage`` series
(labels ``{type, user, model}``) holds token and cost counts.

``bump_minutes(rows)`` is ONE store write per call, however many rows: SQLite, one
transaction of upserts; MongoDB, one ``bulk_write`` of upserts with ``$inc`` / ``$max``.
Buckets are kept ``metrics_retention_h`` hours: a TTL index on ``minute`` in MongoDB;
in SQLite a prune inside ``bump_minutes``' own transaction, at most once per
``PRUNE_EVERY_S`` per store, of buckets older than the newest bumped minute minus the
retention (so no wall clock is read here).

``SqliteBuckets`` and ``MongoBuckets`` are mixed into ``SqliteStore`` and ``MongoStore``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from vip_worker.store.ledger import utc

DEFAULT_RETENTION_H = 48.0
PRUNE_EVERY_S = 300.0
SQLITE_TABLE = "metrics_minutes"
MONGO_COLLECTION = "metrics_minutes"
RESERVED = ("series", "labels", "minute")


def floor_minute(value: datetime) -> datetime:
    return utc(value).replace(second=0, microsecond=0)


@dataclass(frozen=True)
class MinuteRow:
    """What to add to one bucket: ``incs`` are summed, ``maxes`` kept at their largest.

    :raises ValueError: a field named twice, a reserved name, or a value that is not a
        finite number (the field is named).
    """

    series: str
    labels: dict[str, str]
    minute: datetime
    incs: dict[str, float]
    maxes: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "minute", floor_minute(self.minute))
        if not self.series:
            raise ValueError("MinuteRow.series must not be empty")
        both = set(self.incs) & set(self.maxes)
        if both:
            raise ValueError(f"MinuteRow field {sorted(both)[0]!r} is both an inc and a max")
        for name, value in (*self.incs.items(), *self.maxes.items()):
            if name in RESERVED or "." in name or name.startswith("$"):
                raise ValueError(f"MinuteRow field {name!r} is not a usable name")
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise ValueError(f"MinuteRow field {name!r} is not a finite number: {value!r}")

    @property
    def labels_key(self) -> str:
        """The labels as one canonical string (sorted keys): part of the bucket's key."""
        return labels_key(self.labels)


def labels_key(labels: Mapping[str, str]) -> str:
    return json.dumps({str(k): str(v) for k, v in labels.items()}, sort_keys=True,
                      separators=(",", ":"))


def merged(values: dict[str, float], row: MinuteRow) -> dict[str, float]:
    """``values`` (one bucket's) after ``row``: incs added, maxes raised."""
    out = dict(values)
    for name, value in row.incs.items():
        out[name] = out.get(name, 0) + value
    for name, value in row.maxes.items():
        out[name] = value if name not in out else max(out[name], value)
    return out


def matches(labels: Mapping[str, str], wanted: Mapping[str, str] | None) -> bool:
    return not wanted or all(labels.get(k) == str(v) for k, v in wanted.items())


class SqliteBuckets:
    """The buckets on ``SqliteStore`` (its ``_write``, ``_read``); the table is created
    with the schema (``sqlite_schema.create_metrics_tables``)."""

    metrics_retention_h: float = DEFAULT_RETENTION_H
    _pruned_at: float | None = None  # monotonic time of this store's last prune

    def bump_minutes(self, rows: Sequence[MinuteRow]) -> None:
        from vip_worker.store.sqlite_schema import iso

        if not rows:
            return
        with self._write() as conn:  # one transaction: one write per call
            for row in rows:
                key = (row.series, iso(row.minute), row.labels_key)
                found = conn.execute(
                    f"SELECT vals FROM {SQLITE_TABLE} WHERE series = ? AND minute = ? "
                    "AND labels = ?", key).fetchone()
                values = merged(json.loads(found[0]) if found else {}, row)
                conn.execute(
                    f"INSERT INTO {SQLITE_TABLE} (series, minute, labels, vals) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT(series, minute, labels) "
                    "DO UPDATE SET vals = excluded.vals", (*key, json.dumps(values)))
            if self._prune_due():
                cutoff = max(row.minute for row in rows) - timedelta(
                    hours=self.metrics_retention_h)
                conn.execute(f"DELETE FROM {SQLITE_TABLE} WHERE minute < ?", (iso(cutoff),))
                self._prune_daemons(conn, cutoff)

    def _prune_due(self) -> bool:
        now = time.monotonic()
        if self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY_S:
            return False
        self._pruned_at = now
        return True

    def _prune_daemons(self, conn: Any, cutoff: datetime) -> None:
        """Fleet records not seen since ``cutoff`` go with the buckets (store/fleet.py)."""
        from vip_worker.store.fleet import SQLITE_TABLE as DAEMONS
        from vip_worker.store.sqlite_schema import iso

        conn.execute(f"DELETE FROM {DAEMONS} WHERE last_seen < ?", (iso(cutoff),))

    def read_minutes(self, series: str, since: datetime, until: datetime | None = None,
                     labels: dict | None = None) -> list[dict[str, Any]]:
        """Buckets of ``series`` from ``since`` (inclusive) to ``until`` (exclusive),
        oldest first, each ``{"series", "labels", "minute", **values}``; with
        ``labels``, only buckets carrying those labels (a subset match)."""
        from vip_worker.store.sqlite_schema import iso

        where, args = "series = ? AND minute >= ?", [series, iso(floor_minute(since))]
        if until is not None:
            where, args = where + " AND minute < ?", [*args, iso(utc(until))]
        for name, value in (labels or {}).items():
            where += " AND json_extract(labels, ?) = ?"
            args += [f'$."{name}"', str(value)]
        with self._read() as conn:
            found = conn.execute(f"SELECT minute, labels, vals FROM {SQLITE_TABLE} "
                                 f"WHERE {where} ORDER BY minute, labels", args).fetchall()
        return [{**json.loads(vals), "series": series, "labels": json.loads(text),
                 "minute": utc(datetime.fromisoformat(minute.replace("Z", "+00:00")))}
                for minute, text, vals in found]


class MongoBuckets:
    """The buckets on ``MongoStore`` (its ``_db``, ``_errors``): one document per bucket,
    ``{series, labels, labelsKey, minute, v: {values}}``, unique on (series, minute,
    labelsKey), with a TTL index on ``minute``."""

    metrics_retention_h: float = DEFAULT_RETENTION_H

    def _index_buckets(self) -> None:
        import pymongo

        minutes = self._db[MONGO_COLLECTION]
        minutes.create_index([("series", pymongo.ASCENDING), ("minute", pymongo.ASCENDING),
                              ("labelsKey", pymongo.ASCENDING)], unique=True)
        ttl_index(self._db, MONGO_COLLECTION, "minute", self.metrics_retention_h)

    def bump_minutes(self, rows: Sequence[MinuteRow]) -> None:
        from pymongo import UpdateOne
        from pymongo.errors import BulkWriteError

        if not rows:
            return
        ops = []
        for row in rows:
            update: dict[str, Any] = {"$setOnInsert": {"labels": dict(row.labels)}}
            if row.incs:
                update["$inc"] = {f"v.{k}": v for k, v in row.incs.items()}
            if row.maxes:
                update["$max"] = {f"v.{k}": v for k, v in row.maxes.items()}
            ops.append(UpdateOne({"series": row.series, "minute": row.minute,
                                  "labelsKey": row.labels_key}, update, upsert=True))
        with self._errors():
            try:
                self._db[MONGO_COLLECTION].bulk_write(ops, ordered=True)
            except BulkWriteError as exc:
                # Two daemons' upserts raced to insert one bucket: ordered, so every op
                # before the failed one was applied and none after; retry from it once
                # (the insert it lost is now an update).
                errors = exc.details.get("writeErrors") or []
                if not errors or errors[0].get("code") != 11000:
                    raise
                self._db[MONGO_COLLECTION].bulk_write(ops[errors[0]["index"]:], ordered=True)

    def read_minutes(self, series: str, since: datetime, until: datetime | None = None,
                     labels: dict | None = None) -> list[dict[str, Any]]:
        from vip_worker.store.mongo_codec import aware

        window: dict[str, Any] = {"$gte": floor_minute(since)}
        if until is not None:
            window["$lt"] = utc(until)
        query: dict[str, Any] = {"series": series, "minute": window}
        for name, value in (labels or {}).items():
            query[f"labels.{name}"] = str(value)
        with self._errors():
            docs = list(self._db[MONGO_COLLECTION].find(query).sort(
                [("minute", 1), ("labelsKey", 1)]))
        return [{**doc.get("v", {}), "series": series, "labels": doc.get("labels", {}),
                 "minute": aware(doc["minute"])} for doc in docs]


def ttl_index(db: Any, collection: str, field_name: str, hours: float) -> None:
    """A TTL index on ``field_name`` expiring after ``hours``; an existing one with
    another expiry is changed in place (``collMod``)."""
    from pymongo.errors import OperationFailure

    seconds = max(60, int(hours * 3600))
    try:
        db[collection].create_index(field_name, expireAfterSeconds=seconds)
    except OperationFailure as exc:
        if exc.code not in (85, 86):  # IndexOptionsConflict, IndexKeySpecsConflict
            raise
        db.command("collMod", collection,
                   index={"keyPattern": {field_name: 1}, "expireAfterSeconds": seconds})
