"""etc/supervisord.conf, run for real: supervisord starts the daemon against moto, and
``supervisorctl stop`` is a graceful stop that lets a running job finish.

The shipped file is rendered into a temporary directory (its placeholder paths replaced,
the program run as this user with this interpreter); nothing else about it changes, so
the shell that sources the secrets file is exercised too: the SQS endpoint reaches the
daemon only through that file. Teardown kills supervisord's process group and every
process carrying this test's tag, whatever happened.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.support.daemon import TEST_PLUGINS, write_config
from tests.support.sqs import envelope, queue_counts
from tests.support.wait import wait_until
from vip_worker import config
from vip_worker.logconfig import message_records

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "etc" / "supervisord.conf"
ENV_EXAMPLE = ROOT / "etc" / "vip-worker.env.example"
BIN = Path(sys.executable).parent
TIMEOUT_S = 30.0
# Placeholder -> directory under the test's root; the longest first.
PLACES = {"/etc/vip-worker": "etc", "/var/log/vip-worker": "log", "/run/vip-worker": "run",
          "/var/lib/vip-worker": "lib", "/opt/vip-worker": "opt"}
SHIPPED_COMMAND = "/opt/vip-worker/.venv/bin/vip-worker"


def render(root: Path) -> Path:
    """The shipped conf with its paths under ``root`` and the program run by this user."""
    text = CONF.read_text()
    assert SHIPPED_COMMAND in text
    text = text.replace(SHIPPED_COMMAND, f"{sys.executable} -m vip_worker")
    for place, name in PLACES.items():
        (root / name).mkdir()
        text = text.replace(place, str(root / name))
    # supervisord runs as root and the program as vip-worker; here both run as this user.
    text, count = re.subn(r"(?m)^user=(vip-worker|root)$", f"user={getpass.getuser()}", text)
    assert count == 3  # supervisord, the daemon, the job API
    # The job API on a free port: tests run side by side.
    text = text.replace("vip_worker web --config", "vip_worker web --port 0 --config")
    assert "vip-worker/" not in text.replace(str(root), ""), "a placeholder path is left"
    path = root / "etc" / "supervisord.conf"
    path.write_text(text)
    return path


def tagged_pids(tag: str) -> list[int]:
    """Processes whose environment carries ``tag``: the daemon and its pollers."""
    needle = f"VW_TEST_TAG={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


class Supervisor:
    """supervisord -n in its own process group, and supervisorctl against it."""

    def __init__(self, root: Path, conf: Path, tag: str) -> None:
        self.root = root
        self.conf = conf
        self.tag = tag
        self.log = root / "log" / "vip-worker.log"
        self.own_log = root / "log" / "supervisord.log"
        self.proc = subprocess.Popen(
            [str(BIN / "supervisord"), "-n", "-c", str(conf)], cwd=root,
            stdout=open(root / "supervisord.out", "w"), stderr=subprocess.STDOUT,
            start_new_session=True)

    def ctl(self, *args: str, timeout: float = TIMEOUT_S) -> str:
        result = subprocess.run([str(BIN / "supervisorctl"), "-c", str(self.conf), *args],
                                capture_output=True, text=True, timeout=timeout)
        return result.stdout + result.stderr

    def events(self, event: str, **fields) -> list[dict]:
        found = []
        text = self.log.read_text() if self.log.exists() else ""
        for line in text.splitlines():
            try:
                records = message_records(json.loads(line))
            except ValueError:
                continue
            found += [r for r in records if r.get("event") == event
                      and all(r.get(k) == v for k, v in fields.items())]
        return found

    def wait_until(self, predicate, what: str, timeout: float = TIMEOUT_S):
        """``wait_until`` that stops when supervisord exits and shows its logs."""
        return wait_until(predicate, timeout, message=what, details=self.dump,
                          fail_if=lambda: self.proc.poll() is not None
                          and f"supervisord exited ({self.proc.poll()})")

    def dump(self) -> str:
        parts = []
        for path in (self.root / "supervisord.out", self.own_log, self.log):
            if path.exists():
                parts.append(f"--- {path.name}\n{path.read_text()[-3000:]}")
        return "\n".join(parts)

    def kill(self) -> None:
        """supervisord's group first (it restarts nothing after that), then the program's
        processes, which live in a process group of their own."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for pid in tagged_pids(self.tag):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def ledger_has(ledger: Path, kind: str, job_id: str) -> bool:
    return any(line.split()[:2] == [kind, job_id] for line in ledger.read_text().splitlines())


@pytest.fixture
def supervisor(sqs_endpoint, make_queue):
    """A running supervisord with vip-worker serving a fresh queue: (Supervisor, urls, ledger)."""
    if not (BIN / "supervisord").exists():
        pytest.fail(f"{BIN / 'supervisord'} is missing: pip install 'supervisor>=4.2' "
                    "(it is in the test extra)")
    # A short root: supervisord's unix socket path must stay under 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="vw-sv-"))
    tag = uuid.uuid4().hex
    conf = render(root)
    urls = make_queue("supervised")
    ledger = root / "ledger.txt"
    ledger.touch()
    write_config(root / "etc" / "vip-worker.toml", {"work": {"url": urls["url"],
                                                             "wait_time_s": 1}},
                 processes=1, grace_period_s=5, plugin_dirs=[str(TEST_PLUGINS)],
                 plugins={"testjobs": {"ledger": str(ledger)}})
    (root / "etc" / "vip-worker.env").write_text(
        f"# as in etc/vip-worker.env.example: NAME='value'\n"
        f"AWS_ENDPOINT_URL_SQS='{sqs_endpoint}'\nVW_TEST_TAG='{tag}'\n")
    running = Supervisor(root, conf, tag)
    try:
        yield running, urls, ledger
    finally:
        running.kill()
        shutil.rmtree(root, ignore_errors=True)


