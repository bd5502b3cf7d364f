"""sd_notify without a dependency: tell systemd READY, STATUS, STOPPING, WATCHDOG.

With ``Type=notify`` systemd sets ``NOTIFY_SOCKET``; without it every call is a
no-op, so the daemon behaves the same under supervisord or a terminal.
"""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    """Sends datagrams to ``$NOTIFY_SOCKET``; ``environ`` is read once, at construction."""

    def __init__(self, environ=None) -> None:
        env = os.environ if environ is None else environ
        self.address = env.get("NOTIFY_SOCKET", "")
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watched = usec.isdigit() and (not pid or pid == str(os.getpid()))
        # Feed the watchdog at half its period, as sd_watchdog_enabled(3) advises.
        self.watchdog_interval_s = int(usec) / 2e6 if watched else 0.0
        self.last_fed = 0.0
        self.sock = None
        if self.address:
            if self.address.startswith("@"):  # abstract namespace
                self.address = "\0" + self.address[1:]
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def notify(self, *lines: str) -> None:
        if self.sock is None:
            return
        try:
            self.sock.sendto("\n".join(lines).encode(), self.address)
        except OSError:
            pass  # systemd gone or socket full: never let notification break the daemon

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def feed_watchdog(self, now: float) -> None:
        if self.watchdog_interval_s and now - self.last_fed >= self.watchdog_interval_s:
            self.last_fed = now
            self.notify("WATCHDOG=1")
