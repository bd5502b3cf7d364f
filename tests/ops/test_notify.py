"""sd_notify as systemd sees it: the real daemon talks to a socket the test binds.

The test plays systemd's part for a ``Type=notify`` unit with ``WatchdogSec=``: it sets
``NOTIFY_SOCKET`` and ``WATCHDOG_USEC`` and reads the datagrams the master sends, each
with a timeout (no fixed sleeps). Every process started is killed at teardown.
"""

from __future__ import annotations

import shutil
import signal
import socket
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.support.daemon import TEST_PLUGINS, Daemon, write_config
from tests.support.sqs import envelope
from tests.support.wait import wait_until
from vip_worker import exitcodes

pytestmark = pytest.mark.e2e

WATCHDOG_USEC = 2_000_000
TIMEOUT_S = 30.0


class NotifySocket:
    """A unix datagram socket in systemd's place; every datagram kept with its arrival time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.received: list[tuple[float, dict[str, str]]] = []
        self.cursor = 0  # wait_for looks at datagrams from here on

    def close(self) -> None:
        self.sock.close()

    def receive(self, timeout_s: float) -> bool:
        """Read one datagram into ``received``; False if none came within ``timeout_s``."""
        self.sock.settimeout(max(timeout_s, 0.001))
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return False
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        self.received.append((time.monotonic(), fields))
        return True

    def wait_for(self, what: str, predicate, timeout_s: float = TIMEOUT_S,
                 daemon: Daemon | None = None) -> dict[str, str]:
        """The first datagram after the cursor that satisfies ``predicate``; moves the cursor
        past it. Fails after ``timeout_s``, or at once when ``daemon`` exits."""
        def next_match() -> dict[str, str] | None:
            # Blocks on the socket (at most 0.2 s per datagram): the datagram is the event.
            while self.cursor < len(self.received) or self.receive(0.2):
                fields = self.received[self.cursor][1]
                self.cursor += 1
                if predicate(fields):
                    return fields
            return None

        def last_datagrams() -> str:
            seen = "\n".join(str(f) for _, f in self.received[-15:])
            err = daemon.err_path.read_text()[-2000:] if daemon else ""
            return f"last datagrams:\n{seen}\nstderr:\n{err}"

        return wait_until(next_match, timeout_s, interval_s=0, message=what,
                          fail_if=daemon and daemon.exited, details=last_datagrams)

    def times(self, key: str) -> list[float]:
        return [at for at, fields in self.received if key in fields]


def has(key: str, value: str = "1"):
    return lambda fields: fields.get(key) == value


@pytest.fixture
def notify_socket():
    # A short directory: a unix socket path is limited to 107 bytes.
    directory = Path(tempfile.mkdtemp(prefix="vw-notify-"))
    listener = NotifySocket(directory / "notify.sock")
    yield listener
    listener.close()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def run_daemon(tmp_path, sqs_endpoint):
    """``run_daemon(queues, env, **settings)`` -> Daemon; each is killed at teardown."""
    started: list[Daemon] = []

    def run(queues, env, **settings):
        settings.setdefault("plugin_dirs", [str(TEST_PLUGINS)])
        settings.setdefault("plugins", {"testjobs": {"ledger": str(tmp_path / "ledger.txt")}})
        workdir = tmp_path / f"daemon{len(started)}"
        workdir.mkdir()
        config = write_config(workdir / "vip-worker.toml", queues, **settings)
        daemon = Daemon(workdir, config, sqs_endpoint, env=env)
        started.append(daemon)
        return daemon

    yield run
    for daemon in started:
        daemon.kill()


def test_ready_status_watchdog_reload_and_stop(sqs, make_queue, run_daemon, notify_socket):
    urls = make_queue("notify")
    env = {"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    daemon = run_daemon({"work": {"url": urls["url"], "wait_time_s": 1}}, env,
                        processes=2, grace_period_s=5)

    # READY=1 once every poller serves: the status it carries counts them.
    ready = notify_socket.wait_for("READY=1", has("READY"), daemon=daemon)
    assert ready["STATUS"].startswith("2/2 pollers ready"), ready
    assert ready["MAINPID"] == str(daemon.pid)
    assert daemon.wait_for("poller.ready", count=2)
    assert daemon.wait_for("arbiter.ready")

    # STATUS= follows the work done.
    sqs.send_message(QueueUrl=urls["url"],
                     MessageBody=envelope(uuid.uuid4().hex[:24], "sleep", {"seconds": 0}))
    status = notify_socket.wait_for(
        "STATUS= with 1 succeeded", lambda f: "1 succeeded" in f.get("STATUS", ""),
        daemon=daemon)
    assert "READY" not in status

    # WATCHDOG=1 keeps coming, well within WATCHDOG_USEC.
    seen = len(notify_socket.times("WATCHDOG"))
    for _ in range(3):
        notify_socket.wait_for("WATCHDOG=1", has("WATCHDOG"), timeout_s=5, daemon=daemon)
    assert len(notify_socket.times("WATCHDOG")) >= seen + 3

    # HUP: RELOADING=1, then READY=1 again once the new generation serves.
    daemon.send(signal.SIGHUP)
    reloading = notify_socket.wait_for("RELOADING=1", has("RELOADING"), daemon=daemon)
    assert reloading["MONOTONIC_USEC"].isdigit()
    again = notify_socket.wait_for("READY=1 after the reload", has("READY"), daemon=daemon)
    assert again["STATUS"].startswith("2/2 pollers ready"), again
    assert daemon.events("arbiter.reloading", generation=1)
    assert len(daemon.events("poller.spawned", generation=1)) == 2

    # TERM: STOPPING=1, a graceful drain, exit 0.
    daemon.send(signal.SIGTERM)
    notify_socket.wait_for("STOPPING=1", has("STOPPING"), daemon=daemon)
    assert daemon.wait_exit(timeout=TIMEOUT_S) == exitcodes.OK
    assert daemon.events("poller.stopping", mode="graceful")
    while notify_socket.receive(0.1):  # whatever the master sent last
        pass
    after_stop = notify_socket.received[notify_socket.cursor:]
    assert not [f for _, f in after_stop if "READY" in f], after_stop

    # The watchdog was never starved, reload and stop included.
    fed = notify_socket.times("WATCHDOG")
    gaps = [b - a for a, b in zip(fed, fed[1:], strict=False)]
    assert gaps and max(gaps) < WATCHDOG_USEC / 1e6, gaps


def test_a_config_error_exits_78_without_ready(tmp_path, sqs_endpoint, notify_socket):
    """What RestartPreventExitStatus=78 relies on: a bad setting ends the start at once."""
    config = tmp_path / "vip-worker.toml"
    config.write_text('no_such_setting = 1\n[queues.work]\nurl = "http://127.0.0.1:9/q"\n')
    daemon = Daemon(tmp_path, config, sqs_endpoint,
                    env={"NOTIFY_SOCKET": str(notify_socket.path),
                         "WATCHDOG_USEC": str(WATCHDOG_USEC)})
    try:
        assert daemon.wait_exit(timeout=TIMEOUT_S) == exitcodes.CONFIG
        assert "no_such_setting" in daemon.err_path.read_text()
        while notify_socket.receive(0.1):
            pass
        assert not [f for _, f in notify_socket.received if "READY" in f]
    finally:
        daemon.kill()

