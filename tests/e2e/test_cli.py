"""The CLI's other commands, the crash-loop report, recycling, and the README's run command."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid

import pytest

from tests.support.daemon import TEST_PLUGINS
from tests.support.sqs import envelope
from vip_worker.dev.stack import vip_worker_command

pytestmark = pytest.mark.e2e


def vip(*args, env=None, timeout=60):
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("VIP_WORKER_", "ARTICLES_", "IMAGES_"))}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "vip_worker", *args], env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def test_config_shows_sources_and_masks_secrets():
    result = vip("config", "--json", env={
        "ARTICLES_QUEUE_URL": "http://127.0.0.1:1/123/articles",
        "VIP_WORKER_CONCURRENCY": "7",
        "AWS_SECRET_ACCESS_KEY": "supersecretvalue123",
        "VIP_WORKER_SQS_ENDPOINT_URL": "http://user:hunter2@127.0.0.1:9/"})
    assert result.returncode == 0, result.stderr
    rows = {r["key"]: r for r in json.loads(result.stdout)}
    assert rows["concurrency"] == {"key": "concurrency", "value": 7,
                                   "source": "env VIP_WORKER_CONCURRENCY"}
    assert rows["queues.articles.url"]["source"] == "env ARTICLES_QUEUE_URL"
    assert rows["processes"]["source"] == "default"
    assert "supersecretvalue123" not in result.stdout and "hunter2" not in result.stdout
    assert rows["sqs_endpoint_url"]["value"] == "http://user:****@127.0.0.1:9/"


def test_config_names_a_bad_value_and_exits_78():
    result = vip("config", env={"ARTICLES_QUEUE_URL": "http://127.0.0.1:1/1/a",
                                "VIP_WORKER_QUEUE_ARTICLES_VISIBILITY_TIMEOUT_S": "99999"})
    assert result.returncode == 78
    assert "queues.articles.visibility_timeout_s" in result.stderr
    assert "VIP_WORKER_QUEUE_ARTICLES_VISIBILITY_TIMEOUT_S" in result.stderr


def test_plugins_lists_origin_and_types():
    result = vip("plugins", "--json", env={"ARTICLES_QUEUE_URL": "http://127.0.0.1:1/1/a"})
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert plugins["articles"]["types"] == ["articles"]
    assert plugins["images"]["types"] == ["images"]
    assert plugins["articles"]["origin"].endswith(os.path.join("plugins", "articles"))


def test_plugins_names_a_type_registered_twice(tmp_path):
    for name in ("one", "two"):
        (tmp_path / f"{name}.py").write_text(
            "from vip_worker import hookimpl\n"
            "@hookimpl\n"
            "def vip_worker_register_handlers(register):\n"
            "    register('articles', lambda message, ctx: None)\n")
    result = vip("plugins", env={"ARTICLES_QUEUE_URL": "http://127.0.0.1:1/1/a",
                                 "VIP_WORKER_PLUGIN_DIRS": str(tmp_path)})
    assert result.returncode == 78
    assert "plugin 'two'" in result.stderr and "already registered by plugin 'one'" in (
        result.stderr)


def test_crash_loop_is_reported_with_backoff(tmp_path, make_queue, start_daemon):
    plugin_dir = tmp_path / "crashing"
    plugin_dir.mkdir()
    (plugin_dir / "crasher.py").write_text(
        "from vip_worker import hookimpl\n"
        "@hookimpl\n"
        "def vip_worker_poller_start(context):\n"
        "    raise RuntimeError('cannot reach the database')\n")
    urls = make_queue("crash")
    daemon = start_daemon({"work": {"url": urls["url"], "wait_time_s": 1}}, processes=1,
                          plugin_dirs=[str(TEST_PLUGINS), str(plugin_dir)],
                          crash_loop_threshold=3,
                          respawn_backoff_max_s=0.5)
    report = daemon.wait_for("arbiter.crash_loop", timeout=30)[0]
    assert report["failures"] == 3 and report["level"] == "CRITICAL"
    assert "cannot reach the database" in daemon.events("poller.start_hook_failed")[0]["error"]
    delayed = daemon.events("poller.respawn_delayed")
    assert [d["respawn_in_s"] for d in delayed[:2]] == [0.5, 0.5]
    assert daemon.proc.poll() is None  # reported, not exited


def test_poller_is_recycled_after_max_messages(sqs, make_queue, start_daemon):
    urls = make_queue("recycle")
    daemon = start_daemon({"work": {"url": urls["url"], "wait_time_s": 1}}, processes=1,
                          max_messages_per_poller=3)
    first = daemon.wait_for("poller.ready")[0]["pid"]
    jobs = [uuid.uuid4().hex[:24] for _ in range(5)]
    for job in jobs:
        sqs.send_message(QueueUrl=urls["url"], MessageBody=envelope(job, "sleep", {"seconds": 0}))
    for job in jobs:
        daemon.wait_for("message.succeeded", job_id=job)
    recycled = daemon.wait_for("poller.recycling")[0]
    assert recycled["pid"] == first and recycled["reason"] == "max_messages_per_poller"
    assert daemon.wait_for("poller.exited", poller_pid=first)[0]["exit_code"] == 4
    assert not daemon.events("poller.died")


def test_poller_is_recycled_when_its_memory_exceeds_max_rss(make_queue, start_daemon):
    urls = make_queue("rss")
    daemon = start_daemon({"work": {"url": urls["url"], "wait_time_s": 1}}, processes=1,
                          max_rss_mb=1)
    first = daemon.wait_for("poller.ready")[0]["pid"]
    recycled = daemon.wait_for("poller.recycling", timeout=30)[0]
    assert recycled["pid"] == first and recycled["reason"] == "max_rss_mb"
    assert recycled["rss_mb"] > 1
    daemon.wait_until(lambda: {r["pid"] for r in daemon.events("poller.ready")} - {first},
                      what="a fresh poller")


def test_plugin_from_an_installed_distribution_entry_point(tmp_path):
    site = tmp_path / "site"
    (site / "shop_plugin").mkdir(parents=True)
    (site / "shop_plugin" / "__init__.py").write_text(
        "from vip_worker import hookimpl\n"
        "@hookimpl\n"
        "def vip_worker_register_handlers(register):\n"
        "    register('orders', lambda message, ctx: None)\n")
    dist = site / "shop_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: shop-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[vip_worker.plugins]\nshop = shop_plugin\n")
    result = vip("plugins", "--json", env={"ARTICLES_QUEUE_URL": "http://127.0.0.1:1/1/a",
                                           "PYTHONPATH": str(site)})
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert plugins["shop"]["types"] == ["orders"]
    assert "entry point shop_plugin (shop-plugin)" == plugins["shop"]["origin"]


def test_readme_run_command_completes_its_demo_batch():
    result = vip("dev", "--exit-when-done", "--jobs", "4", "--processes", "1", "--latency",
                 "0.2", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "dev: demo batch done" in result.stdout
    lines = result.stdout.splitlines()
    # The job API ran beside the daemon, with a curl line to try it.
    assert [line for line in lines if line.startswith("dev: job API on http://127.0.0.1:")]
    assert [line for line in lines if line.startswith("dev: dashboard on http://127.0.0.1:")
            and line.split()[3].endswith("/dashboard/")]
    assert [line for line in lines if "curl -s -X POST http://127.0.0.1:" in line]
    assert len([line for line in lines if " completed  100%" in line]) == 4
    # Every step each job records is shown, the 80 % one too (the store keeps only the last).
    assert len([line for line in lines if " processing  80%  Saving content..." in line]) == 4
    # The banner names a vip-worker a user can run (.venv/bin/ is not on the PATH).
    [banner] = [line for line in lines if line.startswith("dev: job store ")]
    command = vip_worker_command()  # this Python's: .venv/bin/vip-worker under make test
    assert command != "vip-worker" or shutil.which("vip-worker")
    assert f" {command} jobs list;" in banner
    assert [line for line in lines if " failed " in line and "no-such-mode" in line]
    assert "dead-lettered: PermanentError: unknown generation mode" in result.stdout
    # Its temporary state directory (job store, status.json) is gone with it.
    [store] = [line.split()[3] for line in lines if line.startswith("dev: job store ")]
    assert os.path.basename(os.path.dirname(store)).startswith("vip-worker-dev-")
    assert not os.path.exists(os.path.dirname(store))


def test_ctrl_c_in_dev_says_it_stops_and_exits_130():
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VIP_WORKER_", "ARTICLES_", "IMAGES_"))}
    proc = subprocess.Popen([sys.executable, "-m", "vip_worker", "dev", "--jobs", "1",
                             "--processes", "1", "--latency", "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("dev: demo batch done; serving until Ctrl-C"):
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130, out + err
    assert "dev: Ctrl-C: stopping the daemon, the stub service and the local SQS\n" in out
    assert out.endswith("dev: stopped\n")


def test_help_lists_every_command():
    result = vip("--help")
    for command in ("run", "config", "plugins", "dev"):
        assert command in result.stdout


def test_run_refuses_to_start_without_any_handler(tmp_path, make_queue, start_daemon):
    empty = tmp_path / "no_plugins"
    empty.mkdir()
    urls = make_queue("nohandlers")
    daemon = start_daemon({"work": {"url": urls["url"]}}, plugin_dirs=[str(empty)], plugins={})
    assert daemon.wait_exit() == 78
    assert "no plugin registers a handler" in daemon.err_path.read_text()
