"""The chaos scenario: the real daemon through a faulty SQS, a faulty generation
service and an unavailable job store, while pollers die and the daemon restarts.

``run_scenario(ChaosConfig, workdir, moto_endpoint)`` is shared by the CI test
(``test_chaos.py``, short) and the soak (``bench/soak.py``, long). It starts and
always stops: the stub generation service (with a fault drawn per call), the
SQS fault proxy in front of moto, the daemon (as a process group), the feeder
(``vip_worker.pipeline.producer.Producer`` through the proxy) and the chaos monkey; then
drains and hands everything to the ledger (``ledger.py``).

Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3

from tests.chaos.ledger import COLLECTIONS, JobSpec, JobState, Report, build_report, dlq_entry
from tests.chaos.recovery import count_store_writes, recoveries, store_writes
from tests.chaos.sqs_proxy import FaultPlan, SqsFaultProxy
from tests.support.daemon import Daemon, write_config
from tests.support.wait import wait_until
from vip_worker.dev.stubservice import PREFIX, StubGenerationService
from vip_worker.sqs.local import LOCAL_AWS_ENV

ROOT = Path(__file__).resolve().parents[2]
BUNDLED_PLUGINS = ROOT / "plugins"
JOB_ID = re.compile(r"\b([0-9a-f]{24})\b")
log = logging.getLogger("tests.chaos")


# -- the generation service, with a fault per call ---------------------------------------


class ChaosGenerationService(StubGenerationService):
    """The stub generation service with one fault drawn per generation call.

    ``shares``: ``{"error500"|"hang"|"reset"|"garbage"|"error429": share}``; the
    stub's own ``failure_rate`` (503) applies to calls that drew no fault.
    Counts calls and faults per job (the 24-hex job id found in the request's
    string fields: the scenario puts it in ``topic`` / ``prompt``).
    """

    def __init__(self, shares: dict[str, float], seed: int | None = None, **kwargs) -> None:
        super().__init__(seed=seed, **kwargs)
        self.shares = dict(shares)
        self.enabled = True
        self.draws = random.Random(None if seed is None else seed + 1)
        self.local = threading.local()
        self.job_calls: Counter[str] = Counter()
        self.job_faults: dict[str, Counter[str]] = defaultdict(Counter)
        self.fault_counts: Counter[str] = Counter()

    @property
    def mode(self) -> str:  # read once per request by the stub's handler, in its thread
        return getattr(self.local, "fault", None) or self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        StubGenerationService.mode.fset(self, value)

    def record(self, path: str, body: Any, job_id: str | None = None) -> None:
        fault = None
        if path.startswith(PREFIX):
            with self._lock:
                roll = self.draws.random()
                if self.enabled:
                    for name, share in self.shares.items():
                        if roll < share:
                            fault = name
                            break
                        roll -= share
                job = job_of(body)
                self.local.job = job
                self.job_calls[job] += 1
                if fault:
                    self.job_faults[job][fault] += 1
                    self.fault_counts[fault] += 1
        self.local.fault = fault
        super().record(path, body, job_id)

    def roll_failure(self) -> bool:
        failed = super().roll_failure()
        if failed:
            with self._lock:
                self.job_faults[getattr(self.local, "job", "-")]["error503"] += 1
                self.fault_counts["error503"] += 1
        return failed


def job_of(body: Any) -> str:
    values = body.values() if isinstance(body, dict) else ()
    for value in values:
        if isinstance(value, str):
            found = JOB_ID.search(value)
            if found:
                return found.group(1)
    return "-"


# -- the job store, made unavailable -------------------------------------------------------


class StoreLocker:
    """Holds SQLite's write lock from another connection (``BEGIN EXCLUSIVE``).

    Held longer than the store's busy timeout (10 s), writers get
    ``StoreUnavailable``; shorter, they only wait.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.outages: list[tuple[float, float]] = []  # (start, seconds held)
        self.threads: list[threading.Thread] = []
        self.stop = threading.Event()
        self.holding = threading.Event()

    def hold(self, seconds: float, *, until: Callable[[], bool] | None = None,
             at_most: float | None = None) -> None:
        """Lock the store for ``seconds``; with ``until``, go on holding until it is true
        (checked every 0.2 s) or ``at_most`` seconds have passed. Returns once the lock is
        held, so a caller acting next knows the outage has begun."""
        begun = threading.Event()  # set once the lock is held, or could not be taken
        thread = threading.Thread(target=self._hold, args=(seconds, until, at_most, begun),
                                  daemon=True, name="store-locker")
        thread.start()
        self.threads.append(thread)
        begun.wait(timeout=35)

    def _hold(self, seconds: float, until: Callable[[], bool] | None,
              at_most: float | None, begun: threading.Event) -> None:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            conn.execute("BEGIN EXCLUSIVE")
            self.holding.set()
            begun.set()
            start = time.monotonic()
            self.stop.wait(seconds)
            if until is not None:
                last = start + (at_most if at_most is not None else seconds)
                while (not self.stop.is_set() and time.monotonic() < last
                       and not until()):
                    self.stop.wait(0.2)
            conn.execute("ROLLBACK")
            self.outages.append((start, time.monotonic() - start))
        except sqlite3.Error as exc:
            log.warning("store locker failed: %s", exc)
        finally:
            self.holding.clear()
            begun.set()
            conn.close()

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=35)


