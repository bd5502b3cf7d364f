"""The daemon as real processes against moto's server: signals, kills, heartbeats, DLQ.

Tests wait on log events and queue state, never on fixed sleeps; the fixture
kills every process group it started, even when a test fails.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import uuid

import pytest

from tests.support.daemon import E2E_DIR, TEST_PLUGINS, ledger_lines
from tests.support.sqs import envelope, queue_counts

pytestmark = pytest.mark.e2e


def queue_table(urls, **extra):
    return {"url": urls["url"], "wait_time_s": 1, **extra}


def send(sqs, url, type_, job_id=None, **payload):
    job_id = job_id or uuid.uuid4().hex[:24]
    sqs.send_message(QueueUrl=url, MessageBody=envelope(job_id, type_, payload))
    return job_id


@pytest.mark.parametrize("transport", ["wire", "boto3"])
def test_processes_a_message_in_the_seed_format_and_deletes_it(sqs, make_queue, start_daemon,
                                                                 ledger, transport):
    urls = make_queue("ok")
    daemon = start_daemon({"work": queue_table(urls)}, processes=1, sqs_transport=transport)
    assert daemon.wait_for("poller.ready")[0]["sqs_transport"] == transport
    job = send(sqs, urls["url"], "sleep", seconds=0)
    done = daemon.wait_for("message.succeeded", job_id=job)[0]
    assert done["queue"] == "work" and done["type"] == "sleep" and done["receive_count"] == 1
    assert done["message_id"]
    assert ledger_lines(ledger, "end", job)
    daemon.wait_until(lambda: queue_counts(sqs, urls["url"]) == (0, 0), what="message deleted")


@pytest.mark.parametrize("transport", ["wire", "boto3"])
def test_long_job_under_short_visibility_runs_exactly_once(sqs, make_queue, start_daemon, ledger,
                                                           transport):
    urls = make_queue("long", visibility_s=2)
    daemon = start_daemon({"work": queue_table(urls, visibility_timeout_s=2)}, processes=2,
                          sqs_transport=transport)
    daemon.wait_for("poller.ready", count=2)
    job = send(sqs, urls["url"], "sleep", seconds=6)
    daemon.wait_for("message.succeeded", job_id=job, timeout=30)
    assert len(ledger_lines(ledger, "start", job)) == 1, ledger.read_text()
    assert daemon.events("heartbeat.extended", queue="work")
    assert not daemon.events("message.received", job_id=job, receive_count=2)


def test_malformed_and_unknown_type_go_to_the_dlq_with_their_reason(sqs, make_queue,
                                                                     start_daemon):
    urls = make_queue("bad")
    daemon = start_daemon({"work": queue_table(urls)}, processes=1)
    sqs.send_message(QueueUrl=urls["url"], MessageBody="{not json")
    sqs.send_message(QueueUrl=urls["url"], MessageBody=json.dumps({"jobId": "j"}))
    unknown = send(sqs, urls["url"], "no_such_type")
    daemon.wait_for("message.dead_lettered", count=3)
    got = {}
    for _ in range(10):
        response = sqs.receive_message(QueueUrl=urls["dlq"], MaxNumberOfMessages=10,
                                       MessageAttributeNames=["All"])
        for message in response.get("Messages", []):
            attrs = {k: v["StringValue"] for k, v in message["MessageAttributes"].items()}
            got[message["Body"]] = attrs
        if len(got) == 3:
            break
    assert got["{not json"]["vip_error_class"] == "MalformedMessage"
    assert "not valid JSON" in got["{not json"]["vip_error"]
    assert "missing field 'userId'" in got[json.dumps({"jobId": "j"})]["vip_error"]
    unknown_attrs = next(a for b, a in got.items() if unknown in b)
    assert unknown_attrs["vip_error_class"] == "UnknownMessageType"
    assert unknown_attrs["vip_source_queue"] == "work"
    assert queue_counts(sqs, urls["url"]) == (0, 0)


def test_transient_failure_is_retried_then_succeeds(sqs, make_queue, start_daemon, ledger):
    urls = make_queue("flaky")
    daemon = start_daemon({"work": queue_table(urls, retry_backoff_base_s=1,
                                               retry_backoff_max_s=1)}, processes=1)
    job = send(sqs, urls["url"], "flaky", succeed_on=2)
    retried = daemon.wait_for("message.retried", job_id=job)[0]
    assert retried["delay_s"] <= 1 and "transient failure" in retried["error"]
    done = daemon.wait_for("message.succeeded", job_id=job, timeout=20)[0]
    assert done["receive_count"] == 2
    assert len(ledger_lines(ledger, "start", job)) == 2


def test_kill_9_of_a_poller_mid_job_the_job_completes_elsewhere(sqs, make_queue, start_daemon,
                                                                 ledger):
    urls = make_queue("kill", visibility_s=2)
    daemon = start_daemon({"work": queue_table(urls, visibility_timeout_s=2)}, processes=2)
    daemon.wait_for("poller.ready", count=2)
    job = send(sqs, urls["url"], "sleep", seconds=3)
    started = daemon.wait_for("message.started", job_id=job)[0]
    os.kill(started["pid"], signal.SIGKILL)
    done = daemon.wait_for("message.succeeded", job_id=job, timeout=30)[0]
    assert done["pid"] != started["pid"] and done["receive_count"] >= 2
    died = daemon.wait_for("poller.died")[0]
    assert died["poller_pid"] == started["pid"] and died["signal"] == "SIGKILL"
    daemon.wait_until(lambda: len(daemon.children()) == 2, what="the dead poller replaced")
    assert len(ledger_lines(ledger, "end", job)) == 1


def test_sigterm_finishes_running_work_and_hands_back_unstarted(sqs, make_queue, start_daemon,
                                                                ledger):
    urls = make_queue("term", visibility_s=60)
    daemon = start_daemon({"work": queue_table(urls, visibility_timeout_s=60)}, processes=1,
                          concurrency=4, type_limits={"sleep": 1})
    daemon.wait_for("poller.ready")
    jobs = [send(sqs, urls["url"], "sleep", seconds=2) for _ in range(3)]
    daemon.wait_until(lambda: ledger_lines(ledger, "start"), what="a job started")
    daemon.wait_until(lambda: len(daemon.events("message.received")) == 3, what="3 received")
    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit(timeout=30) == 0
    running = ledger_lines(ledger, "start")
    assert len(running) == 1 and ledger_lines(ledger, "end", running[0][1])
    released = daemon.events("message.released", reason="shutdown")
    assert sorted(r["job_id"] for r in released) == sorted(set(jobs) - {running[0][1]})
    assert all(not r["started"] for r in released)
    # Visible again at once, not after the 60 s visibility timeout.
    assert queue_counts(sqs, urls["url"]) == (2, 0)
    # The plugin's per-process hooks ran in the poller, the stop hook after the last job.
    pid = running[0][2]
    assert ledger_lines(ledger, "poller_start")[0][2] == pid
    assert ledger_lines(ledger)[-1] == ["poller_stop", "-", pid]


def test_sigint_hands_back_running_work_at_once(sqs, make_queue, start_daemon, ledger):
    urls = make_queue("int", visibility_s=60)
    daemon = start_daemon({"work": queue_table(urls, visibility_timeout_s=60)}, processes=1,
                          grace_period_s=60)
    daemon.wait_for("poller.ready")
    job = send(sqs, urls["url"], "async_sleep", seconds=60)
    daemon.wait_for("message.started", job_id=job)
    daemon.send(signal.SIGINT)
    assert daemon.wait_exit(timeout=15) == 0
    assert daemon.events("message.released", job_id=job, reason="grace_period_over")
    assert daemon.events("poller.stopping", mode="fast")
    assert queue_counts(sqs, urls["url"]) == (1, 0)


def test_sigterm_hands_back_what_outlives_the_grace_period(sqs, make_queue, start_daemon,
                                                           ledger):
    urls = make_queue("grace", visibility_s=60)
    daemon = start_daemon({"work": queue_table(urls, visibility_timeout_s=60)}, processes=1,
                          grace_period_s=1)
    daemon.wait_for("poller.ready")
    job = send(sqs, urls["url"], "async_sleep", seconds=30)
    daemon.wait_for("message.started", job_id=job)
    daemon.send(signal.SIGTERM)
    assert daemon.wait_exit(timeout=30) == 0
    released = daemon.events("message.released", job_id=job)
    assert released and released[0]["reason"] == "grace_period_over" and released[0]["started"]
    assert queue_counts(sqs, urls["url"]) == (1, 0)
    assert not ledger_lines(ledger, "end", job)


def test_broken_plugin_stops_the_boot_with_exit_78(make_queue, start_daemon):
    urls = make_queue("broken", dlq=False)
    daemon = start_daemon({"work": queue_table(urls)},
                          plugin_dirs=[str(TEST_PLUGINS), str(E2E_DIR / "broken_plugins")])
    assert daemon.wait_exit(timeout=30) == 78
    assert "plugin 'broken'" in daemon.err_path.read_text()
    assert "dependency is missing" in daemon.err_path.read_text()
    assert not daemon.events("poller.spawned")


def test_bad_setting_stops_the_boot_with_exit_78(make_queue, start_daemon):
    urls = make_queue("badkey", dlq=False)
    daemon = start_daemon({"work": queue_table(urls)}, concurency=3)
    assert daemon.wait_exit(timeout=30) == 78
    err = daemon.err_path.read_text()
    assert "concurency: unknown setting" in err and "vip-worker.toml" in err


def test_an_unreachable_mongodb_is_logged_at_boot_and_the_daemon_serves(make_queue,
                                                                         start_daemon):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    urls = make_queue("nomongo", dlq=False)
    daemon = start_daemon({"work": queue_table(urls)}, mongodb_uri=(
        f"mongodb://127.0.0.1:{port}/jobs?serverSelectionTimeoutMS=300"))
    daemon.wait_for("poller.ready")
    (line,) = daemon.events("store.unreachable")
    assert f"127.0.0.1:{port}" in line["error"] and line["level"] == "ERROR"


def test_ttin_and_ttou_change_the_poller_count(make_queue, start_daemon):
    urls = make_queue("scale")
    daemon = start_daemon({"work": queue_table(urls)}, processes=1)
    daemon.wait_for("poller.ready")
    daemon.send(signal.SIGTTIN)
    daemon.wait_for("poller.ready", count=2)
    daemon.wait_until(lambda: len(daemon.children()) == 2, what="two pollers")
    daemon.send(signal.SIGTTOU)
    daemon.wait_for("poller.exited")
    daemon.wait_until(lambda: len(daemon.children()) == 1, what="one poller")


def test_hup_replaces_pollers_without_losing_a_message(sqs, make_queue, start_daemon, ledger):
    urls = make_queue("hup", visibility_s=30)
    daemon = start_daemon({"work": queue_table(urls)}, processes=2)
    ready = daemon.wait_for("poller.ready", count=2)
    old = {r["pid"] for r in ready}
    jobs = [send(sqs, urls["url"], "sleep", seconds=0.3) for _ in range(10)]
    daemon.send(signal.SIGHUP)
    jobs += [send(sqs, urls["url"], "sleep", seconds=0.1) for _ in range(10)]
    daemon.wait_for("poller.spawned", generation=1, count=2)
    daemon.wait_until(lambda: len(daemon.events("poller.exited")) >= 2, what="old pollers out")
    jobs += [send(sqs, urls["url"], "sleep", seconds=0) for _ in range(5)]
    for job in jobs:
        daemon.wait_for("message.succeeded", job_id=job, timeout=40)
    new = {r["pid"] for r in daemon.events("poller.ready")} - old
    assert len(new) == 2 and set(daemon.children()) == new
    assert {r["poller_pid"] for r in daemon.events("poller.exited")} == old
    assert not daemon.events("poller.died")
    assert {row[1] for row in ledger_lines(ledger, "end")} == set(jobs)


def test_hup_with_a_broken_plugin_keeps_the_running_pollers(tmp_path, make_queue, start_daemon):
    urls = make_queue("hupbad")
    plugin_dir = tmp_path / "extra_plugins"
    plugin_dir.mkdir()
    daemon = start_daemon({"work": queue_table(urls)}, processes=1,
                          plugin_dirs=[str(TEST_PLUGINS), str(plugin_dir)])
    pid = daemon.wait_for("poller.ready")[0]["pid"]
    (plugin_dir / "later.py").write_text("raise RuntimeError('not ready yet')\n")
    daemon.send(signal.SIGHUP)
    failed = daemon.wait_for("arbiter.reload_failed")[0]
    assert "plugin 'later'" in failed["error"]
    assert daemon.children() == [pid]
    assert daemon.proc.poll() is None


def test_blocked_event_loop_is_dumped_and_replaced(sqs, make_queue, start_daemon):
    urls = make_queue("block", visibility_s=30)
    daemon = start_daemon({"work": queue_table(urls)}, processes=1, poller_timeout_s=2)
    first = daemon.wait_for("poller.ready")[0]["pid"]
    send(sqs, urls["url"], "block", seconds=60)
    blocked = daemon.wait_for("poller.blocked", timeout=30)[0]
    assert blocked["poller_pid"] == first
    daemon.wait_for("poller.died", poller_pid=first)
    daemon.wait_until(lambda: {r["pid"] for r in daemon.events("poller.ready")} - {first},
                      what="a replacement poller")
    # faulthandler's dump names the blocking call.
    daemon.wait_until(lambda: "loop_blocker" in daemon.err_path.read_text(), what="stack dump")


def test_pollers_stop_by_themselves_when_the_master_is_killed(make_queue, start_daemon):
    urls = make_queue("orphan")
    daemon = start_daemon({"work": queue_table(urls)}, processes=2)
    pids = {r["pid"] for r in daemon.wait_for("poller.ready", count=2)}
    daemon.send(signal.SIGKILL)
    daemon.wait_exit()
    daemon.wait_for("poller.orphaned", count=2, master_may_exit=True)

    def gone(pid):
        try:
            with open(f"/proc/{pid}/status") as fh:
                return "\nState:\tZ" in fh.read()
        except FileNotFoundError:
            return True

    daemon.wait_until(lambda: all(gone(p) for p in pids), what="orphaned pollers exited")


def test_metrics_are_written_as_cloudwatch_emf_lines(sqs, make_queue, start_daemon):
    urls = make_queue("emf")
    daemon = start_daemon({"work": queue_table(urls)}, processes=1, metrics_interval_s=1,
                          metrics_namespace="VipTest")
    jobs = [send(sqs, urls["url"], "sleep", seconds=0) for _ in range(3)]
    for job in jobs:
        daemon.wait_for("message.succeeded", job_id=job)
    line = daemon.wait_until(
        lambda: [r for r in daemon.events("metrics", Queue="work")
                 if r.get("MessagesSucceeded")], what="an EMF line with the successes")[0]
    spec = line["_aws"]["CloudWatchMetrics"][0]
    assert spec["Namespace"] == "VipTest" and spec["Dimensions"] == [["Queue"]]
    names = {m["Name"] for m in spec["Metrics"]}
    assert {"MessagesSucceeded", "MessagesRetried", "MessagesDeadLettered",
            "ProcessingTime", "QueueDepth"} <= names
    assert sum(r.get("MessagesSucceeded", 0) for r in daemon.events("metrics")) == 3
    assert len(line["ProcessingTime"]) == line["MessagesSucceeded"]
    assert isinstance(line["_aws"]["Timestamp"], int)


VERSIONED = """
from vip_worker import hookimpl

