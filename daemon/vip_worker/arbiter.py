"""The master: forks pollers and keeps the configured number alive.

No asyncio, no boto3, no plugin imports here: the master must stay small and
unkillable by a plugin's bug. Signal handlers only queue the signal; the main
loop handles them one at a time as ``handle_<signame>``.

Signals (also in docs/operations.md):

====== ===============================================================
TERM   graceful stop: pollers finish running work within the grace period
INT    fast stop (QUIT too): running work is handed back at once
HUP    reload settings and plugins; replace pollers one at a time
TTIN   one poller more
TTOU   one poller fewer (never below one)
CHLD   a poller exited: reap it, replace it (with backoff if it died young)
====== ===============================================================

Over 400 lines because the master's whole lifecycle (spawn, reap, murder, manage,
reload, stop) reads best in one place, as gunicorn keeps its arbiter; status.json's
schema is in ``statusfile.py``, sd_notify in ``systemd.py``.
"""

from __future__ import annotations

import enum
import errno
import logging
import multiprocessing
import os
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from vip_worker import exitcodes, liveness, statusfile
from vip_worker.systemd import Notifier

log = logging.getLogger("vip_worker.arbiter")

HANDLED_SIGNALS = ("HUP", "QUIT", "INT", "TERM", "TTIN", "TTOU", "CHLD")
POLLER_IGNORED_SIGNALS = ("HUP", "TTIN", "TTOU")
LOOP_TIMEOUT_S = 1.0
MIN_UPTIME_S = 10.0  # a poller that dies younger than this counts toward a crash loop
BOOT_TIMEOUT_S = 60.0  # a poller not ready after this long is replaced
KILL_AFTER_ABORT_S = 5.0
FAST_STOP_TIMEOUT_S = 10.0
STATUS_EVERY_S = 2.0
RATE_SAMPLE_EVERY_S = 10.0
RATE_SAMPLES_KEPT = 90  # 15 minutes of samples for the processing rate


class StopMode(enum.Enum):
    """How the master stops. Transitions (in ``Arbiter.stop``): none -> GRACEFUL (TERM),
    none -> FAST (INT, QUIT), GRACEFUL -> FAST (INT during a graceful stop); FAST is final."""

    GRACEFUL = "graceful"  # pollers finish running work within the grace period
    FAST = "fast"  # running work is handed back at once


@dataclass(eq=False)
class PollerHandle:
    index: int
    pid: int
    generation: int
    shm: object  # multiprocessing RawArray('d', liveness.SIZE)
    spawned_at: float
    stopping: bool = False
    aborted_at: float | None = None

    @property
    def ready(self) -> bool:
        return self.shm[liveness.READY] > 0


