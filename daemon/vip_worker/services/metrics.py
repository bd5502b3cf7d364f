"""CloudWatch Embedded Metric Format (EMF) lines, written into the JSON log.

The CloudWatch agent (or Lambda/ECS log drivers) turns a log line carrying an
``_aws`` object into metrics, so no PutMetricData call, credential or extra
network hop is needed. One line per queue per ``metrics_interval_s`` and poller:

    MessagesSucceeded, MessagesRetried, MessagesDeadLettered, MessagesDeferred (Count),
    ProcessingTime (Milliseconds, up to 100 sampled values),
    JobsRescued (Count: orphaned jobs of the queue that this poller's lifeline re-sent or
    failed; only poller 0 runs the lifeline, the others report 0),
and from poller 0 only (one per host):  QueueDepth (Count, the queue's visible messages),
and one line without a queue: BacklogPerInstance (Count: the visible and in-flight
messages of the daemon's queues divided by the live daemons of the fleet registry, the
autoscaling signal; ``backlog_fields``).

The same counts go to the job store's per-minute buckets (the dashboard's history), in
ONE store call per poller per interval (``MinuteWriter``), never one per message: the
``queue`` series, labels ``{queue}``, incs ``succeeded``, ``failed`` (every attempt that
failed: retried or dead-lettered), ``retried``, ``dead_lettered``, ``deferred``,
``duration_s_sum``, ``duration_n``; poller 0 adds the maxes ``visible``, ``inflight``,
``delayed``, ``dlq`` from the queue attributes it reads for QueueDepth. The store is
reached duck-typed (this package does not import ``vip_worker.store`` at import time).

Usage (``UsageMetrics``, made and filled by the content pipeline in the poller's resource
``USAGE``; ``usage_flush`` drains it with the queue counts): one line per job type and
model with usage in the interval, event ``metrics.usage``, dimensions ``[Type, Model]``:
TokensIn, TokensOut, Images, Jobs (Count) and Cost (None: the money of the ``prices``
table). It also keeps the same sums per (type, user, model, minute) for the store's
per-minute "usage" buckets, taken by ``take_minutes`` and written as the ``usage`` series
(``usage_rows``) in the same ``MinuteWriter`` call as the queue buckets.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("vip_worker.metrics")

SAMPLES_MAX = 100
OUTCOME_METRICS = {"succeeded": "MessagesSucceeded", "retried": "MessagesRetried",
                   "dead_lettered": "MessagesDeadLettered", "deferred": "MessagesDeferred",
                   "rescued": "JobsRescued"}


class QueueMetrics:
    """Counts of one queue since the last emitted line."""

    __slots__ = ("succeeded", "retried", "dead_lettered", "rescued", "deferred", "times_ms",
                 "duration_s_sum", "duration_n")

    def __init__(self) -> None:
        self.succeeded = 0
        self.retried = 0
        self.dead_lettered = 0
        self.rescued = 0
        self.deferred = 0  # message.deferred outcomes (a quota or a pause put them off)
        self.times_ms: list[float] = []
        self.duration_s_sum = 0.0  # every handled message's, not only the samples
        self.duration_n = 0

    def record(self, outcome: str, duration_s: float | None) -> None:
        """Count one ``outcome`` (``succeeded``, ``retried``, ``dead_lettered``,
        ``rescued``, ``deferred``) and its handler's duration."""
        setattr(self, outcome, getattr(self, outcome) + 1)
        if duration_s is not None:
            self.duration_s_sum += duration_s
            self.duration_n += 1
            if len(self.times_ms) < SAMPLES_MAX:
                self.times_ms.append(round(duration_s * 1000, 1))

    def empty(self) -> bool:
        return not (self.succeeded or self.retried or self.dead_lettered or self.rescued
                    or self.deferred)


def emf_fields(namespace: str, queue: str, counts: QueueMetrics | None,
               depth: int | None, now_ms: int | None = None) -> dict:
    """The fields of one EMF line (merged into a JSON log line by the caller)."""
    metrics: list[dict] = []
    fields: dict = {"Queue": queue}
    if counts is not None:
        for outcome, name in OUTCOME_METRICS.items():
            metrics.append({"Name": name, "Unit": "Count"})
            fields[name] = getattr(counts, outcome)
        if counts.times_ms:
            metrics.append({"Name": "ProcessingTime", "Unit": "Milliseconds"})
            fields["ProcessingTime"] = counts.times_ms
    if depth is not None:
        metrics.append({"Name": "QueueDepth", "Unit": "Count"})
        fields["QueueDepth"] = depth
    fields["aws_emf"] = {  # written as "_aws" by vip_worker.logconfig
        "Timestamp": now_ms if now_ms is not None else int(time.time() * 1000),
        "CloudWatchMetrics": [{"Namespace": namespace, "Dimensions": [["Queue"]],
                               "Metrics": metrics}],
    }
    return fields


