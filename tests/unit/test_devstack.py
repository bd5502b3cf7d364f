"""``vip-worker dev``: its state directory (its own is removed on exit, the user's is kept),
the watch loop that shows each job's steps, and the banner's command."""

from __future__ import annotations

import json
import os
import queue
import threading
import types

import pytest

from vip_worker.dev.stack import follow, state_directory, vip_worker_command, watch


def test_its_own_temporary_state_directory_is_removed_with_its_contents():
    with state_directory(None) as made:
        assert os.path.basename(made).startswith("vip-worker-dev-")
        os.makedirs(os.path.join(made, "run"))
        open(os.path.join(made, "jobs.sqlite3"), "w").close()
    assert not os.path.exists(made)


def test_it_is_removed_when_the_stack_fails_too():
    with pytest.raises(RuntimeError), state_directory(None) as made:
        raise RuntimeError("the daemon did not start")
    assert not os.path.exists(made)


def test_a_state_directory_the_user_gave_is_made_and_kept(tmp_path):
    given = tmp_path / "mine" / "state"
    with state_directory(str(given)) as used:
        assert used == str(given)
        (given / "jobs.sqlite3").write_text("")
    assert (given / "jobs.sqlite3").exists()


# -- the watch loop ---------------------------------------------------------------------------


class RunningDaemon:
    def poll(self):
        return None


class LaggingStore:
    """Shows the job completed at once; the daemon's log lines come ``lag`` reads later."""

    def __init__(self, progress: queue.SimpleQueue, lag: int) -> None:
        self.progress = progress
        self.reads = 0
        self.lag = lag

    def get_job(self, job_id):
        self.reads += 1
        if self.reads == self.lag:
            for percent, step in ((10, "Generating content..."), (80, "Saving content...")):
                self.progress.put((job_id, percent, step))
            self.progress.put((job_id, None, None))  # job.completed
        return {"status": "completed", "progress": 100, "message": "Completed"}


@pytest.mark.parametrize("lag", [1, 3])
def test_watch_shows_every_progress_step_even_when_the_store_is_ahead(capsys, lag):
    progress = queue.SimpleQueue()
    args = types.SimpleNamespace(timeout=30, exit_when_done=True)
    code = watch(LaggingStore(progress, lag), {"j1": "articles"}, RunningDaemon(),
                 threading.Event(), args, progress)
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["job j1 articles processing  10%  Generating content...",
                     "job j1 articles processing  80%  Saving content...",
                     "job j1 articles completed  100%  Completed",
                     "dev: demo batch done"]


def test_follow_hands_progress_steps_to_the_watcher_and_echoes_the_rest(capsys):
    lines = [json.dumps({"event": "job.progress", "job_id": "j1", "progress": 80,
                         "step": "Saving content..."}) + "\n",
             json.dumps({"event": "job.completed", "job_id": "j1"}) + "\n",
             json.dumps({"event": "poller.ready", "poller": 0}) + "\n"]
    progress = queue.SimpleQueue()
    follow(types.SimpleNamespace(stdout=iter(lines)), progress)
    assert [progress.get_nowait(), progress.get_nowait()] == [
        ("j1", 80, "Saving content..."), ("j1", None, None)]
    assert capsys.readouterr().out == "daemon: poller 0 ready\n"


def test_the_banner_names_the_virtualenvs_vip_worker(tmp_path, monkeypatch):
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "vip-worker").write_text("")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # the virtualenv is not active
    python = str(bin_dir / "python")
    assert vip_worker_command(python, cwd=str(tmp_path)) == ".venv/bin/vip-worker"
    assert vip_worker_command(python, cwd=str(tmp_path / "elsewhere")) == str(
        bin_dir / "vip-worker")
    (bin_dir / "vip-worker").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin")  # activated: the PATH finds it
    assert vip_worker_command(python, cwd=str(tmp_path)) == "vip-worker"
    assert vip_worker_command(str(tmp_path / "python3")) == f"{tmp_path / 'python3'} -m vip_worker"
