"""The local SQS endpoint the benchmark runs against, as a separate process on 127.0.0.1.

A separate process so that its CPU time is measurable (``/proc/<pid>/stat``) and is not
mixed with the harness's. Two kinds:

- ``moto``: ``python -m moto.server -H 127.0.0.1 -p PORT`` from the project's venv.
  Its cost grows with queue depth (every call rescans the queue): scenarios keep
  queues shallow on it.
- ``localstack``: localstack-core without Docker, in its own venv under
  ``bench/.venvs/localstack`` (Python >= 3.13 from pyenv; made on first use), started
  through ``bench/localstack_main.py`` so that it listens on 127.0.0.1 only.
"""

from __future__ import annotations

import collections
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench import procs
from vip_worker.sqs.local import LOCAL_AWS_ENV

BENCH = Path(__file__).resolve().parent
VENVS = BENCH / ".venvs"
LOCALSTACK_VENV = VENVS / "localstack"
LOCALSTACK_PACKAGES = ["localstack-core[base-runtime]==2026.3.0", "cbor2<6", "pyopenssl<25",
                       "cryptography<45", "service_identity"]
PYENV_PYTHONS = ("3.13", "3.14")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_env() -> dict[str, str]:
    """Fake credentials, no metadata lookups, no proxies: nothing leaves 127.0.0.1."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "VIP_WORKER_", "ARTICLES_", "IMAGES_"))
           and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update({
        **LOCAL_AWS_ENV, "AWS_REGION": LOCAL_AWS_ENV["AWS_DEFAULT_REGION"],
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    })
    return env


@dataclass
class Endpoint:
    kind: str
    url: str
    proc: subprocess.Popen
    workdir: str
    log: str = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_s(self) -> float:
        return procs.cpu_s(self.proc.pid) or 0.0

    def calls(self) -> collections.Counter | None:
        """Requests served so far, per action, from LocalStack's request log (None: moto,
        whose log does not name the action)."""
        if self.kind != "localstack":
            return None
        counts: collections.Counter = collections.Counter()
        with open(self.log, errors="replace") as fh:
            for line in fh:
                at = line.find("AWS sqs.")
                if at >= 0:
                    counts[line[at + 8:].split(" ", 1)[0]] += 1
        return counts

    def rss_mb(self) -> float:
        return procs.rss_kb(self.proc.pid) / 1024

    def stop(self) -> None:
        procs.stop_group(self.proc)
        shutil.rmtree(self.workdir, ignore_errors=True)


def start(kind: str, workdir: str) -> Endpoint:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = base_env()
    home = tempfile.mkdtemp(prefix=f"{kind}-", dir=workdir)
    log = os.path.join(workdir, f"endpoint-{kind}.log")
    if kind == "moto":
        args = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    elif kind == "localstack":
        python = ensure_localstack()
        root = os.path.join(home, "root")
        os.makedirs(root)
        env.update({
            "HOME": home, "GATEWAY_LISTEN": f"127.0.0.1:{port}",
            "LOCALSTACK_HOST": f"127.0.0.1:{port}", "SERVICES": "sqs",
            "SQS_ENDPOINT_STRATEGY": "path", "EAGER_SERVICE_LOADING": "1", "DNS_ADDRESS": "0",
            "DISABLE_EVENTS": "1", "SKIP_SSL_CERT_DOWNLOAD": "1", "SKIP_INFRA_DOWNLOADS": "1",
            "ANALYTICS_API": f"http://127.0.0.1:{free_port()}", "FILESYSTEM_ROOT": root,
            "LOCALSTACK_TELEMETRY_DISABLED": "1", "DISABLE_CORS_CHECKS": "1",
        })
        args = [str(python), str(BENCH / "localstack_main.py")]
    else:
        raise ValueError(f"unknown endpoint {kind!r} (moto | localstack)")
    proc = procs.start_group(args, log, env=env, cwd=home)
    endpoint = Endpoint(kind, url, proc, home, log)
    try:
        wait_ready(endpoint, log)
    except BaseException:
        endpoint.stop()
        raise
    return endpoint


def wait_ready(endpoint: Endpoint, log: str, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    path = "/_localstack/health" if endpoint.kind == "localstack" else "/moto-api/"
    while time.monotonic() < deadline:
        if endpoint.proc.poll() is not None:
            raise RuntimeError(f"{endpoint.kind} exited with {endpoint.proc.returncode}; "
                               f"log tail:\n{Path(log).read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(endpoint.url + path, timeout=2) as response:
                body = response.read().decode(errors="replace")
            if endpoint.kind != "localstack" or '"sqs": "running"' in body \
                    or '"sqs": "available"' in body:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{endpoint.kind} not ready after {timeout_s:g} s")


def find_python() -> str | None:
    """A Python >= 3.13 for LocalStack: pyenv's, else one on PATH."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    if root.is_dir():
        for version in sorted(root.iterdir(), reverse=True):
            if version.name.startswith(PYENV_PYTHONS) and (version / "bin/python").exists():
                return str(version / "bin/python")
    for name in ("python3.14", "python3.13"):
        found = shutil.which(name)
        if found:
            return found
    return None


def ensure_localstack() -> Path:
    """LocalStack's venv (made once; needs network access to PyPI the first time)."""
    python = LOCALSTACK_VENV / "bin" / "python"
    stamp = LOCALSTACK_VENV / ".installed"
    if stamp.exists():
        return python
    base = find_python()
    if base is None:
        raise RuntimeError("LocalStack needs Python >= 3.13 (pyenv install 3.13) - not found")
    print(f"bench: creating {LOCALSTACK_VENV} with {base} (once)", file=sys.stderr)
    subprocess.run([base, "-m", "venv", str(LOCALSTACK_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *LOCALSTACK_PACKAGES],
                   check=True)
    stamp.touch()
    return python


def localstack_available() -> bool:
    return (LOCALSTACK_VENV / ".installed").exists() or find_python() is not None
