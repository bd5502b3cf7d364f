"""Run ``vip-worker run`` as a real process group and follow its JSON log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.wait import wait_until
from vip_worker.logconfig import message_records
from vip_worker.testing import write_config  # noqa: F401 - the tests import it from here

E2E_DIR = Path(__file__).resolve().parents[1] / "e2e"
TEST_PLUGINS = E2E_DIR / "plugins"  # the testjobs plugin: sleep, fail, ... handlers
DEFAULT_TIMEOUT_S = 30.0


def ledger_lines(path, kind=None, job_id=None):
    """The testjobs plugin's ``start|end <jobId> <pid>`` lines, split, optionally filtered."""
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows
            if (kind is None or r[0] == kind) and (job_id is None or r[1] == job_id)]


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
        def enough():
            found = self.events(event, **fields)
            return found if len(found) >= count else None

        return wait_until(enough, timeout, message=f"{count} x {event} {fields}",
                          fail_if=None if master_may_exit else self.exited,
                          details=lambda: (f"got {len(self.events(event, **fields))}. "
                                           + self.tail()))

    def wait_until(self, predicate, timeout: float = DEFAULT_TIMEOUT_S, what: str = ""):
        """``wait_until`` with the daemon's log tail in its failure (it goes on waiting if
        the master exits: some tests wait for what happens after)."""
        return wait_until(predicate, timeout, message=what, details=self.tail)

    def exited(self) -> str:
        """Why a wait cannot succeed any more ("the master exited (code)"), or ""."""
        code = self.proc.poll()
        return "" if code is None else f"the master exited ({code})"

    def tail(self) -> str:
        """The last log records and stderr, for a failure message."""
        self.read()
        return (f"Exit code: {self.proc.poll()}. Last lines:\n"
                + "\n".join(json.dumps(r) for r in self.records[-25:])
                + "\nstderr:\n" + self.err_path.read_text()[-3000:])

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
