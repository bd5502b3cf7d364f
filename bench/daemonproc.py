"""One ``vip-worker run`` under test: its config, its process group, its JSON log.

The daemon runs as shipped (``python -m vip_worker run --config FILE``), stdout (the JSON
log) to a file the harness follows. Only the settings a scenario names differ from the
defaults; ``plugin_dirs`` points at ``bench/plugins`` and ``state_dir`` at a temp dir.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from pathlib import Path

from bench import procs
from bench.endpoint import base_env
from vip_worker.logconfig import SUCCEEDED_BATCH, message_records
from vip_worker.testing import write_config

BENCH_PLUGINS = Path(__file__).resolve().parent / "plugins"
SUCCEEDED = f'"{SUCCEEDED_BATCH}"'  # one line per delete batch, with "count"
COUNT = re.compile(r'"count": (\d+)')


class BenchDaemon:
    """``BenchDaemon(workdir, endpoint_url, {"work": url}, processes=2, ...)``; ``stop()``."""

    def __init__(self, workdir: Path, endpoint_url: str, queues: dict[str, str],
                 queue_settings: dict | None = None, stamp_file: str = "", **worker) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.log_path = workdir / "daemon.log"
        worker.setdefault("plugin_dirs", [str(BENCH_PLUGINS)])
        worker.setdefault("state_dir", str(workdir / "state"))
        tables = {name: {"url": url, **(queue_settings or {})} for name, url in queues.items()}
        plugins = {"benchjobs": {"stamp_file": stamp_file}} if stamp_file else {}
        self.config = write_config(workdir / "vip-worker.toml", tables, plugins=plugins,
                                   **worker)
        env = base_env()
        env["AWS_ENDPOINT_URL_SQS"] = endpoint_url
        self.proc = procs.start_group(
            [sys.executable, "-m", "vip_worker", "run", "--config", str(self.config)],
            str(self.log_path), env=env)
        self.cpu = procs.TreeCpu(self.proc.pid)
        self.offset = 0
        self.partial = b""
        self.succeeded = 0
        self.events: dict[str, int] = {}
        self.keep: set[str] = set()  # events whose records are kept in ``records``
        self.records: list[dict] = []
        self.keep_ids = False
        self.ids: list[str] = []

    @property
    def pid(self) -> int:
        return self.proc.pid

    def pump(self) -> int:
        """Read new log lines; return the count of succeeded messages so far."""
        with open(self.log_path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        if not data:
            return self.succeeded
        self.offset += len(data)
        data = self.partial + data
        lines = data.split(b"\n")
        self.partial = lines.pop()
        for raw in lines:
            line = raw.decode(errors="replace")
            if SUCCEEDED in line:
                found = COUNT.search(line)
                self.succeeded += int(found.group(1)) if found else 0
                if not self.keep_ids:
                    continue
            try:
                parsed = json.loads(line)
            except ValueError:
                continue  # stderr text (tracebacks) shares the file
            for record in message_records(parsed):
                event = record.get("event", "")
                self.events[event] = self.events.get(event, 0) + 1
                if event == "message.succeeded" and self.keep_ids:
                    self.ids.append(record.get("message_id", ""))
                if event in self.keep:
                    self.records.append(record)
        return self.succeeded

    def count(self, event: str) -> int:
        self.pump()
        if event == "message.succeeded":
            return self.succeeded
        return self.events.get(event, 0)

    def wait_ready(self, pollers: int, timeout_s: float = 60.0) -> None:
        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited ({self.proc.returncode}); log tail:\n"
                                   + self.log_path.read_text()[-3000:])
            return self.count("poller.ready") >= pollers or self.status_ready(pollers)

        procs.wait_until(ready, timeout_s, f"{pollers} x poller.ready")

    def status(self) -> dict:
        """The master's status.json (rewritten every 2 s), {} before the first."""
        try:
            return json.loads((self.workdir / "state" / "run" / "status.json").read_text())
        except (OSError, ValueError):
            return {}

    def status_ready(self, pollers: int) -> bool:
        snapshot = self.status()
        return sum(1 for p in snapshot.get("pollers", []) if p.get("ready")) >= pollers

    def pollers(self) -> list[int]:
        return procs.children(self.pid)

    def rss_mb(self) -> float:
        return procs.tree_rss_mb(self.pid)

    def threads(self) -> int:
        return sum(procs.threads(p) for p in procs.tree(self.pid))

    def stop(self, sig: int = signal.SIGINT, timeout_s: float = 15.0) -> None:
        """Stop the whole group (SIGINT: fast stop, running work handed back), then KILL."""
        procs.stop_group(self.proc, sig, timeout_s)

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text()[-chars:]
        except OSError:
            return ""


def kill_all(daemons: list[BenchDaemon]) -> None:
    for daemon in daemons:
        try:
            os.killpg(daemon.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
