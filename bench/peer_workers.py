"""Scenario 8: peer workers on the same endpoint, message count and drain method.

Each peer is installed on first use into its own environment under ``bench/.venvs/``
(gitignored): a peer that cannot be installed is reported with the reason, never faked.
Our own scripts live in ``bench/peers/``; no third-party source is kept in the repo.

- Celery (``celery[sqs]``, kombu's SQS transport, pycurl): prefork pool, task_acks_late.
- bbc/sqs-consumer (Node.js): ``handleMessage`` (a DeleteMessage per message, its usual
  style) and ``handleMessageBatch`` (one DeleteMessageBatch per receive).
- sqs-workers: ``process_queue`` of a JobQueue, JSON codec, one process.
- PyQS: ``pyqs`` CLI, one read process and one process worker.

Progress: sqs-consumer writes its count to a file; the Python peers log nothing per
message at their default levels, so their progress is the queue's depth (one
GetQueueAttributes per 50 ms from the harness, the same for each of them).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench import procs, sqsutil
from bench.drain import Consumer, depth_progress
from bench.endpoint import VENVS, base_env

PEERS = Path(__file__).resolve().parent / "peers"
DEPTH_EVERY_S = 0.05


class Unavailable(Exception):
    """The peer cannot be installed or run here; the message says why."""


def run_quiet(args: list[str], cwd: str | None = None, timeout_s: float = 600) -> None:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout_s)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-6:]
        raise Unavailable(f"`{' '.join(args[:4])}...` failed: " + " | ".join(tail))


def python_venv(name: str, packages: list[str]) -> Path:
    venv = VENVS / name
    stamp = venv / ".installed"
    if not stamp.exists():
        print(f"bench: installing {' '.join(packages)} into {venv} (once)", file=sys.stderr)
        shutil.rmtree(venv, ignore_errors=True)
        run_quiet([sys.executable, "-m", "venv", str(venv)])
        run_quiet([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *packages])
        stamp.touch()
    return venv / "bin" / "python"


def node_modules() -> Path:
    target = VENVS / "node"
    stamp = target / ".installed"
    if not stamp.exists():
        if shutil.which("node") is None or shutil.which("npm") is None:
            raise Unavailable("node/npm not found on PATH")
        print(f"bench: npm install sqs-consumer into {target} (once)", file=sys.stderr)
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(PEERS / "package.json", target / "package.json")
        run_quiet(["npm", "install", "--no-audit", "--no-fund", "--silent"], cwd=str(target))
        stamp.touch()
    return target / "node_modules"


def installed_version(python: Path, dist: str) -> str:
    result = subprocess.run([str(python), "-c", "import importlib.metadata as m, sys; "
                             f"print(m.version({dist!r}))"], capture_output=True, text=True)
    return result.stdout.strip() or "?"


class PeerConsumer(Consumer):
    """A peer worker as a process group; progress from a file or from the queue depth."""

    progress_file = False

    def __init__(self, endpoint_url: str) -> None:
        self.endpoint_url = endpoint_url
        self.proc: subprocess.Popen | None = None
        self.workdir: Path | None = None
        self.url = ""

    def command(self, url: str, workdir: Path) -> tuple[list[str], dict, str]:
        raise NotImplementedError

    def start(self, url: str, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir, self.url = workdir, url
        args, env, cwd = self.command(url, workdir)
        self.proc = procs.start_group(args, str(workdir / "peer.log"), env=env, cwd=cwd)

    def wait_ready(self) -> None:
        # No peer announces readiness the same way: wait until its process tree stops
        # burning boot CPU (imports done, first long poll parked).
        cpu = procs.TreeCpu(self.proc.pid)
        last = cpu.sample()
        quiet = 0
        deadline = time.monotonic() + 60
        while quiet < 3:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}): "
                                   + (self.workdir / "peer.log").read_text()[-1500:])
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} still busy after 60 s")
            time.sleep(0.25)
            now = cpu.sample()
            quiet = quiet + 1 if now - last < 0.01 else 0
            last = now

    def consumed(self) -> int:
        if self.progress_file:
            try:
                return int((self.workdir / "progress").read_text().strip() or 0)
            except (OSError, ValueError):
                return 0
        return depth_progress(self, DEPTH_EVERY_S)

    def roots(self) -> list[int]:
        return [self.proc.pid]

    def stop(self) -> None:
        procs.stop_group(self.proc, signal.SIGTERM, 10)


class CeleryPeer(PeerConsumer):
    def __init__(self, endpoint_url: str, concurrency: int = 2) -> None:
        super().__init__(endpoint_url)
        self.python = python_venv("celery", ["celery[sqs]"])
        self.concurrency = concurrency
        version = installed_version(self.python, "celery")
        self.name = f"celery {version} sqs"
        self.settings = (f"celery[sqs] {version}, kombu {installed_version(self.python, 'kombu')}"
                         f"; prefork -c {concurrency}, task_acks_late=True, prefetch x4, "
                         "wait_time_seconds=20, no result backend, log level WARNING, "
                         "--without-gossip/mingle/heartbeat")
        self.bodies: list[str] = []
        self.env: dict = {}

    def env_for(self, url: str) -> dict:
        env = base_env()
        env.update({"BENCH_ENDPOINT": self.endpoint_url, "BENCH_QUEUE_URL": url,
                    "PYTHONPATH": str(PEERS)})
        return env

    def make_bodies(self, count: int, workdir: Path, url: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "celery-bodies.txt"
        result = subprocess.run([str(self.python), str(PEERS / "celery_app.py"), "bodies",
                                 str(count), str(path)], env=self.env_for(url),
                                capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise Unavailable("making Celery messages failed: " + result.stderr[-500:])
        self.bodies = path.read_text().splitlines()

    def body(self, n: int) -> str:
        return self.bodies[n % len(self.bodies)]

    def command(self, url, workdir):
        celery = str(self.python.parent / "celery")
        return ([celery, "-A", "celery_app", "worker", "-Q", "bench", "--pool", "prefork",
                 "-c", str(self.concurrency), "--without-gossip", "--without-mingle",
                 "--without-heartbeat", "--loglevel", "WARNING"], self.env_for(url), str(PEERS))


class NodePeer(PeerConsumer):
    progress_file = True

    def __init__(self, endpoint_url: str, mode: str) -> None:
        super().__init__(endpoint_url)
        self.modules = node_modules()
        self.mode = mode
        version = json.loads((self.modules / "sqs-consumer" / "package.json").read_text())[
            "version"]
        node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout
        style = "handleMessageBatch" if mode == "batch" else "handleMessage"
        self.name = f"sqs-consumer {style}"
        self.settings = (f"sqs-consumer {version} on node {node.strip()}, {style}, batchSize=10, "
                         "waitTimeSeconds=20, one process" +
                         (", one DeleteMessageBatch per receive" if mode == "batch"
                          else ", one DeleteMessage per message"))

    def body(self, n: int) -> str:
        return sqsutil.envelope("noop", f"job-{n}")

    def command(self, url, workdir):
        env = base_env()
        env["NODE_PATH"] = str(self.modules)
        return (["node", str(PEERS / "sqs_consumer.js"), url, self.endpoint_url,
                 str(workdir / "progress"), self.mode], env, str(PEERS))


class SqsWorkersPeer(PeerConsumer):
    def __init__(self, endpoint_url: str) -> None:
        super().__init__(endpoint_url)
        self.python = python_venv("sqsworkers", ["sqs-workers", "typing_extensions"])
        version = installed_version(self.python, "sqs-workers")
        self.name = "sqs-workers"
        self.settings = (f"sqs-workers {version}: JobQueue.process_queue(wait_second=20), "
                         "JSON codec, one process, deletes batched per receive")

    def body(self, n: int) -> dict:
        return {"MessageBody": "{}", "MessageAttributes": {
            "ContentType": {"StringValue": "json", "DataType": "String"},
            "JobContext": {"StringValue": "{}", "DataType": "String"},
            "JobName": {"StringValue": "noop", "DataType": "String"}}}

    def command(self, url, workdir):
        env = base_env()
        env["AWS_ENDPOINT_URL_SQS"] = self.endpoint_url
        return ([str(self.python), str(PEERS / "sqs_workers_app.py"), url.rsplit("/", 1)[1]],
                env, str(PEERS))


class PyqsPeer(PeerConsumer):
    def __init__(self, endpoint_url: str) -> None:
        super().__init__(endpoint_url)
        self.python = python_venv("pyqs", ["pyqs"])
        version = installed_version(self.python, "pyqs")
        self.name = "pyqs"
        self.settings = (f"pyqs {version}: `pyqs QUEUE --concurrency 1 --batchsize 10`, "
                         "a read process + a process worker, one DeleteMessage per message")

    def body(self, n: int) -> str:
        return json.dumps({"task": "pyqs_tasks.noop", "args": [], "kwargs": {}})

    def command(self, url, workdir):
        env = base_env()
        env.update({"AWS_ENDPOINT_URL_SQS": self.endpoint_url, "PYTHONPATH": str(PEERS)})
        pyqs = str(self.python.parent / "pyqs")
        return ([pyqs, url.rsplit("/", 1)[1], "--concurrency", "1", "--batchsize", "10",
                 "--region", "us-east-1"], env, str(PEERS))


PEER_FACTORIES = {
    "celery": lambda url: CeleryPeer(url),
    "sqs-consumer-batch": lambda url: NodePeer(url, "batch"),
    "sqs-consumer": lambda url: NodePeer(url, "message"),
    "sqs-workers": lambda url: SqsWorkersPeer(url),
    "pyqs": lambda url: PyqsPeer(url),
}


def make(name: str, endpoint_url: str) -> PeerConsumer:
    """Install (once) and build a peer; raises ``Unavailable`` with the reason."""
    try:
        return PEER_FACTORIES[name](endpoint_url)
    except Unavailable:
        raise
    except (OSError, subprocess.SubprocessError) as exc:
        raise Unavailable(f"{type(exc).__name__}: {exc}") from exc
