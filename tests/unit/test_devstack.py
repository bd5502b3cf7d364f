"""``vip-worker dev``'s state directory: its own is removed on exit, the user's is kept."""

from __future__ import annotations

import os

import pytest

from vip_worker.dev.stack import state_directory


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
