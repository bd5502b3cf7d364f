"""Scenario 6: idle cost. CPU and empty receives per minute with empty queues.

The daemon runs with its defaults (2 pollers, 20 s long polls) on two empty queues, its
SQS endpoint set to a counting proxy on 127.0.0.1 (``bench.proxy``) that counts every
request by action. It runs in the background while other scenarios run: its CPU is its
own processes' user+sys (/proc), which other load does not add to, and an idle long
poll's rate does not depend on how busy the endpoint is.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench import procs, sqsutil
from bench.daemonproc import BenchDaemon
from bench.proxy import CountingProxy

QUEUES = ("articles", "images")
PROCESSES = 2


class IdleRun:
    def __init__(self, endpoint, sqs, workdir: Path, window_s: float) -> None:
        self.sqs = sqs
        self.window_s = window_s
        self.proxy = CountingProxy(endpoint.url).start()
        self.urls = {name: sqsutil.make_queue(sqs, f"idle-{name}") for name in QUEUES}
        self.daemon = BenchDaemon(workdir, self.proxy.url, self.urls, processes=PROCESSES)
        self.cpu = procs.TreeCpu(self.daemon.pid)
        self.t0 = 0.0
        self.cpu0 = 0.0

    def start(self) -> None:
        self.daemon.wait_ready(PROCESSES)
        time.sleep(1.0)  # boot calls (queue attribute lookups) are over
        self.cpu0 = self.cpu.sample()
        self.t0 = time.monotonic()

    def remaining_s(self) -> float:
        return max(0.0, self.t0 + self.window_s - time.monotonic())

    def finish(self) -> dict:
        while self.remaining_s() > 0:
            self.cpu.sample()
            time.sleep(min(1.0, self.remaining_s()))
        t1 = time.monotonic()
        cpu1 = self.cpu.sample()
        elapsed = t1 - self.t0
        receives = self.proxy.count("ReceiveMessage", self.t0, t1)
        others = {}
        with self.proxy.lock:
            for at, action in self.proxy.times:
                if self.t0 <= at < t1 and action != "ReceiveMessage":
                    others[action] = others.get(action, 0) + 1
        per_min = receives / elapsed * 60
        return {
            "window_s": round(elapsed, 1), "cpu_s": round(cpu1 - self.cpu0, 3),
            "cpu_pct": round((cpu1 - self.cpu0) / elapsed * 100, 3),
            "receives": receives, "receives_per_min": round(per_min, 2),
            "receives_per_queue_per_poller_per_min": round(per_min / len(QUEUES) / PROCESSES, 2),
            "other_calls": others, "rss_mb": round(self.daemon.rss_mb(), 1),
            "settings": f"defaults: processes={PROCESSES}, {len(QUEUES)} empty queues, "
                        "wait_time_s=20, metrics_interval_s=60",
        }

    def stop(self) -> None:
        self.daemon.stop()
        self.proxy.stop()
        for url in self.urls.values():
            sqsutil.delete_queue(self.sqs, url)