USAGE = "vip_worker.services.metrics.usage"  # the poller resource UsageMetrics is under
USAGE_METRICS = (("tokensIn", "TokensIn", "Count"), ("tokensOut", "TokensOut", "Count"),
                 ("images", "Images", "Count"), ("calls", "Jobs", "Count"),
                 ("cost", "Cost", "None"))


class UsageMetrics:
    """Usage of completed generations since the last drain; filled from handler threads.

    ``by_model``: (type, model) -> sums, for the EMF line; ``by_minute``: (type, user,
    model, minute) -> sums, for the per-minute buckets. Sums: tokensIn, tokensOut,
    images, calls, cost.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_model: dict[tuple[str, str], dict[str, float]] = {}
        self.by_minute: dict[tuple[str, str, str, datetime], dict[str, float]] = {}

    def record(self, type: str, user: str, usage: dict, now: datetime) -> None:
        model = str(usage.get("model") or "-")
        values = {"tokensIn": usage.get("tokensIn") or 0,
                  "tokensOut": usage.get("tokensOut") or 0,
                  "images": usage.get("images") or 0, "calls": 1,
                  "cost": usage.get("cost") or 0.0}
        minute = now.replace(second=0, microsecond=0)
        with self.lock:
            for table, key in ((self.by_model, (type, model)),
                               (self.by_minute, (type, user, model, minute))):
                sums = table.setdefault(key, dict.fromkeys(values, 0))
                for name, value in values.items():
                    sums[name] += value

    def drain_emf(self, namespace: str, now_ms: int | None = None) -> list[dict]:
        """The EMF lines' fields for the usage since the last drain (and start anew)."""
        with self.lock:
            taken, self.by_model = self.by_model, {}
        lines = []
        for (type, model), sums in sorted(taken.items()):
            fields: dict = {"Type": type, "Model": model}
            for key, name, _unit in USAGE_METRICS:
                fields[name] = round(sums[key], 6) if key == "cost" else int(sums[key])
            fields["aws_emf"] = {
                "Timestamp": now_ms if now_ms is not None else int(time.time() * 1000),
                "CloudWatchMetrics": [{
                    "Namespace": namespace, "Dimensions": [["Type", "Model"]],
                    "Metrics": [{"Name": name, "Unit": unit}
                                for _key, name, unit in USAGE_METRICS]}]}
            lines.append(fields)
        return lines

    def take_minutes(self) -> dict[tuple[str, str, str, datetime], dict[str, float]]:
        """The per-minute sums since the last take (and start anew)."""
        with self.lock:
            taken, self.by_minute = self.by_minute, {}
        return taken


def drain(per_queue: dict[str, QueueMetrics], names: Iterable[str]) -> dict[str, QueueMetrics]:
    """Take the counts collected so far and start new ones."""
    taken = {}
    for name in names:
        taken[name] = per_queue[name]
        per_queue[name] = QueueMetrics()
    return taken


# -- the dashboard's per-minute buckets (store/buckets.py) ------------------------------

# Queue attributes poller 0 reads once per interval: the bucket field each one feeds.
DEPTH_ATTRIBUTES = {"ApproximateNumberOfMessages": "visible",
                    "ApproximateNumberOfMessagesNotVisible": "inflight",
                    "ApproximateNumberOfMessagesDelayed": "delayed"}


def queue_values(counts: QueueMetrics) -> dict[str, float]:
    """A queue's incs for its minute bucket (the ``queue`` series)."""
    return {"succeeded": counts.succeeded, "failed": counts.retried + counts.dead_lettered,
            "retried": counts.retried, "dead_lettered": counts.dead_lettered,
            "deferred": counts.deferred, "duration_s_sum": round(counts.duration_s_sum, 6),
            "duration_n": counts.duration_n}


def minute_rows(taken: Mapping[str, QueueMetrics], depths: Mapping[str, Mapping[str, int]],
                minute: datetime | None = None) -> list[Any]:
    """The ``queue`` series' rows of one interval: each queue's counts (when any) and
    depth maxes (when read), in ``minute`` (default: now); ``MinuteRow`` s of
    ``vip_worker.store.buckets``."""
    from vip_worker.store.buckets import MinuteRow

    minute = minute or datetime.now(UTC)
    rows = []
    for name in sorted(set(taken) | set(depths)):
        counts = taken.get(name)
        incs = {} if counts is None or counts.empty() else queue_values(counts)
        maxes = dict(depths.get(name) or {})
        if incs or maxes:
            rows.append(MinuteRow("queue", {"queue": name}, minute, incs, maxes))
    return rows


USAGE_INCS = {"tokensIn": "tokens_in", "tokensOut": "tokens_out", "images": "images",
              "calls": "calls", "cost": "cost"}


