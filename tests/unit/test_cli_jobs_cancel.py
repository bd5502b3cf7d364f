"""``vip-worker jobs cancel ID``: the store's ``request_cancel`` from a shell."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import pytest

from vip_worker import cli, config, exitcodes
from vip_worker.store import STATUSES
from vip_worker.store.factory import open_store


@pytest.fixture(autouse=True)
def state_dir(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith(("VIP_WORKER_", "ARTICLES_", "IMAGES_", "MONGODB_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("VIP_WORKER_STATE_DIR", str(tmp_path / "state"))


@pytest.fixture
def store():
    store = open_store(config.load(require_queues=False))
    yield store
    store.close()


def run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_cli_knows_every_status_the_store_has():
    assert cli.JOB_STATUSES == STATUSES


def test_a_queued_job_is_cancelled(store, capsys):
    store.create_job("job-1", "u1", "articles", {}, datetime.now(UTC))
    code, out, err = run(capsys, "jobs", "cancel", "job-1")
    assert (code, err) == (exitcodes.OK, "")
    assert out == "job-1 cancelled\n"
    assert store.get_job("job-1")["status"] == "cancelled"
    code, out, _ = run(capsys, "jobs", "list", "--status", "cancelled")
    assert code == exitcodes.OK and out.startswith("job-1 ")


def test_a_running_job_is_marked_for_its_poller(store, capsys):
    store.create_job("job-1", "u1", "articles", {}, datetime.now(UTC))
    store.claim("job-1", user_id="u1", type="articles", params={}, message_id="m1",
                lease_s=60, now=datetime.now(UTC), delivery="d1")
    code, out, _ = run(capsys, "jobs", "cancel", "job-1")
    assert code == exitcodes.OK
    assert out == "job-1 cancel requested: its poller stops it\n"
    assert store.get_job("job-1")["cancelRequestedAt"] is not None


def test_a_missing_or_finished_job_is_refused(store, capsys):
    code, _, err = run(capsys, "jobs", "cancel", "nope")
    assert code == exitcodes.NOT_FOUND and err == "vip-worker: no job 'nope'\n"
    store.create_job("job-1", "u1", "articles", {}, datetime.now(UTC))
    store.fail("job-1", "broken", datetime.now(UTC))
    code, _, err = run(capsys, "jobs", "cancel", "job-1")
    assert code == exitcodes.FAILED
    assert err == "vip-worker: job 'job-1' is failed: nothing to cancel\n"