@dataclass
class Arbiter:
    """Owns the poller processes.

    :param settings: effective settings; ``processes`` is the target count.
    :param poller_main: ``poller_main(settings, index, shm) -> exit code``, run in the child.
    :param reload: returns fresh, validated settings or raises (then the old ones stay).
    :param after_fork: called first thing in each child with the poller index.
    :param clock: monotonic seconds, for every deadline (tests pass a fake one).
    :param fork: ``fork(index, shm) -> pid`` starts a poller process (tests pass a fake).
    :param kill: ``kill(pid, signum)``, as ``os.kill``.
    """

    settings: object
    poller_main: Callable[[object, int, object], int]
    reload: Callable[[], object]
    after_fork: Callable[[int], None] = lambda index: None
    pollers: dict[int, PollerHandle] = field(default_factory=dict)
    target: int = 0
    generation: int = 0
    signals: list[int] = field(default_factory=list)
    failures: int = 0
    failed_at: float = 0.0  # monotonic time of the last failure counted in ``failures``
    next_spawn_at: float = 0.0
    crash_loop_reported: bool = False
    stopping: StopMode | None = None
    stop_deadline: float = 0.0
    hand_back_by: float | None = None  # monotonic; a spot notice's deadline
    stop_reason: str = "signal"
    started_at: float = 0.0
    runtime_dir: str = ""
    notifier: Notifier | None = None
    announced_ready: bool = False
    last_status: str = ""
    status_written_at: float = 0.0
    retired: dict[str, float] = field(default_factory=dict)  # counters of exited pollers
    rate_samples: list[tuple[float, float]] = field(default_factory=list)
    services: list = field(default_factory=list)  # threads started by start_services
    start_services: Callable[[Arbiter], list] = lambda arbiter: []
    clock: Callable[[], float] = time.monotonic
    fork: Callable[[int, object], int] | None = None  # None: fork_poller
    kill: Callable[[int, int], None] = os.kill
    # The last state built by ``report``, swapped in one assignment: other threads (the
    # health endpoint) read this, never the pollers dict the loop mutates.
    published: statusfile.DaemonStatus | None = None

    # -- main loop ---------------------------------------------------------

    def run(self) -> int:
        self.target = self.settings.processes
        self.started_at = self.clock()
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        self.wake_fds = (wake_r, wake_w)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        for name in HANDLED_SIGNALS:
            signal.signal(getattr(signal, f"SIG{name}"), self.record_signal)
        if self.notifier is None:
            self.notifier = Notifier()
        log.info("arbiter.started", extra={"processes": self.target, "pid": os.getpid()})
        self.published = self.snapshot()  # /live answers 200 from the start
        self.services = self.start_services(self)
        try:
            while True:
                self.manage_pollers()
                self.sleep()
                while self.signals:
                    signum = self.signals.pop(0)
                    name = signal.Signals(signum).name[3:].lower()
                    getattr(self, f"handle_{name}")()
                self.reap_pollers()
                self.murder_pollers()
                self.report()
                if self.stopping and not self.pollers:
                    break
                now = self.clock()
                if self.hand_back_by is not None and now > self.hand_back_by:
                    # A spot notice's deadline nears: hand back what still runs, now.
                    log.warning("arbiter.handing_back", extra={"pollers": len(self.pollers)})
                    self.hand_back_by = None
                    self.kill_all(signal.SIGINT)
                if self.stopping and now > self.stop_deadline:
                    self.kill_all(signal.SIGKILL)
        finally:
            signal.set_wakeup_fd(-1)
            for service in self.services:
                service.stop()
            self.write_status()
        log.info("arbiter.stopped", extra={"mode": self.stopping and self.stopping.value,
                                           "uptime_s": round(self.clock() - self.started_at)})
        return exitcodes.OK

    def request_stop(self, reason: str, hand_back_by: float | None = None) -> None:
        """From another thread (the spot watcher): stop gracefully, as on SIGTERM.

        :param hand_back_by: monotonic time by which running work must be handed back.
        """
        self.hand_back_by = hand_back_by
        self.stop_reason = reason
        self.signals.append(signal.SIGTERM)
        try:
            os.write(self.wake_fds[1], b"\0")
        except OSError:
            pass

    def record_signal(self, signum, frame) -> None:
        # Only record: no logging or I/O in a signal handler (reentrancy).
        if len(self.signals) < 16:
            self.signals.append(signum)

    def sleep(self) -> None:
        if self.signals:
            return
        timeout = LOOP_TIMEOUT_S
        if self.notifier.watchdog_interval_s:
            due = self.notifier.last_fed + self.notifier.watchdog_interval_s - self.clock()
            timeout = max(0.0, min(timeout, due))
        try:
            ready, _, _ = select.select([self.wake_fds[0]], [], [], timeout)
            if ready:
                while os.read(self.wake_fds[0], 64):
                    pass
        except (BlockingIOError, InterruptedError):
            pass

    # -- signal handlers (run from the main loop, not in signal context) ----------

    def handle_term(self) -> None:
        self.stop(StopMode.GRACEFUL, signal.SIGTERM)

    def handle_int(self) -> None:
        self.stop(StopMode.FAST, signal.SIGINT)

    handle_quit = handle_int

    def handle_chld(self) -> None:
        self.reap_pollers()

    def handle_hup(self) -> None:
        if self.stopping:
            return
        try:
            settings = self.reload()
        except Exception as exc:  # noqa: BLE001 - a bad reload leaves the running pollers alone
            log.error("arbiter.reload_failed", extra={"error": str(exc)})
            return
        self.notifier.reloading()
        self.announced_ready = False  # READY=1 again once the new pollers serve
        self.settings = settings
        self.target = settings.processes
        self.generation += 1
        log.info("arbiter.reloading", extra={"generation": self.generation,
                                             "processes": self.target})

    def handle_ttin(self) -> None:
        self.target += 1
        log.info("arbiter.scaled", extra={"processes": self.target})

    def handle_ttou(self) -> None:
        if self.target > 1:
            self.target -= 1
        log.info("arbiter.scaled", extra={"processes": self.target})

    # -- lifecycle -------------------------------------------------------------------

    def stop(self, mode: StopMode, signum: int) -> None:
        if self.stopping is StopMode.FAST or (self.stopping and mode is StopMode.GRACEFUL):
            return  # FAST is final; a second TERM changes nothing
        # None -> GRACEFUL, None -> FAST, or GRACEFUL -> FAST (INT while stopping gracefully)
        self.stopping = mode
        self.notifier.stopping()
        longest_poll = max(q.wait_time_s for q in self.settings.queues)
        timeout = (self.settings.grace_period_s + longest_poll + 15
                   if mode is StopMode.GRACEFUL else FAST_STOP_TIMEOUT_S)
        self.stop_deadline = self.clock() + timeout
        log.info("arbiter.stopping", extra={"mode": mode.value, "pollers": len(self.pollers),
                                            "timeout_s": timeout, "reason": self.stop_reason})
        self.kill_all(signum)

    def kill_all(self, signum: int) -> None:
        for poller in list(self.pollers.values()):
            self.kill_poller(poller, signum)

    def kill_poller(self, poller: PollerHandle, signum: int) -> None:
        if signum != signal.SIGKILL:
            poller.stopping = True
        try:
            self.kill(poller.pid, signum)
        except ProcessLookupError:
            pass

    def spawn_poller(self, index: int) -> PollerHandle:
        shm = multiprocessing.RawArray("d", liveness.SIZE)
        pid = (self.fork or self.fork_poller)(index, shm)
        poller = PollerHandle(index=index, pid=pid, generation=self.generation, shm=shm,
                              spawned_at=self.clock())
        self.pollers[pid] = poller
        log.info("poller.spawned", extra={"poller_pid": pid, "index": index,
                                          "generation": self.generation})
        return poller

    def fork_poller(self, index: int, shm) -> int:
        """Fork; the child runs ``poller_main`` and exits with its code. The child's pid."""
        # Signals are blocked around fork so the child cannot run the master's
        # handlers before it has installed its own.
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        pid = os.fork()
        if pid == 0:
            code = exitcodes.POLLER_BOOT_FAILED
            try:
                signal.set_wakeup_fd(-1)
                for name in HANDLED_SIGNALS:
                    signal.signal(getattr(signal, f"SIG{name}"), signal.SIG_DFL)
                for name in POLLER_IGNORED_SIGNALS:
                    signal.signal(getattr(signal, f"SIG{name}"), signal.SIG_IGN)
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
                os.close(self.wake_fds[0])
                os.close(self.wake_fds[1])
                self.after_fork(index)
                code = self.poller_main(self.settings, index, shm)
            finally:
                flush_logs()
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        return pid

    def reap_pollers(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            if pid == 0:
                return
            self.reaped(pid, status)

    def reaped(self, pid: int, status: int) -> None:
        """Child ``pid`` exited with wait status ``status``: keep its counters, react."""
        poller = self.pollers.pop(pid, None)
        if poller is None:
            return
        for name, slot in liveness.COUNTERS.items():
            self.retired[name] = self.retired.get(name, 0.0) + poller.shm[slot]
        self.poller_exited(poller, status)

    def poller_exited(self, poller: PollerHandle, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        uptime = self.clock() - poller.spawned_at
        expected = poller.stopping and code in (exitcodes.OK, exitcodes.POLLER_RECYCLED)
        fields = {"poller_pid": poller.pid, "index": poller.index, "exit_code": code,
                  "uptime_s": round(uptime, 2)}
        if expected or code == exitcodes.POLLER_RECYCLED:
            log.info("poller.exited", extra=fields)
            return
        if poller.stopping and code == exitcodes.POLLER_TASK_FAILED:
            # Being retired (reload, TTOU) anyway: its task_failed line has the error;
            # no backoff, or HUP's rolling replacement would slow down.
            log.warning("poller.exited", extra=fields)
            return
        if code < 0:
            fields["signal"] = signal.Signals(-code).name
        log.error("poller.died", extra=fields)
        if self.stopping:
            return
        if uptime < MIN_UPTIME_S or code in (exitcodes.POLLER_BOOT_FAILED,
                                             exitcodes.POLLER_TASK_FAILED):
            self.failures += 1
            self.failed_at = self.clock()
            delay = min(self.settings.respawn_backoff_max_s, 0.5 * 2 ** (self.failures - 1))
            self.next_spawn_at = self.clock() + delay
            if self.failures >= self.settings.crash_loop_threshold:
                if not self.crash_loop_reported:
                    log.critical("arbiter.crash_loop", extra={
                        "failures": self.failures, "respawn_in_s": round(delay, 2),
                        "detail": "pollers keep dying at start; see poller.died and the "
                                  "poller's own error lines"})
                    self.crash_loop_reported = True
            else:
                log.warning("poller.respawn_delayed", extra={"failures": self.failures,
                                                             "respawn_in_s": round(delay, 2)})

    def murder_pollers(self) -> None:
        """Replace pollers whose event loop stopped ticking (blocked by a handler)."""
        now = self.clock()
        for poller in list(self.pollers.values()):
            if poller.aborted_at is not None:
                if now - poller.aborted_at > KILL_AFTER_ABORT_S:
                    self.kill_poller(poller, signal.SIGKILL)
                continue
            if poller.ready:
                silent = now - poller.shm[liveness.TICK]
                if silent <= self.settings.poller_timeout_s:
                    continue
                event = "poller.blocked"
            elif now - poller.spawned_at > max(BOOT_TIMEOUT_S, self.settings.poller_timeout_s):
                silent = now - poller.spawned_at
                event = "poller.boot_timeout"
            else:
                continue
            log.error(event, extra={"poller_pid": poller.pid, "index": poller.index,
                                    "silent_s": round(silent, 1),
                                    "detail": "stack dumped to stderr; replacing the poller"})
            poller.aborted_at = now
            # faulthandler in the poller dumps every thread's stack on SIGABRT.
            self.kill_poller(poller, signal.SIGABRT)

    def manage_pollers(self) -> None:
        """Keep ``target`` pollers of the current generation; roll old ones one at a time."""
        if self.stopping:
            return
        live = [p for p in self.pollers.values() if not p.stopping]
        current = [p for p in live if p.generation == self.generation]
        old = sorted((p for p in live if p.generation < self.generation),
                     key=lambda p: p.spawned_at)
        ready_current = [p for p in current if p.ready]
        # The failures are over once a poller started after the last one is still up
        # MIN_UPTIME_S later (an older healthy poller proves nothing about new ones).
        if self.failures and any(p.spawned_at > self.failed_at
                                 and self.clock() - p.spawned_at > MIN_UPTIME_S
                                 for p in ready_current):
            self.failures = 0
            self.crash_loop_reported = False
        # A new poller is up: retire one old poller (HUP's rolling replacement).
        while old and len(ready_current) + len(old) > self.target:
            # The old poller whose slot a new one now serves, so each index has one
            # serving poller again (index 0 reads the queue depths); else the oldest.
            filled = {p.index for p in ready_current}
            retiring = next((p for p in old if p.index in filled), old[0])
            old.remove(retiring)
            log.info("poller.retiring", extra={"poller_pid": retiring.pid,
                                               "index": retiring.index})
            self.kill_poller(retiring, signal.SIGTERM)
        starting = [p for p in current if not p.ready]
        if len(current) < self.target and self.clock() >= self.next_spawn_at:
            if not old:
                for _ in range(self.target - len(current) if not self.failures else 1):
                    self.spawn_poller(self.free_index())
            elif not starting:
                self.spawn_poller(self.free_index())
        elif len(current) > self.target and not old:
            # The highest indexes go first: the pollers left keep 0 .. target - 1.
            for extra in sorted(current, key=lambda p: p.index)[self.target:]:
                log.info("poller.retiring", extra={"poller_pid": extra.pid,
                                                   "index": extra.index})
                self.kill_poller(extra, signal.SIGTERM)

    def free_index(self) -> int:
        """The lowest slot no serving poller of this generation holds: indexes stay
        0 .. target - 1 (plugins see them as ``context.index``). During HUP's rolling
        replacement a new poller shares its index with the old one it replaces until
        that one exits (each has its own shared memory)."""
        used = {p.index for p in self.pollers.values()
                if p.generation == self.generation and not p.stopping}
        index = 0
        while index in used:
            index += 1
        return index

    # -- reporting: systemd, status.json -------------------------------------------

    def counters(self) -> dict[str, float]:
        """Totals since the master started, exited pollers included."""
        totals = dict(self.retired)
        for poller in self.pollers.values():
            for name, slot in liveness.COUNTERS.items():
                totals[name] = totals.get(name, 0.0) + poller.shm[slot]
        return totals

    def report(self) -> None:
        now = self.clock()
        self.notifier.feed_watchdog(now)
        current = [p for p in self.pollers.values()
                   if p.generation == self.generation and not p.stopping]
        ready = [p for p in current if p.ready]
        old = [p for p in self.pollers.values() if p.generation < self.generation]
        in_flight = sum(int(p.shm[liveness.INFLIGHT]) for p in self.pollers.values())
        totals = self.counters()
        status = (f"{len(ready)}/{self.target} pollers ready, {in_flight} in flight, "
                  f"{int(totals.get('succeeded', 0))} succeeded, "
                  f"{int(totals.get('dead_lettered', 0))} dead-lettered")
        if not self.stopping and not self.announced_ready and len(ready) >= self.target \
                and not old:
            self.announced_ready = True
            self.notifier.ready(status)
            log.info("arbiter.ready", extra={"pollers": len(ready),
                                             "generation": self.generation})
        elif status != self.last_status:
            self.notifier.status(status)
        self.last_status = status
        if not self.rate_samples or now - self.rate_samples[-1][0] >= RATE_SAMPLE_EVERY_S:
            self.rate_samples.append((now, totals.get("handled", 0.0)))
            del self.rate_samples[:-RATE_SAMPLES_KEPT]
        self.published = self.snapshot()  # one assignment: readers see old or new, whole
        if now - self.status_written_at >= STATUS_EVERY_S:
            self.write_status()

    def snapshot(self) -> statusfile.DaemonStatus:
        """The daemon's state now (keys: ``statusfile``). Main loop only."""
        now = self.clock()
        pollers = []
        for p in sorted(self.pollers.values(), key=lambda p: p.index):
            pollers.append({
                "index": p.index, "pid": p.pid, "generation": p.generation,
                "ready": p.ready, "stopping": p.stopping,
                "in_flight": int(p.shm[liveness.INFLIGHT]),
                "uptime_s": round(now - p.spawned_at, 1),
                "last_tick_s": round(now - p.shm[liveness.TICK], 1) if p.ready else None,
                **{name: p.shm[slot] for name, slot in liveness.COUNTERS.items()}})
        rate = None
        if len(self.rate_samples) >= 2:
            (t0, h0), (t1, h1) = self.rate_samples[0], self.rate_samples[-1]
            rate = round((h1 - h0) / (t1 - t0) * 60, 2) if t1 > t0 else None
        return statusfile.DaemonStatus.build(
            pid=os.getpid(), written_at=time.time(),
            uptime_s=round(now - self.started_at, 1), target=self.target,
            generation=self.generation, stopping=self.stopping and self.stopping.value,
            ready=self.announced_ready, pollers=pollers,
            totals=self.counters(), rate_per_min=rate,
            rate_window_s=round(self.rate_samples[-1][0] - self.rate_samples[0][0])
            if self.rate_samples else 0,
            queues=[q.name for q in self.settings.queues],
            stop_reason=self.stop_reason if self.stopping else None)

    def write_status(self) -> None:
        self.status_written_at = self.clock()
        if not self.runtime_dir:
            return
        try:
            statusfile.write(self.runtime_dir, self.snapshot())
        except OSError as exc:
            log.error("arbiter.status_write_failed", extra={
                "path": statusfile.path(self.runtime_dir), "error": str(exc)})
            self.runtime_dir = ""  # say it once


def flush_logs() -> None:
    for handler in logging.getLogger("vip_worker").handlers:
        try:
            handler.flush()
        except (OSError, ValueError):
            pass
