"""The arbiter's lifecycle on a fake clock, with fake fork and kill seams (no processes):
HUP's rolling replacement, the murder of a poller that stops ticking, the stop modes."""

from __future__ import annotations

import signal

import pytest

from tests.fakes import FakeClock, make_settings
from vip_worker import liveness
from vip_worker.arbiter import BOOT_TIMEOUT_S, KILL_AFTER_ABORT_S, Arbiter, StopMode
from vip_worker.systemd import Notifier
from vip_worker.testing import capture_logs


class FakeProcesses:
    """``fork`` hands out pids and remembers each poller's index; ``kill`` records signals."""

    def __init__(self) -> None:
        self.next_pid = 100
        self.forked: list[tuple[int, int]] = []  # (pid, index)
        self.signals: list[tuple[int, str]] = []  # (pid, signal name)

    def fork(self, index: int, shm) -> int:
        self.next_pid += 1
        self.forked.append((self.next_pid, index))
        return self.next_pid

    def kill(self, pid: int, signum: int) -> None:
        self.signals.append((pid, signal.Signals(signum).name))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def procs() -> FakeProcesses:
    return FakeProcesses()


def make_master(clock, procs, processes: int = 2, **settings) -> Arbiter:
    master = Arbiter(make_settings(processes=processes, **settings),
                     poller_main=lambda *args: 0,
                     reload=lambda: make_settings(processes=processes, **settings),
                     clock=clock, fork=procs.fork, kill=procs.kill,
                     notifier=Notifier(environ={}))
    master.target = processes
    master.started_at = clock()
    return master


def serve(master: Arbiter, clock: FakeClock, *pids: int) -> None:
    """The pollers ``pids`` (default: all) report ready and tick now, as a poller's loop does."""
    for poller in master.pollers.values():
        if not pids or poller.pid in pids:
            poller.shm[liveness.READY] = 1.0
            poller.shm[liveness.TICK] = clock()


def test_hup_replaces_pollers_one_at_a_time_on_the_same_indexes(clock, procs):
    master = make_master(clock, procs)
    master.manage_pollers()
    assert procs.forked == [(101, 0), (102, 1)]
    serve(master, clock)

    master.handle_hup()
    master.manage_pollers()
    assert procs.forked[-1] == (103, 0)  # the first new poller takes slot 0 again
    assert not procs.signals  # nothing retired before the new poller serves
    master.manage_pollers()
    assert len(procs.forked) == 3  # one new poller at a time

    clock.advance(1)
    serve(master, clock, 103)
    master.manage_pollers()
    assert procs.signals == [(101, "SIGTERM")]  # the oldest old poller retires
    assert procs.forked[-1] == (104, 1)
    master.reaped(101, 0)

    clock.advance(1)
    serve(master, clock, 104)
    master.manage_pollers()
    assert procs.signals == [(101, "SIGTERM"), (102, "SIGTERM")]
    master.reaped(102, 0)
    master.manage_pollers()
    assert len(procs.forked) == 4
    assert sorted((p.index, p.generation) for p in master.pollers.values()) == [(0, 1), (1, 1)]
    assert [p["index"] for p in master.snapshot().pollers] == [0, 1]


def test_a_second_hup_keeps_the_indexes_below_processes(clock, procs):
    master = make_master(clock, procs, processes=1)
    for _ in range(3):
        master.manage_pollers()
        serve(master, clock)
        master.manage_pollers()  # retires the old one once the new one serves
        for pid, _ in procs.signals:
            master.reaped(pid, 0)
        procs.signals.clear()
        master.handle_hup()
    assert {index for _, index in procs.forked} == {0}


def test_a_poller_that_stops_ticking_gets_abrt_then_kill(clock, procs):
    master = make_master(clock, procs, processes=2, poller_timeout_s=30)
    master.manage_pollers()
    serve(master, clock)
    blocked, healthy = 101, 102

    clock.advance(20)
    serve(master, clock, healthy)
    clock.advance(10.5)  # blocked: silent 30.5 s; healthy: 10.5 s
    with capture_logs("vip_worker.arbiter") as records:
        master.murder_pollers()
    assert procs.signals == [(blocked, "SIGABRT")]
    [event] = records.events("poller.blocked")
    assert (event.poller_pid, event.index, event.silent_s) == (blocked, 0, 30.5)

    clock.advance(KILL_AFTER_ABORT_S - 0.5)
    master.murder_pollers()
    assert procs.signals == [(blocked, "SIGABRT")]  # its stack dump gets time to finish
    clock.advance(1)
    master.murder_pollers()
    assert procs.signals == [(blocked, "SIGABRT"), (blocked, "SIGKILL")]

    master.reaped(blocked, signal.SIGKILL)  # the wait status of a process killed by it
    master.manage_pollers()
    assert procs.forked[-1] == (103, 0)  # replaced in its slot


def test_a_poller_that_never_serves_gets_abrt_after_the_boot_timeout(clock, procs):
    master = make_master(clock, procs, processes=1, poller_timeout_s=30)
    master.manage_pollers()
    clock.advance(BOOT_TIMEOUT_S - 1)
    master.murder_pollers()
    assert not procs.signals
    clock.advance(2)
    with capture_logs("vip_worker.arbiter") as records:
        master.murder_pollers()
    assert procs.signals == [(101, "SIGABRT")]
    assert records.events("poller.boot_timeout")


def test_stop_modes_move_from_graceful_to_fast_and_never_back(clock, procs):
    master = make_master(clock, procs, processes=1, grace_period_s=30)
    master.manage_pollers()
    master.handle_term()
    assert master.stopping is StopMode.GRACEFUL
    graceful_deadline = master.stop_deadline
    assert graceful_deadline > clock() + 30
    master.handle_term()  # a second TERM changes nothing
    assert master.stop_deadline == graceful_deadline
    master.handle_int()
    assert master.stopping is StopMode.FAST and master.stop_deadline < graceful_deadline
    master.handle_term()
    assert master.stopping is StopMode.FAST
    assert procs.signals == [(101, "SIGTERM"), (101, "SIGINT")]
    assert master.snapshot().stopping == "fast"


def recycle(master: Arbiter, clock: FakeClock, pid: int) -> None:
    """Poller ``pid`` retires itself (exit 4) and its slot is filled again."""
    master.reaped(pid, 4 << 8)  # a wait status: exit code 4, POLLER_RECYCLED
    master.manage_pollers()
    clock.advance(1)
    serve(master, clock)


def test_hup_retires_the_old_poller_whose_slot_the_new_one_took(clock, procs):
    master = make_master(clock, procs)
    master.manage_pollers()
    serve(master, clock)
    recycle(master, clock, 101)  # slot 0 is now 103, younger than 102 in slot 1
    assert procs.forked == [(101, 0), (102, 1), (103, 0)]

    master.handle_hup()
    master.manage_pollers()
    assert procs.forked[-1] == (104, 0)
    clock.advance(1)
    serve(master, clock, 104)
    master.manage_pollers()
    # Not the oldest (102, slot 1): that would leave slot 0 served twice, slot 1 not at all.
    assert procs.signals == [(103, "SIGTERM")]


def test_ttou_retires_the_highest_index_so_slot_0_keeps_serving(clock, procs):
    master = make_master(clock, procs, processes=3)
    master.manage_pollers()
    serve(master, clock)
    recycle(master, clock, 101)  # slot 0 is now the newest poller, 104
    master.handle_ttou()
    master.manage_pollers()
    assert procs.signals == [(103, "SIGTERM")]  # slot 2, not the newest (104, slot 0)
