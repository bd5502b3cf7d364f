"""Process accounting from /proc (psutil is not a dependency): CPU, RSS, process trees.

CPU is ``utime + stime`` (fields 14-15 of ``/proc/<pid>/stat``) plus ``cutime + cstime``
(16-17: children the process has already waited for), in seconds. A ``TreeCpu`` samples a
process and its live descendants, remembers the last value of each pid it saw, and so still
counts a child that exits inside the window (its time then moves into the parent's
``cutime``; the sampler takes the larger of the two views, never both).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (index 0 is field 3, state)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            text = fh.read()
    except OSError:
        return None
    return text[text.rfind(")") + 2:].split()


def cpu_s(pid: int, children: bool = True) -> float | None:
    """utime+stime (and cutime+cstime of waited-for children) of one process, seconds."""
    fields = stat_fields(pid)
    if fields is None:
        return None
    ticks = int(fields[11]) + int(fields[12])  # fields 14, 15
    if children:
        ticks += int(fields[13]) + int(fields[14])  # fields 16, 17
    return ticks / CLK_TCK


def own_and_reaped_s(pid: int) -> tuple[float, float] | None:
    fields = stat_fields(pid)
    if fields is None:
        return None
    return ((int(fields[11]) + int(fields[12])) / CLK_TCK,
            (int(fields[13]) + int(fields[14])) / CLK_TCK)


def rss_kb(pid: int) -> int:
    """VmRSS of one process in KiB (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def threads(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def children(pid: int) -> list[int]:
    """Live direct children of ``pid`` (every thread's children file)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                found.extend(int(p) for p in fh.read().split())
        except OSError:
            continue
    return found


def tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    result, stack = [], [pid]
    while stack:
        current = stack.pop()
        result.append(current)
        stack.extend(children(current))
    return result


def tree_rss_mb(pid: int) -> float:
    return sum(rss_kb(p) for p in tree(pid)) / 1024


@dataclass
class TreeCpu:
    """CPU seconds of a process tree over a window, exiting children included.

    ``sample()`` often enough that no child is born and reaped between two samples
    unseen (the daemon's pollers live for seconds at least; the preflight child is
    over before the window starts).
    """

    root: int
    own: dict[int, float] = field(default_factory=dict)
    reaped: dict[int, float] = field(default_factory=dict)

    def sample(self) -> float:
        for pid in tree(self.root):
            pair = own_and_reaped_s(pid)
            if pair is not None:
                self.own[pid], self.reaped[pid] = pair
        return self.total()

    def total(self) -> float:
        # A reaped child's time is in its parent's cutime and in our last sample of it:
        # count each reaped child once by taking, per parent, the larger view.
        own = sum(self.own.values())
        reaped = sum(self.reaped.values())
        # Children we sampled alive and that are gone now: their last own time is
        # already in ``own``; subtract what moved into a parent's cutime in the meantime.
        gone = sum(t for p, t in self.own.items() if not os.path.exists(f"/proc/{p}"))
        return own + max(0.0, reaped - gone)


def start_group(args: list[str], log_path: str, env: dict | None = None,
                cwd: str | None = None) -> subprocess.Popen:
    """Start a command in its own session/process group, stdout+stderr to a file."""
    out = open(log_path, "ab")
    try:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True, stdin=subprocess.DEVNULL)
    finally:
        out.close()


def stop_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout_s: float = 10.0
               ) -> int | None:
    """Signal a process group, wait for its leader, then SIGKILL whatever is left."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    code = None
    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if code is None:
        try:
            code = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    return code


def wait_until(predicate, timeout_s: float, what: str, every_s: float = 0.02):
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(every_s)
