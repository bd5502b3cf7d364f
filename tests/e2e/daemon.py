"""Run ``vip-worker run`` as a real process group and follow its JSON log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from vip_worker.logconfig import message_records
from vip_worker.testing import write_config  # noqa: F401 - the e2e tests import it from here

HERE = Path(__file__).resolve().parent
TEST_PLUGINS = HERE / "plugins"
DEFAULT_TIMEOUT_S = 30.0


class Daemon:
    """One ``vip-worker run`` process group; stdout is the JSON log, read line by line."""

    def __init__(self, workdir: Path, config: Path | None, endpoint: str,
                 extra_args: tuple[str, ...] = (), env: dict | None = None) -> None:
        self.log_path = workdir / "daemon.log"
        self.err_path = workdir / "daemon.err"
        args = [sys.executable, "-m", "vip_worker", "run"]
        if config is not None:
            args += ["--config", str(config)]
        full_env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("VIP_WORKER_", "ARTICLES_", "IMAGES_"))}
        full_env.update({"AWS_ENDPOINT_URL_SQS": endpoint, "PYTHONUNBUFFERED": "1"})
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [*args, *extra_args], env=full_env, stdout=open(self.log_path, "w"),
            stderr=open(self.err_path, "w"), start_new_session=True)
        self.records: list[dict] = []
        self.offset = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read(self) -> list[dict]:
        with open(self.log_path) as fh:
            fh.seek(self.offset)
            data = fh.read()
        complete, _, _ = data.rpartition("\n")
        if complete:
            self.offset += len(complete.encode()) + 1
            for line in complete.split("\n"):
                try:
                    # A messages.succeeded line: one message.succeeded record per message.
                    self.records.extend(message_records(json.loads(line)))
                except ValueError:
                    self.records.append({"event": "(not json)", "line": line})
        return self.records

    def events(self, event: str, **fields) -> list[dict]:
        return [r for r in self.read() if r.get("event") == event
                and all(r.get(k) == v for k, v in fields.items())]

    def wait_for(self, event: str, count: int = 1, timeout: float = DEFAULT_TIMEOUT_S,
                 master_may_exit: bool = False, **fields) -> list[dict]:
        """Wait until ``count`` lines of ``event`` with ``fields`` were logged.

        Fails at once when the master exits first, unless ``master_may_exit``.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = self.events(event, **fields)
            if len(found) >= count:
                return found
            exited = self.proc.poll() is not None and not master_may_exit
            if exited:
                found = self.events(event, **fields)  # the last lines before the exit
                if len(found) >= count:
                    return found
            if exited or time.monotonic() > deadline:
                raise AssertionError(
                    f"{'exited' if exited else 'timed out'} waiting for {count} x {event} "
                    f"{fields}; "
                    f"got {len(found)}. Exit code: {self.proc.poll()}. Last lines:\n"
                    + "\n".join(json.dumps(r) for r in self.records[-25:])
                    + "\nstderr:\n" + self.err_path.read_text()[-3000:])
            time.sleep(0.05)

    def wait_until(self, predicate, timeout: float = DEFAULT_TIMEOUT_S, what: str = ""):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = predicate()
            if result:
                return result
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")

    def children(self) -> list[int]:
        """The master's live child pids (its pollers)."""
        try:
            text = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def send(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait_exit(self, timeout: float = DEFAULT_TIMEOUT_S) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """Kill the whole process group (the master and every poller), whatever state."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