@hookimpl
def vip_worker_register_settings(declare):
    declare("ledger", "")

def handle(message, ctx):
    with open(ctx.plugin_settings["ledger"], "a") as fh:
        fh.write("{version} " + message.job_id + "\\n")

@hookimpl
def vip_worker_register_handlers(register):
    register("versioned", handle)
"""


def test_hup_picks_up_changed_plugin_code_without_losing_a_message(tmp_path, sqs, make_queue,
                                                                   start_daemon):
    plugin_dir = tmp_path / "live_plugins"
    plugin_dir.mkdir()
    (plugin_dir / "versioned.py").write_text(VERSIONED.format(version="v1"))
    ledger = tmp_path / "versions.txt"
    ledger.touch()
    urls = make_queue("reload")
    daemon = start_daemon({"work": queue_table(urls)}, processes=2,
                          plugin_dirs=[str(plugin_dir)],
                          plugins={"versioned": {"ledger": str(ledger)}})
    daemon.wait_for("poller.ready", count=2)
    before = [send(sqs, urls["url"], "versioned") for _ in range(10)]
    for job in before:
        daemon.wait_for("message.succeeded", job_id=job)
    (plugin_dir / "versioned.py").write_text(VERSIONED.format(version="v2"))
    daemon.send(signal.SIGHUP)
    during = [send(sqs, urls["url"], "versioned") for _ in range(10)]
    daemon.wait_for("poller.ready", count=4)  # two new pollers serve
    daemon.wait_until(lambda: len(daemon.events("poller.exited")) >= 2, what="old pollers out")
    after = [send(sqs, urls["url"], "versioned") for _ in range(10)]
    for job in during + after:
        daemon.wait_for("message.succeeded", job_id=job)
    rows = dict(reversed(line.split()) for line in ledger.read_text().splitlines())
    assert set(rows) == set(before + during + after)  # none lost
    assert {rows[j] for j in before} == {"v1"}
    assert {rows[j] for j in after} == {"v2"}  # the new code handles new messages
