"""``vip-worker status``: queue counts from moto's server, the daemon from its status.json."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from tests.support.ops_cli import make_config, run
from tests.support.sqs import envelope
from vip_worker import statusfile

pytestmark = pytest.mark.integration


def send(sqs, url, count, type_="sleep", **payload):
    for _ in range(count):
        sqs.send_message(QueueUrl=url, MessageBody=envelope(uuid.uuid4().hex[:24], type_,
                                                            payload))


def write_status(run_dir, **fields):
    """A status.json as the master writes it (the schema's own writer)."""
    doc = {"pid": os.getpid(), "written_at": time.time(), "uptime_s": 75.0, "target": 1,
           "generation": 1, "stopping": None, "ready": True, "rate_per_min": None,
           "rate_window_s": 60, "queues": ["work"], "totals": {"handled": 4.0},
           "pollers": [{"index": 0, "pid": os.getpid(), "ready": True, "stopping": False,
                        "in_flight": 2, "uptime_s": 70.0, "handled": 4.0}]}
    doc.update(fields)
    statusfile.write(str(run_dir), statusfile.DaemonStatus.build(**doc))


def test_status_json_shows_the_queues_and_the_running_daemon(sqs, make_queue, start_daemon,
                                                             sqs_endpoint, tmp_path, capsys):
    urls = make_queue("st", visibility_s=60)
    run_dir = tmp_path / "daemon-run"
    daemon = start_daemon({"work": {"url": urls["url"], "wait_time_s": 1}}, processes=1,
                          concurrency=1, runtime_dir=str(run_dir), sqs_endpoint_url=sqs_endpoint)
    config = str(daemon.log_path.parent / "vip-worker.toml")
    send(sqs, urls["url"], 3, seconds=30)  # one runs (in flight), the rest wait
    sqs.send_message(QueueUrl=urls["dlq"], MessageBody="dead")

    def status():
        code, out, err = run(capsys, "status", "--config", config, "--json")
        assert code == 0, err
        doc = json.loads(out)
        pollers = doc["daemon"].get("pollers") or []
        busy = pollers and pollers[0]["ready"] and pollers[0]["in_flight"] >= 1
        return doc if doc["daemon"]["running"] and busy else None

    doc = daemon.wait_until(status, timeout=20, what="status shows a busy poller")
    queue = doc["queues"][0]
    assert queue["name"] == "work" and queue["url"] == urls["url"] and queue["error"] is None
    assert queue["visible"] + queue["in_flight"] == 3 and queue["in_flight"] >= 1
    assert queue["delayed"] == 0 and queue["depth"] == 3
    assert queue["dlq"]["url"] == urls["dlq"] and queue["dlq"]["depth"] == 1
    poller = doc["daemon"]["pollers"][0]
    assert poller["pid"] in daemon.children()
    assert doc["daemon"]["pid"] == daemon.pid and doc["daemon"]["status_file"] == str(
        run_dir / "status.json")
    assert doc["depth"] == 3 and doc["rate_scope"] == "this host" and doc["errors"] == []


def test_status_without_a_daemon_says_so(sqs, make_queue, sqs_endpoint, tmp_path, capsys):
    urls = make_queue("idle")
    config = make_config(tmp_path, sqs_endpoint, {"work": {"url": urls["url"]}})
    send(sqs, urls["url"], 2)

    code, out, _ = run(capsys, "status", "--config", config)
    assert code == 0
    assert "Queue Depth: 2, Rate: N/A (no daemon on this host), ETA: N/A" in out
    assert "Daemon: not running on this host" in out
    code, out, _ = run(capsys, "status", "--config", config, "--json")
    doc = json.loads(out)
    assert doc["daemon"]["running"] is False and doc["rate_per_min"] is None
    assert doc["eta_min"] is None and doc["queues"][0]["visible"] == 2

    # A status.json the master stopped writing long ago is not a running daemon.
    write_status(tmp_path / "run", written_at=time.time() - 300)
    code, out, _ = run(capsys, "status", "--config", config)
    assert "Daemon: not running on this host" in out and "last written 5 min ago" in out


def test_status_shows_rate_and_eta_in_the_seed_style(sqs, make_queue, sqs_endpoint, tmp_path,
                                                     capsys):
    urls = make_queue("eta")
    config = make_config(tmp_path, sqs_endpoint, {"work": {"url": urls["url"]}})
    send(sqs, urls["url"], 20)
    write_status(tmp_path / "run", rate_per_min=10.0)

    code, out, _ = run(capsys, "status", "--config", config)
    assert code == 0
    assert "Queue Depth: 20, Rate: 10/min (this host), ETA: 2 min" in out
    assert "Daemon: running" in out and "1/1 pollers ready" in out
    assert "\x1b[" not in out


def test_status_warns_about_a_queue_without_a_dlq(make_queue, sqs_endpoint, tmp_path, capsys):
    guarded, bare = make_queue("guarded"), make_queue("bare", dlq=False)
    config = make_config(tmp_path, sqs_endpoint, {"guarded": {"url": guarded["url"]},
                                                  "bare": {"url": bare["url"]}})
    code, out, err = run(capsys, "status", "--config", config)
    assert code == 0
    assert [line for line in out.splitlines() if line.startswith("bare ")][0].endswith(
        "(none) (!)")
    assert err.count("warning:") == 1
    assert "queue bare has no DLQ (no dlq_url, no RedrivePolicy)" in err
    assert "RedrivePolicy" in err and "forever" in err
    code, out, _ = run(capsys, "status", "--config", config, "--json")
    doc = json.loads(out)
    assert len(doc["warnings"]) == 1 and doc["warnings"][0].startswith("queue bare has no DLQ")


def test_status_names_the_queue_sqs_cannot_reach(tmp_path, capsys):
    config = make_config(tmp_path, "http://127.0.0.1:1",
                         {"work": {"url": "http://127.0.0.1:1/123456789012/work"}})
    code, out, err = run(capsys, "status", "--config", config)
    assert code == 69
    assert "queue work (http://127.0.0.1:1/123456789012/work)" in err
    assert "EndpointConnectionError" in err
    # The depth of a queue nobody could read is not 0: unknown, the reason said once.
    assert "Queue Depth: unknown (cannot read work: see above), " in out
    assert out.endswith("ETA: unknown\n\nDaemon: not running on this host (no "
                        f"{tmp_path / 'run' / 'status.json'})\n")
    assert out.count("EndpointConnectionError") == 1
    code, out, _ = run(capsys, "status", "--config", config, "--json")
    doc = json.loads(out)
    assert doc["depth"] is None and doc["eta_min"] is None


def test_status_refuses_a_watch_interval_below_one_second(tmp_path, capsys):
    config = make_config(tmp_path, "http://127.0.0.1:1",
                         {"work": {"url": "http://127.0.0.1:1/123456789012/work"}})
    with pytest.raises(SystemExit) as exit_:
        run(capsys, "status", "--config", config, "--watch", "0")
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert "argument --watch: must be at least 1 s, got 0" in err


def test_status_watch_refreshes_until_ctrl_c(make_queue, sqs_endpoint, tmp_path):
    urls = make_queue("watch")
    config = make_config(tmp_path, sqs_endpoint, {"work": {"url": urls["url"]}})
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIP_WORKER_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vip_worker", "status", "--config", config, "--json",
         "--watch", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0, proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    docs = [json.loads(line) for line in lines]  # one compact document per refresh
    assert docs[0]["queues"][0]["name"] == "work" and docs[1]["checked_at"] > docs[0][
        "checked_at"]
