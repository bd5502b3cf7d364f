"""How the arbiter reads a poller's exit code: which exits back off and count toward the
crash loop, and which are replaced at once (no processes: ``poller_exited`` is called with
a wait status, as ``reap_pollers`` does)."""

from __future__ import annotations

import time

import pytest

from tests.fakes import make_settings
from vip_worker import exitcodes, liveness
from vip_worker.arbiter import MIN_UPTIME_S, Arbiter, PollerHandle
from vip_worker.testing import capture_logs


def exited(code: int) -> int:
    """The wait status of a process that exited with ``code``."""
    return code << 8


def arbiter(**settings) -> Arbiter:
    return Arbiter(make_settings(respawn_backoff_max_s=8, crash_loop_threshold=3, **settings),
                   poller_main=lambda settings, index, shm: 0, reload=lambda: None)


def old_poller(pid: int = 4242) -> PollerHandle:
    """A poller that has been up long past MIN_UPTIME_S."""
    return PollerHandle(index=0, pid=pid, generation=0, shm=[0.0] * liveness.SIZE,
                        spawned_at=time.monotonic() - MIN_UPTIME_S - 60)


@pytest.mark.parametrize("code", [exitcodes.POLLER_TASK_FAILED, exitcodes.POLLER_BOOT_FAILED])
def test_a_failed_poller_backs_off_even_after_a_long_uptime(code):
    master = arbiter()
    with capture_logs("vip_worker.arbiter") as records:
        before = time.monotonic()
        master.poller_exited(old_poller(), exited(code))
    assert [r.exit_code for r in records.events("poller.died")] == [code]
    assert master.failures == 1
    assert master.next_spawn_at >= before + 0.5  # the first backoff step


def test_a_task_failing_in_every_new_poller_reaches_the_crash_loop():
    master = arbiter()
    with capture_logs("vip_worker.arbiter") as records:
        for pid in range(3):
            master.poller_exited(old_poller(pid), exited(exitcodes.POLLER_TASK_FAILED))
    assert master.failures == 3
    assert len(records.events("arbiter.crash_loop")) == 1


def test_a_recycled_poller_is_replaced_at_once():
    master = arbiter()
    with capture_logs("vip_worker.arbiter") as records:
        master.poller_exited(old_poller(), exited(exitcodes.POLLER_RECYCLED))
    assert master.failures == 0 and master.next_spawn_at == 0.0
    assert records.events("poller.exited") and not records.events("poller.died")


def ready_poller(pid: int, spawned_at: float) -> PollerHandle:
    shm = [0.0] * liveness.SIZE
    shm[liveness.READY] = 1.0
    return PollerHandle(index=0, pid=pid, generation=0, shm=shm, spawned_at=spawned_at)


def test_an_older_healthy_poller_does_not_reset_the_failures():
    # One poller runs fine; the other keeps failing. Without this, the healthy one
    # reset the count on every pass and the failing one respawned every 0.5 s for ever.
    master = arbiter()
    master.target = 1
    now = time.monotonic()
    master.failures, master.failed_at = 2, now - 1
    master.pollers = {1: ready_poller(1, spawned_at=now - 3600)}
    master.manage_pollers()
    assert master.failures == 2


def test_a_poller_started_after_the_last_failure_and_still_up_resets_them():
    master = arbiter()
    master.target = 1
    now = time.monotonic()
    master.failures, master.failed_at = 2, now - MIN_UPTIME_S - 30
    master.pollers = {1: ready_poller(1, spawned_at=now - MIN_UPTIME_S - 5)}
    master.manage_pollers()
    assert master.failures == 0


def test_a_poller_being_retired_that_exits_as_failed_does_not_back_off():
    master = arbiter()
    poller = old_poller()
    poller.stopping = True  # HUP's rolling replacement asked it to stop
    with capture_logs("vip_worker.arbiter") as records:
        master.poller_exited(poller, exited(exitcodes.POLLER_TASK_FAILED))
    assert master.failures == 0 and master.next_spawn_at == 0.0
    assert [r.levelname for r in records.events("poller.exited")] == ["WARNING"]
    assert not records.events("poller.died")