def test_supervisorctl_stop_is_graceful(sqs, supervisor):
    sv, urls, ledger = supervisor
    first = uuid.uuid4().hex[:24]
    sqs.send_message(QueueUrl=urls["url"], MessageBody=envelope(first, "sleep", {"seconds": 0}))
    sv.wait_until(lambda: ledger_has(ledger, "end", first), "the first job to be processed")
    assert re.search(r"vip-worker\s+(RUNNING|STARTING)", sv.ctl("status", "vip-worker"))
    master = int(sv.ctl("pid", "vip-worker").strip())
    assert master in tagged_pids(sv.tag), "the env file was not sourced"

    long_job = uuid.uuid4().hex[:24]
    sqs.send_message(QueueUrl=urls["url"],
                     MessageBody=envelope(long_job, "sleep", {"seconds": 2}))
    sv.wait_until(lambda: ledger_has(ledger, "start", long_job), "the long job to start")
    stopped = sv.ctl("stop", "vip-worker", timeout=60)
    assert "vip-worker: stopped" in stopped, stopped + sv.dump()

    # The running job finished and its message was deleted: nothing was cut short.
    assert ledger_has(ledger, "end", long_job), ledger.read_text()
    assert sv.events("message.succeeded", job_id=long_job), sv.dump()
    assert sv.events("poller.stopping", mode="graceful"), sv.dump()
    assert sv.events("arbiter.stopped", mode="graceful"), sv.dump()
    assert queue_counts(sqs, urls["url"]) == (0, 0)
    # supervisord saw a clean exit of the process it started, and no restart.
    assert "STOPPED" in sv.ctl("status", "vip-worker")
    assert "stopped: vip-worker (exit status 0)" in sv.own_log.read_text(), sv.dump()
    # The job API program runs beside it (its env carries the tag too): stop it first.
    assert re.search(r"vip-worker-web\s+RUNNING", sv.ctl("status", "vip-worker-web")), \
        sv.dump()
    assert "vip-worker-web: stopped" in sv.ctl("stop", "vip-worker-web"), sv.dump()
    assert not tagged_pids(sv.tag), "a poller outlived its master"


def test_the_example_env_file_survives_the_shell(tmp_path):
    """The program's shell sources the env file: the example's quoting keeps a MongoDB URI
    with ``&`` and ``?`` whole, and every line is a plain NAME='value' systemd reads too."""
    lines = [line.removeprefix("# ") for line in ENV_EXAMPLE.read_text().splitlines()]
    assignments = [line for line in lines if re.match(r"^[A-Z][A-Z0-9_]*=", line)]
    assert {line.split("=", 1)[0] for line in assignments} >= {
        "MONGODB_URI", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    for line in assignments:
        assert re.fullmatch(r"[A-Z][A-Z0-9_]*='[^']*'", line), line
    env_file = tmp_path / "vip-worker.env"
    env_file.write_text("\n".join(assignments) + "\n")
    script = f"set -a; . {env_file}; set +a; exec env -0"
    result = subprocess.run(["/bin/sh", "-c", script], capture_output=True, env={},
                            timeout=10, check=True)
    environ = dict(item.split("=", 1) for item in result.stdout.decode().split("\0") if item)
    expected = {line.split("=", 1)[0]: line.split("=", 1)[1][1:-1] for line in assignments}
    assert {k: environ.get(k) for k in expected} == expected
    settings = config.load(None, environ=environ)
    assert settings.mongodb_uri == expected["MONGODB_URI"]
    assert "&w=majority" in settings.mongodb_uri


def documented_local_render() -> str:
    """The first shell block of docs/deploy.md's "Try it locally first"."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    section = text.split("### Try it locally first", 1)[1]
    return section.split("```sh\n", 1)[1].split("\n```", 1)[0]


def test_the_documented_local_try_renders_a_config_supervisord_runs(sqs, make_queue,
                                                                    sqs_endpoint):
    if not (BIN / "supervisord").exists():
        pytest.fail(f"{BIN / 'supervisord'} is missing: pip install 'supervisor>=4.2'")
    urls = make_queue("local-try")
    env = {**os.environ, "ARTICLES_QUEUE_URL": urls["url"], "IMAGES_QUEUE_URL": urls["url"]}
    script = documented_local_render()
    result = subprocess.run(["bash", "-euc", script], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    root = Path(result.stdout.strip().splitlines()[-1])
    tag = uuid.uuid4().hex
    running = None
    try:
        conf = root / "etc" / "supervisord.conf"
        rendered = conf.read_text()
        outside = rendered.replace(str(root), "").replace(str(ROOT), "")
        assert "vip-worker/" not in outside, "a placeholder path is left"
        assert f"exec {ROOT}/.venv/bin/vip-worker run --config {root}/etc/" in rendered
        assert rendered.count(f"user={getpass.getuser()}\n") == 3  # + the job API
        with open(root / "etc" / "vip-worker.env", "a") as env_file:  # the local SQS, a tag
            env_file.write(f"AWS_ENDPOINT_URL_SQS='{sqs_endpoint}'\nVW_TEST_TAG='{tag}'\n")
        running = Supervisor(root, conf, tag)
        running.wait_until(lambda: running.events("arbiter.ready"), "the daemon to serve")
        assert re.search(r"vip-worker\s+(RUNNING|STARTING)", running.ctl("status", "vip-worker"))
        assert "running without any HTTP authentication checking" in (
            running.own_log.read_text())  # the line the docs explain
    finally:
        if running is not None:
            running.kill()
        shutil.rmtree(root, ignore_errors=True)