# -- the scenario ------------------------------------------------------------------------------


@dataclass
class ChaosConfig:
    jobs: int = 80
    feed_s: float = 30.0  # the jobs are sent over this long
    calm_after_s: float = 5.0  # chaos goes on this long after the last send
    images_share: float = 0.3
    invalid_share: float = 0.08  # jobs whose payload must fail (bad mode, no prompt)
    max_queued: int = 200  # moto slows with depth: the feeder waits above this
    processes: int = 2
    concurrency: int = 4
    visibility_timeout_s: int = 4
    max_attempts: int = 6
    # SQS's redrive at or below max_attempts, as in production: a message handed back or
    # retried at this receive count must be re-sent (message.resent), and one whose poller
    # dies holding it may be moved to the DLQ silently, its job left to the lifeline.
    max_receive_count: int = 3
    lifeline_interval_s: float = 2.0
    lifeline_queued_after_s: float = 60.0  # the setting's minimum
    max_job_time_s: float = 30.0
    kill_every_s: tuple[float, float] = (2.0, 4.0)
    restarts: int = 1  # whole-daemon TERM + start, spread over the feed
    store_outages: int = 1
    store_outage_s: float = 12.0  # longer than SQLite's 10 s busy timeout
    # ... and held on until a handler has retried on StoreUnavailable: the producer waits
    # on the same lock, so only messages already in flight can meet the outage.
    store_outage_max_s: float = 20.0  # ends before the restart (late in the run)
    sqs_outages: int = 1  # brownouts: every SQS call fails for sqs_outage_s
    sqs_outage_s: float = 5.0  # past botocore's retries and the 4 s visibility timeout
    latency_s: float = 0.2
    failure_rate: float = 0.05  # the stub's own 503s
    generation_faults: dict[str, float] = field(default_factory=lambda: {
        "error500": 0.06, "hang": 0.03, "reset": 0.04, "garbage": 0.02})
    sqs_faults: dict[str, float] = field(default_factory=lambda: {
        "error500": 0.02, "throttle": 0.02, "drop": 0.015, "delay": 0.03,
        "error500_after": 0.015, "drop_after": 0.015})
    drain_timeout_s: float = 150.0
    seed: int | None = None


