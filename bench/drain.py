"""Scenarios 1, 2 and 7: drain throughput and CPU per message, the bare loop, scale-out.

Every consumer is measured the same way (``measure``): start it on a fresh, empty queue,
wait until it is ready (long polls parked), push ``warmup`` messages through it, then
sample the CPU of its whole process tree and the endpoint's, start a paced producer for
``count`` more messages (``sent - consumed <= backlog``, so queue depth stays bounded),
and stop the clock when the consumer has handled them all. Throughput is ``count`` over
that time; CPU per message is the tree's user+sys over ``count``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench import procs, sqsutil
from bench.daemonproc import BenchDaemon
from bench.endpoint import base_env

SAMPLE_EVERY_S = 0.1


class Consumer:
    """What ``measure`` needs of a consumer: a process tree and a handled count."""

    name = "?"
    settings = ""
    sent: sqsutil.Sent | None = None  # set by measure(): what the harness has queued
    sqs = None

    def start(self, url: str, workdir: Path) -> None:
        raise NotImplementedError

    def wait_ready(self) -> None:
        raise NotImplementedError

    def consumed(self) -> int:
        raise NotImplementedError

    def roots(self) -> list[int]:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class DaemonConsumer(Consumer):
    def __init__(self, endpoint_url: str, processes: int, message_type: str = "noop",
                 keep_ids: bool = False, label: str = "", **settings) -> None:
        self.endpoint_url = endpoint_url
        self.processes = processes
        self.message_type = message_type
        self.keep_ids = keep_ids
        self.extra = settings
        self.name = label or f"vip-worker p={processes}"
        self.settings = (f"processes={processes}, concurrency={settings.get('concurrency', 10)}"
                         f", wait_time_s=20, JSON log at INFO, {message_type} handler")
        track = (settings.get("queue_settings") or {}).get("track_jobs", True)
        self.settings += f", track_jobs={'true' if track else 'false'}"
        self.daemon: BenchDaemon | None = None
        self.lock = threading.Lock()
        self.store_counts: dict = {}  # the job store's rows after the drain (stop())

    def start(self, url: str, workdir: Path) -> None:
        self.url = url
        self.daemon = BenchDaemon(workdir, self.endpoint_url, {"work": url},
                                  processes=self.processes, **self.extra)
        self.daemon.keep_ids = self.keep_ids
        self.daemon.keep = {"message.succeeded"} if self.keep_ids else set()

    def wait_ready(self) -> None:
        self.daemon.wait_ready(self.processes)

    def consumed(self) -> int:
        if self.extra.get("log_level") in ("WARNING", "ERROR"):
            return depth_progress(self)  # no message.succeeded lines to count
        with self.lock:
            return self.daemon.pump()

    def roots(self) -> list[int]:
        return [self.daemon.pid]

    def stop(self) -> None:
        self.daemon.stop()
        self.store_counts = store_counts(self.daemon.workdir / "state")

    def body(self, n: int) -> str:
        return sqsutil.envelope(self.message_type, f"job-{n}")


def store_counts(state_dir: Path) -> dict:
    """The jobs the ledger left in the daemon's SQLite store, by status ({}: no store file,
    the ledger was off). With the ledger on, each drained message's job is one row,
    written twice (the claim before the handler, the completion after it)."""
    import sqlite3

    path = state_dir / "jobs.sqlite3"
    if not path.exists():
        return {}
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'jobs'").fetchone():
            return {}
        rows = conn.execute("SELECT status, SUM(json_extract(doc, '$.attempts')), COUNT(*) "
                            "FROM jobs GROUP BY 1").fetchall()
    except sqlite3.Error as exc:
        return {"store_error": str(exc)}
    finally:
        conn.close()
    return {"store_jobs": {str(s): n for s, _, n in rows},
            "store_attempts": sum(a or 0 for _, a, _ in rows)}


class BareConsumer(Consumer):
    def __init__(self, endpoint_url: str, processes: int) -> None:
        self.endpoint_url = endpoint_url
        self.processes = processes
        self.name = f"bare boto3 p={processes}"
        self.settings = (f"{processes} process(es), each ReceiveMessage(10, wait 20 s) + "
                         "DeleteMessageBatch, no parsing, no logging")
        self.proc: subprocess.Popen | None = None
        self.progress: Path | None = None

    def start(self, url: str, workdir: Path) -> None:
        self.progress = workdir / "progress"
        self.progress.mkdir(parents=True, exist_ok=True)
        self.proc = procs.start_group(
            [sys.executable, "-m", "bench.bare", "--url", url, "--endpoint", self.endpoint_url,
             "--processes", str(self.processes), "--progress", str(self.progress)],
            str(workdir / "bare.log"), env=base_env(), cwd=str(Path(__file__).parent.parent))

    def wait_ready(self) -> None:
        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"bare loop exited with {self.proc.returncode}")
            return len(list(self.progress.iterdir())) >= self.processes
        procs.wait_until(ready, 60, "bare loop processes")

    def consumed(self) -> int:
        total = 0
        for path in self.progress.iterdir():
            try:
                total += int(path.read_text().strip() or 0)
            except (OSError, ValueError):
                pass
        return total

    def roots(self) -> list[int]:
        return [self.proc.pid]

    def stop(self) -> None:
        procs.stop_group(self.proc, signal.SIGTERM, 5)

    def body(self, n: int) -> str:
        return sqsutil.envelope("noop", f"job-{n}")


def depth_progress(consumer: Consumer, every_s: float = 0.05) -> int:
    """Handled = queued by the harness - still in the queue (one GetQueueAttributes per
    ``every_s``): for consumers that log nothing per message."""
    at, value = getattr(consumer, "depth_cache", (0.0, 0))
    if time.monotonic() - at >= every_s:
        value = consumer.sent.n - sqsutil.depth(consumer.sqs, consumer.url)
        consumer.depth_cache = (time.monotonic(), value)
    return value


@dataclass
class Result:
    name: str
    settings: str
    count: int
    seconds: float
    cpu_s: float
    endpoint_cpu_s: float
    msgs_per_s: float = 0.0
    cpu_ms_per_msg: float = 0.0
    endpoint_cpu_ms_per_msg: float = 0.0
    endpoint_busy: float = 0.0  # endpoint CPU seconds per wall second (1.0: one core)
    consumer_cores: float = 0.0
    extra: dict = field(default_factory=dict)
    error: str = ""

    def __post_init__(self) -> None:
        if self.seconds > 0 and self.count:
            self.msgs_per_s = self.count / self.seconds
            self.cpu_ms_per_msg = self.cpu_s / self.count * 1000
            self.endpoint_cpu_ms_per_msg = self.endpoint_cpu_s / self.count * 1000
            self.endpoint_busy = self.endpoint_cpu_s / self.seconds
            self.consumer_cores = self.cpu_s / self.seconds


def measure(endpoint, sqs, consumers: list[Consumer], count: int, warmup: int, backlog: int,
            workdir: Path, timeout_s: float = 300.0, name: str = "", settings: str = "",
            body=None, mode: str = "paced") -> Result:
    """Run one drain with one or more consumers on one queue; see the module docstring.

    ``mode="paced"``: a producer keeps ``sent - consumed <= backlog`` during the window
    (moto, whose cost grows with depth). ``mode="prefill"``: the whole backlog is sent
    with a DelaySeconds that outlasts the fill, so it appears at once to the waiting
    consumer and the window holds no producer at all (LocalStack, flat with depth).
    """
    url = sqsutil.make_queue(sqs, "drain")
    body = body or consumers[0].body
    sent = sqsutil.Sent()
    try:
        for n, consumer in enumerate(consumers):
            consumer.sent, consumer.sqs = sent, sqs
            consumer.start(url, workdir / f"c{n}")
        for consumer in consumers:
            consumer.wait_ready()

        def consumed() -> int:
            return sum(c.consumed() for c in consumers)

        time.sleep(0.3)  # let every long poll park
        if warmup:
            run_producer(sqs, url, [body(-1 - i) for i in range(warmup)], consumed, backlog,
                         warmup, timeout_s, consumers, None, sent)
        base = consumed()
        samplers = [procs.TreeCpu(root) for c in consumers for root in c.roots()]
        extra = {"mode": mode}
        if mode == "prefill":
            delay_s = min(900, 3 + count // 2000)
            started = time.monotonic()
            sqsutil.fill(sqs, url, [body(i) for i in range(count)], delay_s=delay_s, sent=sent)
            extra["fill_s"] = round(time.monotonic() - started, 2)
            if consumed() > base:
                extra["fill_overlapped"] = True
            deadline = started + delay_s + 10
            while consumed() == base:  # the delay is up when the first message is handled
                if time.monotonic() > deadline:
                    raise TimeoutError("prefill: nothing handled after the delay elapsed")
                time.sleep(0.002)
        cpu0 = sum(s.sample() for s in samplers)
        calls0 = endpoint.calls()
        ep0 = endpoint.cpu_s()
        t0 = time.monotonic()
        first = consumed() - base
        if mode == "prefill":
            wait_for(consumed, base + count, timeout_s, consumers, samplers)
        else:
            run_producer(sqs, url, [body(i) for i in range(count)], consumed, backlog,
                         base + count, timeout_s, consumers, samplers, sent)
        seconds = time.monotonic() - t0
        cpu1 = sum(s.sample() for s in samplers)
        ep1 = endpoint.cpu_s()
        result = Result(name or consumers[0].name, settings or consumers[0].settings,
                        count - first, seconds, cpu1 - cpu0, ep1 - ep0, extra=extra)
        result.extra["handled_total"] = consumed() - base
        calls1 = endpoint.calls()
        if calls1 is not None:
            result.extra["calls_per_100_msgs"] = {
                action: round((n - calls0.get(action, 0)) * 100 / result.count, 1)
                for action, n in sorted(calls1.items()) if n > calls0.get(action, 0)}
        return result
    finally:
        for consumer in consumers:
            try:
                consumer.stop()
            except Exception:  # noqa: BLE001 - keep stopping the others
                pass
        sqsutil.delete_queue(sqs, url)


def wait_for(consumed, target, timeout_s, consumers, samplers) -> None:
    deadline = time.monotonic() + timeout_s
    last_sample = time.monotonic()
    while consumed() < target:
        now = time.monotonic()
        if now > deadline:
            raise TimeoutError(f"drain: {consumed()} of {target} handled after {timeout_s:g} s")
        if now - last_sample >= SAMPLE_EVERY_S:
            check_alive(consumers)
            for sampler in samplers:
                sampler.sample()
            last_sample = now
        time.sleep(0.005)


def check_alive(consumers) -> None:
    for consumer in consumers:
        for root in consumer.roots():
            if not os.path.exists(f"/proc/{root}"):
                raise RuntimeError(f"{consumer.name} exited during the drain")


def run_producer(sqs, url, bodies, consumed, backlog, target, timeout_s, consumers, samplers,
                 sent):
    producer = sqsutil.PacedProducer(sqs, url, bodies, consumed, backlog, sent)
    producer.start()
    deadline = time.monotonic() + timeout_s
    while consumed() < target:
        if producer.error is not None:
            raise RuntimeError(f"producer failed: {producer.error!r}")
        if time.monotonic() > deadline:
            producer.stop.set()
            raise TimeoutError(f"drain: {consumed()} of {target} handled after {timeout_s:g} s")
        check_alive(consumers)
        if samplers:
            for sampler in samplers:
                sampler.sample()
        time.sleep(SAMPLE_EVERY_S if samplers else 0.01)
    producer.join(timeout=10)


def duplicates(daemons: list[DaemonConsumer]) -> dict:
    """Message ids handled more than once, split by who delivered them twice.

    Two pollers (different pids) handling one id: SQS (here the local endpoint) handed
    it to two receives, at-least-once delivery. The same poller handling one id twice
    with the same receive count would be the daemon's own double dispatch.
    """
    seen: dict[str, list[tuple]] = {}
    for consumer in daemons:
        for record in consumer.daemon.records:
            if record.get("event") != "message.succeeded":
                continue
            key = record.get("message_id", "")
            seen.setdefault(key, []).append((record.get("pid"), record.get("receive_count")))
    endpoint_dups = daemon_dups = 0
    for handled in seen.values():
        if len(handled) < 2:
            continue
        pairs = Counter(handled)
        if any(n > 1 for n in pairs.values()):
            daemon_dups += 1
        else:
            endpoint_dups += 1
    return {"unique": len(seen), "handled": sum(len(v) for v in seen.values()),
            "endpoint_duplicates": endpoint_dups, "daemon_duplicates": daemon_dups}
