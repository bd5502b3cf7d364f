"""CloudWatch Embedded Metric Format (EMF) lines, written into the JSON log.

The CloudWatch agent (or Lambda/ECS log drivers) turns a log line carrying an
``_aws`` object into metrics, so no PutMetricData call, credential or extra
network hop is needed. One line per queue per ``metrics_interval_s`` and poller:

    MessagesSucceeded, MessagesRetried, MessagesDeadLettered, MessagesDeferred (Count),
    ProcessingTime (Milliseconds, up to 100 sampled values),
    JobsRescued (Count: orphaned jobs of the queue that this poller's lifeline re-sent or
    failed; only poller 0 runs the lifeline, the others report 0),
and from poller 0 only (one per host):  QueueDepth (Count, the queue's visible messages).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

SAMPLES_MAX = 100
OUTCOME_METRICS = {"succeeded": "MessagesSucceeded", "retried": "MessagesRetried",
                   "dead_lettered": "MessagesDeadLettered", "deferred": "MessagesDeferred",
                   "rescued": "JobsRescued"}


class QueueMetrics:
    """Counts of one queue since the last emitted line."""

    __slots__ = ("succeeded", "retried", "dead_lettered", "deferred", "rescued", "times_ms")

    def __init__(self) -> None:
        self.succeeded = 0
        self.retried = 0
        self.dead_lettered = 0
        self.deferred = 0
        self.rescued = 0
        self.times_ms: list[float] = []

    def record(self, outcome: str, duration_s: float | None) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)
        if duration_s is not None and len(self.times_ms) < SAMPLES_MAX:
            self.times_ms.append(round(duration_s * 1000, 1))

    def empty(self) -> bool:
        return not (self.succeeded or self.retried or self.dead_lettered or self.deferred
                    or self.rescued)


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


def drain(per_queue: dict[str, QueueMetrics], names: Iterable[str]) -> dict[str, QueueMetrics]:
    """Take the counts collected so far and start new ones."""
    taken = {}
    for name in names:
        taken[name] = per_queue[name]
        per_queue[name] = QueueMetrics()
    return taken