@dataclass
class Run:
    """What a scenario run holds while it runs (every part is stopped in ``close``)."""

    config: ChaosConfig
    workdir: Path
    moto: Any  # boto3 SQS client straight to moto (not through the proxy)
    rng: random.Random
    stub: ChaosGenerationService | None = None
    proxy: SqsFaultProxy | None = None
    urls: dict[str, dict[str, str]] = field(default_factory=dict)
    config_path: Path | None = None
    daemons: list[Daemon] = field(default_factory=list)
    specs: list[JobSpec] = field(default_factory=list)
    locker: StoreLocker | None = None
    chaos: Counter = field(default_factory=Counter)
    chaos_log: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    started_at: float = field(default_factory=time.monotonic)
    exit_code: int | None = None  # the last daemon's, after the final TERM
    kills: list[tuple[datetime, int]] = field(default_factory=list)  # (when, poller pid)

    @property
    def daemon(self) -> Daemon:
        return self.daemons[-1]

    def note(self, what: str) -> None:
        with self.lock:
            self.chaos_log.append(f"{time.monotonic() - self.started_at:7.2f}s {what}")

    def close(self) -> None:
        self.stop.set()
        for daemon in self.daemons:
            daemon.kill()
        if self.locker:
            self.locker.close()
        if self.proxy:
            self.proxy.stop()
        if self.stub:
            self.stub.stop()


def make_queues(run: Run) -> None:
    suffix = uuid.uuid4().hex[:8]
    for name in COLLECTIONS:
        dlq = run.moto.create_queue(QueueName=f"chaos-{name}-{suffix}-dlq")["QueueUrl"]
        arn = run.moto.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])[
            "Attributes"]["QueueArn"]
        policy = json.dumps({"deadLetterTargetArn": arn,
                             "maxReceiveCount": str(run.config.max_receive_count)})
        url = run.moto.create_queue(QueueName=f"chaos-{name}-{suffix}", Attributes={
            "VisibilityTimeout": str(run.config.visibility_timeout_s),
            "RedrivePolicy": policy})["QueueUrl"]
        run.urls[name] = {"url": url, "dlq": dlq}


def write_daemon_config(run: Run) -> Path:
    c = run.config
    queue = {"wait_time_s": 1, "visibility_timeout_s": c.visibility_timeout_s,
             "max_attempts": c.max_attempts, "max_job_time_s": c.max_job_time_s,
             "retry_backoff_base_s": 0.5, "retry_backoff_max_s": 2}
    return write_config(
        run.workdir / "vip-worker.toml",
        {name: {"url": u["url"], **queue} for name, u in run.urls.items()},
        processes=c.processes, concurrency=c.concurrency, grace_period_s=5,
        # DEBUG: message.started (with the poller's pid) times the recovery after a kill.
        log_level="DEBUG", metrics_interval_s=0, respawn_backoff_max_s=2,
        lifeline_interval_s=c.lifeline_interval_s,
        lifeline_queued_after_s=c.lifeline_queued_after_s,
        plugin_dirs=[str(BUNDLED_PLUGINS)], state_dir=str(run.workdir / "state"),
        fastapi_url=run.stub.url, generation_read_timeout_s=3,
        generation_connect_timeout_s=2)


def start_daemon(run: Run) -> Daemon:
    workdir = run.workdir / f"daemon{len(run.daemons)}"
    workdir.mkdir()
    daemon = Daemon(workdir, run.config_path, run.proxy.url)
    run.daemons.append(daemon)
    daemon.wait_for("poller.ready", count=1, timeout=60)
    return daemon


def make_specs(run: Run) -> list[JobSpec]:
    from vip_worker.pipeline.producer import new_job_id

    c = run.config
    specs = []
    for _ in range(c.jobs):
        job_id = new_job_id()
        kind = "images" if run.rng.random() < c.images_share else "articles"
        invalid = run.rng.random() < c.invalid_share
        if kind == "articles":
            mode = "no-such-mode" if invalid else run.rng.choice(("topic", "keywords"))
            payload = {"mode": mode, "topic": f"chaos job {job_id}", "wordCount": 120,
                       "keywords": ["chaos", "ledger"], "tone": "Professional"}
        else:
            payload = {"prompt": f"chaos image {job_id}", "width": 256, "height": 256}
            if invalid:
                payload = {"style": f"no prompt {job_id}", "width": 256}
        expect, why = ("failed", "invalid payload") if invalid else ("completed", "")
        specs.append(JobSpec(job_id, kind, payload, expect, why))
    return specs


