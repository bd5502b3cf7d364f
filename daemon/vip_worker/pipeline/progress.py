"""Progress that moves while the service generates: measured from a stream, else estimated.

Between the runner's "Generating content..." (10 %) and "Saving content..." (80 %), a
generation call may take minutes. Two sources fill that gap:

- **measured**: the service streams its answer (``pipeline/streaming.py``); each batch
  of words moves the job to ``10 + 70 * words / wordCount`` % with the message
  "Writing... N of M words" (``progressEstimated: false``);
- **estimated**: otherwise, from the median duration of this poller's last
  ``DURATIONS_KEPT`` generations of that job type (kept in memory per poller: no store
  read): ``10 + 70 * min(elapsed / median, 0.95)`` % with "Generating content
  (estimated)..." and ``progressEstimated: true``. The first job of a type on a poller
  has no median and shows no estimate. A stream's first words stop the estimate.

Writes are throttled and batched: in the daemon, each update goes to the poller's
ledger (``vip_worker.ledger.PROGRESS_SINK``), which keeps the latest per job and writes
all of them in one ``progress_many`` call every ``progress_interval_s``; without a
ledger (``run_handler``, the producer's inline run) the reporter writes at most one
update per ``progress_interval_s`` itself.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any

from vip_worker.ledger import PROGRESS_SINK

log = logging.getLogger("vip_worker.pipeline.progress")
START, END = 10, 80  # the runner's "Generating content..." and "Saving content..."
DURATIONS_KEY = "vip_worker.pipeline.durations"  # in the poller's resources
DURATIONS_KEPT = 20
ESTIMATE_CAP = 0.95  # an estimate never claims the work is done
ESTIMATED_MESSAGE = "Generating content (estimated)..."


def interval_s(ctx) -> float:
    return float(getattr(ctx.settings, "progress_interval_s", 3.0) or 3.0)


class ProgressReporter:
    """One generation's progress updates: never backwards, throttled, batched."""

    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self.interval_s = interval_s(ctx)
        self.sink = ctx.resources.get(PROGRESS_SINK)
        self.last_percent = START
        self.last_write = float("-inf")  # monotonic, without a sink
        self.lock = threading.Lock()
        self.measured = False  # a stream reported words: estimates stop

    def begin(self, message: str) -> None:
        """The generation's first step (``START``, "Generating content..."). With the
        daemon's ledger it joins the next batched write: a call deferred at once (the
        quota) costs no store call and leaves no timeline entry, its settle dropping it.
        Without one, the handler's own write (``ctx.progress``)."""
        ctx = self.ctx
        if self.sink is None:
            ctx.progress(START, message)
            return
        self.sink(ctx.job_id, ctx.delivery, START, message, False)
        fields = dict(getattr(ctx.log, "extra", None) or {})  # the message's fields
        log.info("job.progress", extra={**fields, "progress": START, "step": message})

    def report(self, percent: int, message: str, *, estimated: bool) -> None:
        with self.lock:
            if estimated and self.measured:
                return
            percent = max(START, min(END - 1, int(percent)))
            if percent <= self.last_percent:
                return
            if self.sink is None:
                clock = time.monotonic()
                if clock - self.last_write < self.interval_s:
                    return
                self.last_write = clock
            self.last_percent = percent
        ctx = self.ctx
        if self.sink is not None:
            self.sink(ctx.job_id, ctx.delivery, percent, message, estimated)
        else:
            ctx.store.progress_many([(ctx.job_id, ctx.delivery, percent, message, estimated)],
                                    datetime.now(UTC))

    def words(self, count: int, wanted: int | None) -> None:
        """A stream has produced ``count`` words of the ``wanted`` (``wordCount``)."""
        self.measured = True
        if not wanted or wanted <= 0:
            return
        share = min(1.0, count / wanted)
        self.report(START + int((END - START) * share),
                    f"Writing... {min(count, wanted)} of {wanted} words", estimated=False)


class Estimator:
    """While a generation runs without a stream: progress from the type's median
    duration, every ``interval_s``, in a thread of its own (stopped by ``stop``)."""

    def __init__(self, reporter: ProgressReporter, median_s: float | None) -> None:
        self.reporter = reporter
        self.median_s = median_s
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> Estimator:
        if self.median_s and self.median_s > 0:
            self.thread = threading.Thread(target=self.run, name="progress-estimate",
                                           daemon=True)
            self.thread.start()
        return self

    def run(self) -> None:
        started = time.monotonic()
        while not self.stopped.wait(self.reporter.interval_s):
            if self.reporter.measured:
                return
            share = min(ESTIMATE_CAP, (time.monotonic() - started) / self.median_s)
            self.reporter.report(START + int((END - START) * share), ESTIMATED_MESSAGE,
                                 estimated=True)

    def stop(self) -> None:
        self.stopped.set()
        if self.thread is not None:
            self.thread.join()


def durations(ctx) -> dict[str, deque]:
    """The poller's recent generation durations per job type (created on first use)."""
    return ctx.poller.resources.setdefault(DURATIONS_KEY, {})


def median_duration_s(ctx, type: str) -> float | None:
    recent = list(durations(ctx).get(type) or ())
    return statistics.median(recent) if recent else None


def record_duration(ctx, type: str, seconds: float) -> None:
    durations(ctx).setdefault(type, deque(maxlen=DURATIONS_KEPT)).append(seconds)


def wanted_words(payload: Any) -> int | None:
    """The payload's ``wordCount`` (or ``word_count``), when it is a positive integer."""
    if not isinstance(payload, dict):
        return None
    value = payload.get("wordCount", payload.get("word_count"))
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 \
        else None
