"""CloudWatch Embedded Metric Format (EMF) lines, written into the JSON log.

The CloudWatch agent (or Lambda/ECS log drivers) turns a log line carrying an
``_aws`` object into metrics, so no PutMetricData call, credential or extra
network hop is needed. One line per queue per ``metrics_interval_s`` and poller:

    MessagesSucceeded, MessagesRetried, MessagesDeadLettered (Count),
    ProcessingTime (Milliseconds, up to 100 sampled values),
    JobsRescued (Count: orphaned jobs of the queue that this poller's lifeline re-sent or
    failed; only poller 0 runs the lifeline, the others report 0),
and from poller 0 only (one per host):  QueueDepth (Count, the queue's visible messages).

Usage (``UsageMetrics``, filled by the content pipeline through the poller's resource
``USAGE``): one line per job type and model with usage in the interval, event
``metrics.usage``, dimensions ``[Type, Model]``: TokensIn, TokensOut, Images, Jobs (Count)
and Cost (None: the money of the ``prices`` table). It also keeps the same sums per
(type, user, model, minute) for the store's per-minute "usage" buckets, taken by
``take_minutes`` (one store write per flush).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from datetime import datetime

SAMPLES_MAX = 100
OUTCOME_METRICS = {"succeeded": "MessagesSucceeded", "retried": "MessagesRetried",
                   "dead_lettered": "MessagesDeadLettered", "rescued": "JobsRescued"}


class QueueMetrics:
    """Counts of one queue since the last emitted line."""

    __slots__ = ("succeeded", "retried", "dead_lettered", "rescued", "times_ms")

    def __init__(self) -> None:
        self.succeeded = 0
        self.retried = 0
        self.dead_lettered = 0
        self.rescued = 0
        self.times_ms: list[float] = []

    def record(self, outcome: str, duration_s: float | None) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)
        if duration_s is not None and len(self.times_ms) < SAMPLES_MAX:
            self.times_ms.append(round(duration_s * 1000, 1))

    def empty(self) -> bool:
        return not (self.succeeded or self.retried or self.dead_lettered or self.rescued)


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
