"""The ledger: after a chaos run, account for every job, with evidence.

Every job the producer created must end in exactly one of two states:

- ``completed``, with exactly one content document (in its type's collection);
- ``failed``, with a reason (``error``), no content, and its message in the
  dead-letter queue carrying the daemon's reason attributes.

Anything else is a problem, named per job with the evidence to chase it (the
job document, its DLQ copies, its log lines): ``lost`` (queued, no message left
anywhere), ``stuck`` (processing at the end), ``duplicates`` (more than one
content document), ``failed_without_dlq``, ``dead_lettered_not_failed`` (the
message is in the DLQ but the job still shows queued/processing: the app would
show it pending for ever), ``unexpected`` (an outcome the job's payload rules
out, e.g. an invalid mode that completed). The source queues must be empty.

The checks are pure functions of what the run collected, so a test can feed them
a crafted case.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

COLLECTIONS = {"articles": "generated_content", "images": "media"}
REASON_ATTRIBUTE = "vip_error"
EVIDENCE_LINES = 20
GAVE_UP = "gave up after"
# Reasons a job that could have completed may legitimately fail under chaos: its transient
# failures spent max_attempts (the consumer's or the lifeline's "...; gave up after N"), or
# its pollers were killed max_attempts times while running it (the claim's EXHAUSTED).
SPENT = (GAVE_UP, "poller died")


@dataclass
class JobSpec:
    """One job the producer created, and the final state its payload allows.

    :ivar expect: ``completed``, ``failed`` or ``either`` (``either``: a fault that
        legitimately fails a job, e.g. a garbage answer, may have hit it).
    """

    job_id: str
    type: str
    payload: dict[str, Any]
    expect: str = "completed"
    why: str = ""


@dataclass
class JobState:
    """What the run found for one job at the end."""

    doc: dict[str, Any] | None
    content: dict[str, int]  # collection -> documents
    dlq: list[dict[str, Any]]  # DLQ messages of this job (attributes flattened)


@dataclass
class Report:
    jobs: int = 0
    completed: int = 0
    failed: int = 0
    gave_up: int = 0  # failed after exhausting max_attempts on transient errors
    lost: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    failed_without_dlq: list[str] = field(default_factory=list)
    dead_lettered_not_failed: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    completed_with_dlq_copy: list[str] = field(default_factory=list)
    # DLQ copies without the daemon's reason: moved there by SQS's redrive policy.
    redriven_by_sqs: int = 0
    unknown_dlq_messages: int = 0
    queues_left: dict[str, int] = field(default_factory=dict)
    generation_calls: dict[str, float] = field(default_factory=dict)
    completions_per_job: dict[str, int] = field(default_factory=dict)
    faults: dict[str, Any] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    recovery: dict[str, Any] = field(default_factory=dict)  # after a poller's SIGKILL
    store_writes: dict[str, float] = field(default_factory=dict)  # job documents, per job
    # Successful generation calls per completed job; "saved_by_checkpoints": retries that
    # saved a checkpointed result instead of calling again (job.checkpoint_used).
    generations_per_completed_job: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0
    evidence: dict[str, str] = field(default_factory=dict)

    @property
    def problem_jobs(self) -> list[str]:
        return sorted({*self.lost, *self.stuck, *self.duplicates, *self.failed_without_dlq,
                       *self.dead_lettered_not_failed, *self.unexpected})

    @property
    def ok(self) -> bool:
        return not self.problem_jobs and not any(self.queues_left.values())

    def summary(self) -> dict[str, Any]:
        """The figures, JSON-serializable (the soak prints this as its last line)."""
        return {
            "jobs": self.jobs, "completed": self.completed, "failed": self.failed,
            "gave_up": self.gave_up, "lost": len(self.lost), "stuck": len(self.stuck),
            "duplicates": len(self.duplicates),
            "failed_without_dlq": len(self.failed_without_dlq),
            "dead_lettered_not_failed": len(self.dead_lettered_not_failed),
            "unexpected": len(self.unexpected),
            "completed_with_dlq_copy": len(self.completed_with_dlq_copy),
            "redriven_by_sqs": self.redriven_by_sqs,
            "unknown_dlq_messages": self.unknown_dlq_messages,
            "queues_left": self.queues_left,
            "generation_calls_per_job": self.generation_calls,
            "completions_per_job": self.completions_per_job,
            "faults": self.faults, "events": self.events,
            "recovery_after_kill": self.recovery, "store_writes_per_job": self.store_writes,
            "generations_per_completed_job": self.generations_per_completed_job,
            "duration_s": round(self.duration_s, 1),
            "problem_jobs": self.problem_jobs,
        }

    def explain(self) -> str:
        """Every problem with its evidence, for an assertion message or a report."""
        lines = [json.dumps(self.summary(), default=str)]
        for job_id in self.problem_jobs:
            lines.append(f"--- job {job_id}\n{self.evidence.get(job_id, '(no evidence)')}")
        return "\n".join(lines)


def dlq_entry(message: dict[str, Any]) -> dict[str, Any]:
    """A DLQ message as the ledger keeps it: jobId, MessageId, reason attributes."""
    try:
        body = json.loads(message.get("Body", ""))
    except ValueError:
        body = None
    attrs = {name: value.get("StringValue")
             for name, value in message.get("MessageAttributes", {}).items()}
    return {"job_id": body.get("jobId") if isinstance(body, dict) else None,
            "message_id": message.get("MessageId"), "attributes": attrs}


def log_lines_of(records: list[dict[str, Any]], job_id: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get("job_id") == job_id]


def short(record: dict[str, Any]) -> str:
    keep = ("time", "event", "pid", "receive_count", "message_id", "error", "error_class",
            "error_code", "send_error_code", "delete_failed", "reason")
    return json.dumps({k: record[k] for k in keep if record.get(k) is not None},
                      ensure_ascii=False)[:400]


def evidence(spec: JobSpec, state: JobState, records: list[dict[str, Any]]) -> str:
    doc = state.doc or {}
    head = {k: doc.get(k) for k in ("status", "attempts", "error", "message", "messageId",
                                    "leaseUntil", "updatedAt")}
    lines = [f"type={spec.type} expect={spec.expect} {spec.why}".strip(),
             f"job: {json.dumps(head, default=str)}",
             f"content: {state.content}",
             f"dlq: {json.dumps(state.dlq, default=str)[:600]}"]
    lines += [short(r) for r in log_lines_of(records, spec.job_id)[-EVIDENCE_LINES:]]
    return "\n".join(lines)


def classify(spec: JobSpec, state: JobState, report: Report) -> None:
    """Put one job in its bucket(s) of ``report``."""
    doc = state.doc
    status = doc.get("status") if doc else None
    content_total = sum(state.content.values())
    own = state.content.get(COLLECTIONS.get(spec.type, ""), 0)
    reasoned = [d for d in state.dlq if d["attributes"].get(REASON_ATTRIBUTE)]
    report.redriven_by_sqs += len(state.dlq) - len(reasoned)
    problem = None
    if status == "completed":
        report.completed += 1
        if content_total > 1 or own != 1:
            problem = "duplicates" if content_total > 1 else "lost"
        elif state.dlq:
            report.completed_with_dlq_copy.append(spec.job_id)
        if spec.expect == "failed":
            report.unexpected.append(spec.job_id)
    elif status == "failed":
        report.failed += 1
        spent = any(why in (doc.get("error") or "") for why in SPENT)
        if spent:
            report.gave_up += 1
        if not doc.get("error") or not reasoned:
            problem = "failed_without_dlq"
        elif content_total:
            problem = "duplicates"
        if spec.expect == "completed" and not spent:
            report.unexpected.append(spec.job_id)
    elif state.dlq:
        problem = "dead_lettered_not_failed"
    elif status == "processing":
        problem = "stuck"
    else:
        problem = "lost"  # queued (or never created) and no message left
    if problem:
        getattr(report, problem).append(spec.job_id)


def spread(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {"mean": round(statistics.fmean(ordered), 2),
            "p50": ordered[len(ordered) // 2],
            "p95": ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))],
            "max": ordered[-1], "total": sum(ordered)}


EVENTS_COUNTED = ("poller.died", "poller.spawned", "poller.recycling", "poller.crashed",
                  "message.succeeded", "message.retried", "message.dead_lettered",
                  "message.dead_letter_failed", "message.delete_failed", "message.released",
                  "heartbeat.failed", "heartbeat.entry_failed", "receive.failed",
                  "job.completed", "job.already_completed", "consumer.task_crashed",
                  "batch.failed", "queue.dlq_lookup_failed", "poller.blocked",
                  "message.resent", "message.resend_failed", "job.rescued", "job.lease_lost",
                  "job.settle_failed", "job.lease_renew_failed", "lifeline.send_failed",
                  "lifeline.store_unavailable", "job.checkpoint_used", "job.checkpoint_retry",
                  "job.checkpoint_failed", "job.checkpoint_refused", "job.checkpoint_spilled",
                  "job.progress_failed", "ledger.progress_failed")


def generations(specs: list[JobSpec], states: dict[str, JobState],
                records: list[dict[str, Any]], generation_calls: dict[str, int],
                generation_faults: dict[str, int] | None, events: dict[str, int]
                ) -> dict[str, Any]:
    """Per completed job: the generation calls that succeeded as the daemon saw them (its
    ``job.generated`` lines), and the calls the service answered with content (its calls
    less the faults injected: a poller killed while its call ran never read that answer).

    ``after_checkpoint``: jobs generated again after a generation of theirs was
    checkpointed (``job.checkpointed``): the checkpoints' promise, which must be empty.
    ``not_exactly_one``: jobs generated more than once for any reason (a poller killed, or
    a store outage, between the answer and its checkpoint): a figure, explained by
    ``uncheckpointed`` (generations never checkpointed).
    """
    faulted = generation_faults or {}
    done = [s.job_id for s in specs if (states[s.job_id].doc or {}).get("status") == "completed"]
    wanted = {"job.generated", "job.checkpointed"}
    timeline: dict[str, list[tuple[str, str]]] = {}
    for r in records:
        if r.get("event") in wanted:
            timeline.setdefault(r.get("job_id"), []).append((r.get("time") or "", r["event"]))
    generated = Counter(r.get("job_id") for r in records if r.get("event") == "job.generated")
    checkpointed = Counter(r.get("job_id") for r in records
                           if r.get("event") == "job.checkpointed")
    again = []
    for job in done:
        seen_checkpoint = False
        for _, event in sorted(timeline.get(job, [])):
            if event == "job.checkpointed":
                seen_checkpoint = True
            elif seen_checkpoint:  # job.generated after a checkpoint of the job
                again.append(job)
                break
    return {**spread([generated[job] for job in done]),
            "not_exactly_one": sorted(job for job in done if generated[job] != 1),
            "uncheckpointed": sum(max(0, generated[j] - checkpointed[j]) for j in done),
            "after_checkpoint": sorted(again),
            "answered_by_service": spread([generation_calls.get(job, 0) - faulted.get(job, 0)
                                           for job in done]),
            "saved_by_checkpoints": events.get("job.checkpoint_used", 0)}


def build_report(specs: list[JobSpec], states: dict[str, JobState],
                 records: list[dict[str, Any]], *, queues_left: dict[str, int],
                 generation_calls: dict[str, int], faults: dict[str, Any],
                 unknown_dlq_messages: int = 0, duration_s: float = 0.0,
                 generation_faults: dict[str, int] | None = None) -> Report:
    """Account for every job of ``specs``; see the module docstring."""
    report = Report(jobs=len(specs), queues_left=dict(queues_left), faults=faults,
                    unknown_dlq_messages=unknown_dlq_messages, duration_s=duration_s)
    for spec in specs:
        classify(spec, states[spec.job_id], report)
    counted = Counter(r.get("event") for r in records)
    report.events = {name: counted[name] for name in EVENTS_COUNTED if counted[name]}
    retried = Counter(r.get("error_class") for r in records
                      if r.get("event") == "message.retried")
    report.events.update({f"retried:{name}": n for name, n in sorted(retried.items())})
    rescued = Counter(r.get("outcome") for r in records if r.get("event") == "job.rescued")
    report.events.update({f"rescued:{name}": n for name, n in sorted(rescued.items())})
    completions = Counter(r["job_id"] for r in records if r.get("event") == "job.completed")
    report.completions_per_job = {
        "jobs_completed_more_than_once": sum(1 for n in completions.values() if n > 1),
        "max": max(completions.values(), default=0)}
    report.generation_calls = spread([generation_calls.get(s.job_id, 0) for s in specs])
    report.generations_per_completed_job = generations(specs, states, records,
                                                       generation_calls, generation_faults,
                                                       report.events)
    for job_id in report.problem_jobs:
        spec = next(s for s in specs if s.job_id == job_id)
        report.evidence[job_id] = evidence(spec, states[job_id], records)
    return report