def usage_rows(minutes: Mapping[tuple[str, str, str, datetime], Mapping[str, float]]
               ) -> list[Any]:
    """The ``usage`` series' rows (``UsageMetrics.take_minutes``): labels ``{type, user,
    model}``, incs ``tokens_in``, ``tokens_out``, ``images``, ``calls``, ``cost``."""
    from vip_worker.store.buckets import MinuteRow

    return [MinuteRow("usage", {"type": type, "user": user, "model": model}, minute,
                      {USAGE_INCS[key]: value for key, value in sums.items()})
            for (type, user, model, minute), sums in sorted(minutes.items())]


def usage_flush(context: Any, namespace: str) -> list[Any]:
    """Log the poller's usage since the last flush as EMF lines (``metrics.usage``) and
    return it as bucket rows (none before the pipeline recorded any)."""
    usage = context.resources.get(USAGE) if context is not None else None
    if usage is None:
        return []
    for fields in usage.drain_emf(namespace):
        log.info("metrics.usage", extra=fields)
    return usage_rows(usage.take_minutes())


class MinuteWriter:
    """Writes a poller's buckets off the loop: one ``bump_minutes`` per interval, in a
    thread of its own. A store outage loses that interval's buckets (logged as
    ``metrics.store_failed``), never the poller; no store (``LookupError`` from the
    context): off, said once (``metrics.store_off``).

    :param store_of: returns the job store (the poller's ``store`` resource).
    """

    def __init__(self, store_of: Callable[[], Any]) -> None:
        self.store_of = store_of
        self.executor: ThreadPoolExecutor | None = None
        self.off = False
        self.pending: Future | None = None

    def write(self, rows: list[Any]) -> Future | None:
        """Start writing ``rows`` (one store call, in the writer's thread); its future, or
        None (nothing to do)."""
        if self.off or not rows:
            return None
        if self.executor is None:
            self.executor = ThreadPoolExecutor(1, thread_name_prefix="metrics")
        self.pending = self.executor.submit(self.bump, rows)
        return self.pending

    def bump(self, rows: list[Any]) -> None:
        try:
            self.store_of().bump_minutes(rows)
        except LookupError as exc:  # the context's "no resource 'store'"
            self.off = True
            log.info("metrics.store_off", extra={"error": str(exc)})
        except Exception as exc:  # noqa: BLE001 - an outage or a bug: the buckets wait
            log.warning("metrics.store_failed", extra={
                "rows": len(rows), "error": f"{type(exc).__name__}: {exc}"[:500]})

    async def finish(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) for the last write (the drain's last buckets),
        then close."""
        if self.pending is not None:
            await asyncio.wait([asyncio.wrap_future(self.pending)], timeout=timeout_s)
        self.close()

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=False)
            self.executor = None


async def read_depths(sqs: Any, queues: Iterable[Any], dlq_urls: Mapping[str, str | None]
                      ) -> dict[str, dict[str, int]]:
    """Each queue's visible, in-flight and delayed messages (one GetQueueAttributes) and
    its DLQ's visible ones (one more, when it has a DLQ); a queue that cannot be read is
    left out (``metrics.depth_failed``)."""
    from vip_worker.sqs.api import TRANSPORT_ERRORS, error_code

    depths: dict[str, dict[str, int]] = {}
    for queue in queues:
        try:
            attrs = await sqs.queue_attributes(queue.url, list(DEPTH_ATTRIBUTES))
            depth = {field: int(attrs.get(name, 0)) for name, field in DEPTH_ATTRIBUTES.items()}
            if dlq_url := dlq_urls.get(queue.name):
                dlq = await sqs.queue_attributes(dlq_url, ["ApproximateNumberOfMessages"])
                depth["dlq"] = int(dlq.get("ApproximateNumberOfMessages", 0))
            depths[queue.name] = depth
        except TRANSPORT_ERRORS as exc:
            log.warning("metrics.depth_failed", extra={
                "queue": queue.name, "error_code": error_code(exc)})
    return depths


def backlog_fields(namespace: str, depths: Mapping[str, Mapping[str, int]], live_daemons: int,
                   now_ms: int | None = None) -> dict:
    """The fields of the BacklogPerInstance EMF line (no Queue dimension: the fleet's):
    the visible and in-flight messages of ``depths``' queues over the live daemons (this
    one counted at least)."""
    backlog = sum(d.get("visible", 0) + d.get("inflight", 0) for d in depths.values())
    per_instance = backlog / max(1, live_daemons)
    return {"BacklogPerInstance": round(per_instance, 3), "Backlog": backlog,
            "LiveDaemons": live_daemons,
            "aws_emf": {"Timestamp": now_ms if now_ms is not None else int(time.time() * 1000),
                        "CloudWatchMetrics": [{"Namespace": namespace, "Dimensions": [[]],
                                               "Metrics": [{"Name": "BacklogPerInstance",
                                                            "Unit": "Count"}]}]}}