# -- the feeder and the monkey ------------------------------------------------------------------


def depth(run: Run) -> int:
    total = 0
    for u in run.urls.values():
        attrs = run.moto.get_queue_attributes(QueueUrl=u["url"], AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed"])["Attributes"]
        total += sum(int(v) for v in attrs.values())
    return total


def feed(run: Run, producer) -> None:
    """Send every job, paced over ``feed_s``; a failed send is sent again (same jobId):
    a send whose answer was lost may then arrive twice, as from a real app."""
    from vip_worker.pipeline.producer import SendFailed
    from vip_worker.sqs.api import TRANSPORT_ERRORS
    from vip_worker.store import StoreUnavailable

    pause = run.config.feed_s / max(1, len(run.specs))
    for n, spec in enumerate(run.specs):
        while n % 10 == 0 and depth(run) > run.config.max_queued and not run.stop.is_set():
            time.sleep(0.5)  # back-pressure on the feeder (moto slows with depth), no bound
        for attempt in range(30):
            if run.stop.is_set():
                return
            try:
                producer.enqueue(spec.type, spec.payload, user_id="chaos-user",
                                 job_id=spec.job_id)
                break
            except (*TRANSPORT_ERRORS, SendFailed, StoreUnavailable) as exc:
                run.chaos["producer_send_errors"] += 1
                run.note(f"send of {spec.job_id} failed ({type(exc).__name__}), again")
                time.sleep(0.2 * (attempt + 1))  # the producer app's own backoff
        else:
            raise AssertionError(f"could not queue job {spec.job_id} in 30 tries")
        time.sleep(pause)  # the feed's pace: jobs spread over feed_s


def kill_a_poller(run: Run) -> None:
    pids = run.daemon.children()
    if not pids:
        return
    pid = run.rng.choice(pids)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    run.chaos["pollers_killed"] += 1
    run.kills.append((datetime.now(UTC), pid))
    run.note(f"SIGKILL poller {pid}")


def restart_daemon(run: Run) -> None:
    old = run.daemon
    run.note(f"TERM daemon {old.pid}")
    old.send(signal.SIGTERM)
    try:
        code = old.wait_exit(timeout=40)
    except subprocess.TimeoutExpired:
        run.note(f"daemon {old.pid} did not stop in 40 s: killed")
        old.kill()
        code = "killed"
    run.chaos["daemon_restarts"] += 1
    run.note(f"daemon {old.pid} exited ({code}); starting a new one")
    start_daemon(run)


def generation_call_started(run: Run, timeout_s: float = 10.0) -> None:
    """Wait for the next generation call to start. Its handler writes to the store next,
    so an outage begun now reaches a live handler (the producer alone may be writing when
    the store is locked at a random moment, and then the daemon never sees the outage)."""
    seen = run.stub.total_calls
    try:
        wait_until(lambda: run.stub.total_calls != seen, timeout_s, interval_s=0.005,
                   message="a generation call")
    except AssertionError:
        run.note(f"no generation call in {timeout_s:g} s: the store is locked anyway")


def store_outage_retries(run: Run) -> int:
    """How many retries on ``StoreUnavailable`` the daemons have logged (read from the
    log files, not through ``Daemon.read``, which the accounting owns)."""
    seen = 0
    for daemon in list(run.daemons):
        try:
            text = daemon.log_path.read_text(errors="replace")
        except OSError:
            continue
        seen += sum(1 for line in text.splitlines()
                    if "message.retried" in line and "StoreUnavailable" in line)
    return seen


def monkey(run: Run, until: float) -> None:
    """Kill pollers at random moments; TERM and restart the daemon; lock the store."""
    c = run.config
    # Outages in the first part of each slice of the run, restarts late in it: the two
    # never overlap (a daemon stopping during an outage would hide the outage).
    start, span = time.monotonic(), until - time.monotonic()
    plan = [(start + span * (i + 0.75) / c.restarts, "restart") for i in range(c.restarts)]
    plan += [(start + span * (i + 0.15) / c.store_outages, "store")
             for i in range(c.store_outages)]
    plan += [(start + span * (i + 0.5) / c.sqs_outages, "sqs")
             for i in range(c.sqs_outages)]
    plan.sort()
    next_kill = time.monotonic() + run.rng.uniform(*c.kill_every_s)
    while time.monotonic() < until and not run.stop.is_set():  # the chaos schedule, not a wait
        now = time.monotonic()
        if plan and now >= plan[0][0]:
            _, what = plan.pop(0)
            if what == "restart":
                restart_daemon(run)
            elif what == "sqs":
                run.note(f"SQS brownout: every call fails for {c.sqs_outage_s:g} s")
                run.chaos["sqs_outages"] += 1
                run.proxy.plan.outage(c.sqs_outage_s)
            else:
                generation_call_started(run)
                run.note(f"store locked for {c.store_outage_s:g} s or until a handler "
                         f"retries on StoreUnavailable (at most {c.store_outage_max_s:g} s)")
                run.chaos["store_outages"] += 1
                before = store_outage_retries(run)  # an earlier outage's do not count
                run.locker.hold(c.store_outage_s,
                                until=lambda before=before: store_outage_retries(run) > before,
                                at_most=c.store_outage_max_s)
            continue
        if now >= next_kill and not run.locker.holding.is_set():
            # No kills while the store is locked: the outage must reach live handlers
            # (a poller killed before SQLite's busy timeout would never see it).
            kill_a_poller(run)
            next_kill = now + run.rng.uniform(*c.kill_every_s)
        time.sleep(0.2)  # the monkey's tick: pacing, not a wait on state


# -- drain and account --------------------------------------------------------------------------


def terminal(store, specs: list[JobSpec]) -> int:
    done = 0
    for spec in specs:
        job = store.get_job(spec.job_id)
        done += bool(job and job.get("status") in ("completed", "failed"))
    return done


def drain(run: Run, store) -> None:
    """Wait until every job is completed/failed and the source queues are empty. Past
    the bound the run goes on to the accounting, which names what was left."""
    try:
        wait_until(lambda: terminal(store, run.specs) == len(run.specs) and depth(run) == 0,
                   run.config.drain_timeout_s, interval_s=0.5, message="the drain")
    except AssertionError:
        run.note(f"drain bound of {run.config.drain_timeout_s:g} s reached")


def read_dlq(run: Run) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for u in run.urls.values():
        empty = 0
        while empty < 2:
            got = run.moto.receive_message(
                QueueUrl=u["dlq"], MaxNumberOfMessages=10, WaitTimeSeconds=1,
                VisibilityTimeout=300, MessageAttributeNames=["All"]).get("Messages", [])
            fresh = [m for m in got if m["MessageId"] not in seen]
            empty = 0 if fresh else empty + 1
            for message in fresh:
                seen[message["MessageId"]] = dlq_entry(message)
    return list(seen.values())


def account(run: Run, store) -> Report:
    dlq = read_dlq(run)
    by_job: dict[str, list] = defaultdict(list)
    for entry in dlq:
        by_job[entry["job_id"]].append(entry)
    known = {s.job_id for s in run.specs}
    states = {}
    for spec in run.specs:
        content = {coll: len(store.get_content(coll, spec.job_id))
                   for coll in COLLECTIONS.values()}
        states[spec.job_id] = JobState(store.get_job(spec.job_id), content,
                                       by_job.get(spec.job_id, []))
        faults = run.stub.job_faults.get(spec.job_id, {})
        if spec.expect == "completed" and faults.get("garbage"):
            spec.expect, spec.why = "either", "the service answered garbage to it"
    records = [r for d in run.daemons for r in d.read()]
    faults = {
        "sqs": run.proxy.totals(), "sqs_by_action": run.proxy.counts(),
        "sqs_calls": sum(run.proxy.calls().values()),
        "generation": dict(run.stub.fault_counts),
        "chaos": dict(run.chaos),
        "store_outages_s": [round(s, 1) for _, s in run.locker.outages],
    }
    report = build_report(
        run.specs, states, records,
        queues_left={name: depth_of(run, u["url"]) for name, u in run.urls.items()},
        generation_calls=dict(run.stub.job_calls), faults=faults,
        generation_faults={job: sum(c.values()) for job, c in run.stub.job_faults.items()},
        unknown_dlq_messages=sum(1 for e in dlq if e["job_id"] not in known),
        duration_s=time.monotonic() - run.started_at)
    report.recovery = recoveries(run.kills, records)
    report.store_writes = store_writes(store_path(run), [s.job_id for s in run.specs])
    return report


def store_path(run: Run) -> Path:
    return run.workdir / "state" / "jobs.sqlite3"


def depth_of(run: Run, url: str) -> int:
    attrs = run.moto.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed"])["Attributes"]
    return sum(int(v) for v in attrs.values())


def run_scenario(config: ChaosConfig, workdir: Path, moto_endpoint: str) -> tuple[Report, Run]:
    """Run the whole scenario; every process and thread it starts is stopped on return."""
    from vip_worker import config as vip_config
    from vip_worker.pipeline.producer import Producer
    from vip_worker.sqs.boto import connect

    seed = config.seed if config.seed is not None else random.randrange(2**31)
    run = Run(config, workdir, boto3.client("sqs", endpoint_url=moto_endpoint,
                                            region_name="us-east-1"), random.Random(seed))
    run.note(f"seed {seed}")
    try:
        make_queues(run)
        run.stub = ChaosGenerationService(config.generation_faults, seed=seed,
                                          latency_s=config.latency_s,
                                          failure_rate=config.failure_rate, hang_s=8.0)
        run.stub.start()
        run.proxy = SqsFaultProxy(moto_endpoint, FaultPlan(config.sqs_faults, seed=seed)).start()
        run.config_path = write_daemon_config(run)
        run.locker = StoreLocker(store_path(run))
        run.specs = make_specs(run)
        start_daemon(run)
        settings = vip_config.load(str(run.config_path), environ={
            **LOCAL_AWS_ENV, "AWS_ENDPOINT_URL_SQS": run.proxy.url})
        producer = Producer(settings, connect(settings.region, run.proxy.url))
        store = producer.store
        store.get_job("0" * 24)  # opens the store (its tables) before the triggers
        count_store_writes(store_path(run))
        until = time.monotonic() + config.feed_s + config.calm_after_s
        errors: list[BaseException] = []

        def chaos() -> None:
            try:
                monkey(run, until)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                errors.append(exc)

        monkey_thread = threading.Thread(target=chaos, daemon=True, name="chaos-monkey")
        monkey_thread.start()
        try:
            feed(run, producer)
        finally:
            monkey_thread.join(timeout=config.feed_s + config.calm_after_s + 90)
        if errors:
            raise errors[0]
        run.note("chaos over: SQS and generation faults off; draining")
        run.proxy.enabled = False
        run.stub.enabled = False
        run.stub.failure_rate = 0.0
        run.locker.close()
        drain(run, store)
        run.daemon.send(signal.SIGTERM)
        try:
            run.exit_code = run.daemon.wait_exit(timeout=40)
        except subprocess.TimeoutExpired:
            run.note("the daemon did not stop in 40 s after TERM")
        report = account(run, store)
        producer.close()
        return report, run
    finally:
        run.close()
