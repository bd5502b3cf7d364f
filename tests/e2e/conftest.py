from __future__ import annotations

import pytest

from tests.e2e.daemon import TEST_PLUGINS, Daemon, write_config


@pytest.fixture
def ledger(tmp_path):
    """The file the test plugin appends ``start|end <jobId> <pid>`` lines to."""
    path = tmp_path / "ledger.txt"
    path.touch()
    return path


def ledger_lines(path, kind=None, job_id=None):
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows
            if (kind is None or r[0] == kind) and (job_id is None or r[1] == job_id)]


@pytest.fixture
def start_daemon(tmp_path, sqs_endpoint, ledger):
    """``start_daemon(queues, **settings)`` -> a running Daemon; every one is killed at teardown."""
    started: list[Daemon] = []

    def start(queues, extra_args=(), env=None, config=True, **settings):
        settings.setdefault("plugin_dirs", [str(TEST_PLUGINS)])
        settings.setdefault("log_level", "DEBUG")
        settings.setdefault("grace_period_s", 10)
        settings.setdefault("plugins", {"testjobs": {"ledger": str(ledger)}})
        workdir = tmp_path / f"daemon{len(started)}"
        workdir.mkdir()
        settings.setdefault("state_dir", str(workdir / "state"))  # status.json, the store
        path = write_config(workdir / "vip-worker.toml", queues, **settings) if config else None
        daemon = Daemon(workdir, path, sqs_endpoint, tuple(extra_args), env)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()
