"""One poller process: a uvloop event loop that runs open -> serve -> drain -> close.

Forked by the arbiter. Everything with a connection (the boto3 client, the
plugins' clients) is made here, after fork. Signals only set the stop mode:

- SIGTERM: graceful. Stop receiving, hand back what never started, let running
  handlers finish within ``grace_period_s`` (heartbeats go on), wait for the
  outstanding long polls and hand back what they bring, then exit 0.
- SIGINT / SIGQUIT: the same, faster: no grace period, no waiting for long polls
  (a message a cut-off long poll received comes back after its visibility timeout).

Liveness: every second the loop writes the time into shared memory that the
arbiter reads; a loop blocked by a handler stops writing and is replaced.
"""

from __future__ import annotations

import asyncio
import enum
import faulthandler
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence

from vip_worker import exitcodes
from vip_worker.consumer import Consumer
from vip_worker.heartbeat import Heartbeat
from vip_worker.liveness import COUNTERS, HANDLED, INFLIGHT, READY, TICK
from vip_worker.plugins import LoadedPlugins, describe_exception, load_plugins
from vip_worker.plugins.context import PollerContext
from vip_worker.plugins.hooks import call_hook
from vip_worker.services import metrics
from vip_worker.services.callbacks import Callbacks
from vip_worker.services.fleet import FleetReporter
from vip_worker.services.lifeline import Lifeline
from vip_worker.sqs.api import SqsApi
from vip_worker.sqs.boto import AsyncSqs
from vip_worker.sqs.queues import (
    DlqLookupFailed,
    dlq_size_limit,
    max_receive_count,
    resolve_dlq,
)
from vip_worker.sqs.wire import WireSqs, open_sqs

log = logging.getLogger("vip_worker.poller")
TICK_S = 1.0
RSS_CHECK_EVERY = 5  # ticks
STOP_REPORT_TIMEOUT_S = 5.0  # the drain's last buckets and fleet reports wait this long


class StopMode(enum.StrEnum):
    """Why a poller stops. Set once by ``request_stop``, except that ``FAST`` overrides."""

    GRACEFUL = "graceful"  # SIGTERM, or the master is gone
    FAST = "fast"  # SIGINT / SIGQUIT: no grace period, no waiting for long polls
    RECYCLE = "recycle"  # max_messages_per_poller, max_rss_mb or an abandoned thread
    TASK_FAILED = "task_failed"  # a task that must run as long as the poller died


# How a poller's stop mode becomes its exit code (GRACEFUL and FAST: OK).
EXIT_CODES = {StopMode.RECYCLE: exitcodes.POLLER_RECYCLED,
              StopMode.TASK_FAILED: exitcodes.POLLER_TASK_FAILED}
SIGNALS = ((signal.SIGTERM, StopMode.GRACEFUL), (signal.SIGINT, StopMode.FAST),
           (signal.SIGQUIT, StopMode.FAST))


class Poller:
    """One poller process's life, in four steps that ``run`` takes in order:

    - ``open``: load the plugins, open the SQS client, look up the DLQs, register the
      providers' resources, run the start hooks, build the consumer and heartbeat;
    - ``serve``: start the receive loops, the heartbeat, the tick, the metrics
      reporter and (poller 0) the lifeline, and wait for a stop (``request_stop``);
    - ``drain``: the consumer's drain (see ``StopMode``), then the other tasks stop;
    - ``close``: the stop hooks, then the context's resources and the SQS client.

    :param sqs_client: a blocking ``SqsClient`` to use instead of opening one (tests).
    :param providers: ``provide(context)`` callables run in ``open`` before the start
        hooks; they register named resources on the context (the daemon's job store:
        ``vip_worker.store.factory.provide_store``). The poller opens none itself.
    :param loaded: plugins already loaded (the testing fixture); default: ``load_plugins``.
    """

    def __init__(self, settings, index: int, shm, sqs_client=None,
                 providers: Sequence[Callable[[PollerContext], None]] = (),
                 loaded: LoadedPlugins | None = None) -> None:
        self.settings = settings
        self.index = index
        self.shm = shm
        self.sqs_client = sqs_client
        self.providers = tuple(providers)
        self.loaded = loaded
        self.stop_mode: StopMode | None = None
        self.stop_event = asyncio.Event()
        self.sqs = None
        self.transport = ""
        self.context: PollerContext | None = None
        self.consumer: Consumer | None = None
        self.tasks: list[asyncio.Task] = []  # heartbeat, tick, metrics, leases, lifeline
        self.callbacks: Callbacks | None = None  # completion callbacks (start_callbacks)
        self.minutes = metrics.MinuteWriter(lambda: self.context.store)  # dashboard buckets
        self.fleet: FleetReporter | None = None  # poller 0: the fleet registry's reports
        self.stopping_at = 0.0  # monotonic, when the drain began
        # Per queue: messages taken off it (succeeded, dead-lettered) in the metric lines
        # written so far; the lifeline adds the current line's (``drained``).
        self.drained_before: dict[str, int] = {}
        self.exit_code = exitcodes.OK

    def request_stop(self, mode: StopMode | str) -> None:
        """Signal-handler safe: record the mode and wake the loop."""
        mode = StopMode(mode)
        if self.stop_mode is None or mode is StopMode.FAST:
            self.stop_mode = mode
        if mode is StopMode.FAST and self.consumer is not None:
            self.consumer.hurry.set()  # a graceful drain under way: cut it short
        self.stop_event.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum, mode in SIGNALS:
            loop.add_signal_handler(signum, self.request_stop, mode)
        if not await self.open():
            return exitcodes.POLLER_BOOT_FAILED
        await self.serve()
        await self.drain()
        return await self.close()

    def open_sqs(self):
        """The SQS client and the name of its transport ("wire" or "boto3")."""
        receivers = len(self.settings.queues)
        if self.sqs_client is not None:
            sqs, transport = AsyncSqs(self.sqs_client, max_workers=8, receivers=receivers), "boto3"
        else:
            sqs, why = open_sqs(self.settings.region, self.settings.sqs_endpoint_url, receivers,
                                self.settings.sqs_transport)
            transport = "wire" if isinstance(sqs, WireSqs) else "boto3"
            if transport != self.settings.sqs_transport:
                log.warning("sqs.transport_fallback", extra={
                    "configured": self.settings.sqs_transport, "used": transport, "reason": why})
        return sqs, transport

    async def open(self) -> bool:
        """Everything ``serve`` needs. False when the poller cannot serve: the reason is
        logged, what was opened is closed, and the caller exits with POLLER_BOOT_FAILED."""
        self.shm[TICK] = time.monotonic()
        loaded = self.loaded = self.loaded or load_plugins(self.settings)
        sqs, self.transport = self.open_sqs()
        try:
            dlq_urls = {q.name: await resolve_dlq(sqs, q) for q in self.settings.queues}
            dlq_limits = {name: await dlq_size_limit(sqs, name, url)
                          for name, url in dlq_urls.items() if url}
        except DlqLookupFailed as exc:
            log.error("queue.dlq_lookup_failed", extra={"error": str(exc)})
            sqs.close()
            return False
        max_receives = {q.name: limit for q in self.settings.queues
                        if (limit := await max_receive_count(sqs, q)) is not None}
        context = PollerContext(index=self.index, settings=self.settings,
                                plugin_values=loaded.registry.plugin_settings)
        started_plugins: list[str] = []
        try:
            for provide in self.providers:
                provide(context)
            await call_hook(loaded.manager.hook.vip_worker_poller_start, context=context,
                            done=started_plugins)
        except Exception as exc:  # noqa: BLE001 - reported, then the arbiter backs off
            log.error("poller.start_hook_failed", extra={"error": str(exc)})
            # The plugins that did start close what they opened.
            try:
                await call_hook(loaded.manager.hook.vip_worker_poller_stop, context=context,
                                only=set(started_plugins))
            except Exception as stop_exc:  # noqa: BLE001 - the boot already failed
                log.error("poller.stop_hook_failed", extra={"error": str(stop_exc)})
            context.close()
            sqs.close()
            return False
        self.sqs, self.context = sqs, context
        consumer = Consumer(self.settings, loaded.registry, sqs, Heartbeat(sqs, time.monotonic),
                            context, dlq_urls, dlq_limits=dlq_limits, max_receives=max_receives)
        # Per message: only the count (the tick checks memory every few seconds).
        consumer.on_handled = lambda: self.check_recycle(consumer, memory=False)
        self.consumer = consumer
        if self.stop_mode is StopMode.FAST:
            consumer.hurry.set()
        return True

    async def serve(self) -> None:
        """Receive and handle messages until a stop is requested."""
        loop = asyncio.get_running_loop()
        consumer = self.consumer
        self.tasks = [loop.create_task(consumer.heartbeat.run(), name="heartbeat"),
                      loop.create_task(self.tick(consumer), name="tick"),
                      loop.create_task(self.report_metrics(consumer, self.sqs), name="metrics")]
        if consumer.ledger is not None:  # the job leases, at the heartbeat's pace
            self.tasks.append(loop.create_task(consumer.ledger.run(), name="leases"))
        self.start_callbacks(consumer)
        self.start_fleet()
        if self.index == 0 and self.settings.lifeline_interval_s:
            # One sweeper per daemon, like the depth readings (see services/lifeline.py).
            self.tasks.append(loop.create_task(self.lifeline(consumer).run(), name="lifeline"))
        consumer.start()
        for task in (*self.tasks, *consumer.receivers):
            task.add_done_callback(self.task_ended)
        self.shm[READY] = 1.0
        log.info("poller.ready", extra={
            "queues": [q.name for q in self.settings.queues],
            "types": sorted(self.loaded.registry.handlers),
            "concurrency": self.settings.concurrency, "sqs_transport": self.transport})
        await self.stop_event.wait()

    def start_callbacks(self, consumer: Consumer) -> None:
        """Completion callbacks (services/callbacks.py), when on and jobs are tracked:
        the ledger records each ended job's; poller 0 sweeps for the due ones."""
        context = self.context
        self.callbacks = consumer.ledger and Callbacks.open(self.settings, lambda: context.store)
        if self.callbacks:
            consumer.ledger.on_ended = self.callbacks.record
            if self.index == 0:
                self.tasks.append(asyncio.get_running_loop().create_task(
                    self.callbacks.run(), name="callbacks"))

    def start_fleet(self) -> None:
        """Poller 0: the daemon's fleet record (services/fleet.py), one per daemon."""
        if self.index == 0 and self.settings.fleet_report_interval_s:
            self.fleet = FleetReporter.open(self.settings, lambda: self.context.store)
            self.tasks.append(asyncio.get_running_loop().create_task(
                self.fleet.run(), name="fleet"))

    def lifeline(self, consumer: Consumer) -> Lifeline:
        """The sweep for orphaned jobs, on this poller's job store and SQS client; its
        rescues are counted in the queues' metric lines (JobsRescued)."""
        def count(queue: str, outcome: str) -> None:
            consumer.queue_metrics[queue].record("rescued", None)

        def drained(queue: str) -> int:
            counts = consumer.queue_metrics[queue]
            return self.drained_before.get(queue, 0) + counts.succeeded + counts.dead_lettered

        context = self.context
        lifeline = Lifeline(self.settings, lambda: context.store, self.sqs, on_rescue=count,
                            drained=drained, dlq_urls=consumer.dlq_urls)
        lifeline.on_ended = self.callbacks.record if self.callbacks else None
        return lifeline

    async def drain(self) -> None:
        """Settle what is held as the stop mode says, then stop the other tasks."""
        consumer = self.consumer
        self.stopping_at = time.monotonic()
        log.info("poller.stopping", extra={"mode": self.stop_mode, "in_flight": len(consumer.held)})
        fast = self.stop_mode is StopMode.FAST
        if self.fleet is not None:  # "draining", without holding up the drain
            self.tasks.append(asyncio.get_running_loop().create_task(
                self.fleet.stopping(final=False, timeout_s=STOP_REPORT_TIMEOUT_S)))
        await consumer.drain(grace_s=0 if fast else self.settings.grace_period_s,
                             wait_for_polls=not fast)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.publish(consumer)  # what the drain settled: the tick has stopped
        self.emit_metrics(consumer, depths={})  # the last interval's counts
        await self.minutes.finish(STOP_REPORT_TIMEOUT_S)
        if self.fleet is not None:  # "stopped" after a clean shutdown (not a recycle)
            await self.fleet.stopping(final=self.stop_mode in (StopMode.GRACEFUL, StopMode.FAST),
                                      timeout_s=STOP_REPORT_TIMEOUT_S)
            self.fleet.close()

    async def close(self) -> int:
        """Run the stop hooks, close the resources and the SQS client; the exit code."""
        try:
            await call_hook(self.loaded.manager.hook.vip_worker_poller_stop, context=self.context)
        except Exception as exc:  # noqa: BLE001 - a stop hook must not block the exit
            log.error("poller.stop_hook_failed", extra={"error": str(exc)})
        if self.callbacks:
            self.callbacks.close()
        self.consumer.close()
        self.context.close()
        self.sqs.close()
        log.info("poller.stopped", extra={
            "mode": self.stop_mode, "handled": self.consumer.handled,
            "drain_s": round(time.monotonic() - self.stopping_at, 3)})
        return EXIT_CODES.get(self.stop_mode, exitcodes.OK)

    async def tick(self, consumer: Consumer) -> None:
        ticks = 0
        parent = os.getppid()
        while True:
            if os.getppid() != parent and self.stop_mode is None:
                # The master is gone (killed -9): finish gracefully rather than run unmanaged.
                log.error("poller.orphaned", extra={"master_pid": parent})
                self.request_stop(StopMode.GRACEFUL)
            self.shm[TICK] = time.monotonic()
            self.publish(consumer)
            ticks += 1
            if ticks % RSS_CHECK_EVERY == 0:
                self.check_recycle(consumer)
            await asyncio.sleep(TICK_S)

    def publish(self, consumer: Consumer) -> None:
        """Copy the counters to shared memory, where the master reads them (and adds a
        poller's last values to its totals when it exits)."""
        self.shm[INFLIGHT] = len(consumer.held)
        self.shm[HANDLED] = consumer.handled
        for name, value in consumer.stats.items():
            self.shm[COUNTERS[name]] = value

    async def report_metrics(self, consumer: Consumer, sqs: SqsApi) -> None:
        """Every metrics_interval_s: one EMF line per queue (see vip_worker.services.metrics)
        and the interval's per-minute buckets; from poller 0 the queues' depths too, and
        BacklogPerInstance."""
        interval = self.settings.metrics_interval_s
        if not interval:
            return
        while True:
            await asyncio.sleep(interval)
            depths: dict[str, dict[str, int]] = {}
            if self.index == 0:  # one depth reading per host is enough
                depths = await metrics.read_depths(sqs, self.settings.queues,
                                                   consumer.dlq_urls)
                if self.fleet is not None and depths:
                    live = self.fleet.live  # read by the reporter: no store call here
                    if live is not None:
                        log.info("metrics", extra=metrics.backlog_fields(
                            self.settings.metrics_namespace, depths, live))
            self.emit_metrics(consumer, depths)

    def emit_metrics(self, consumer: Consumer, depths: dict[str, dict[str, int]]) -> None:
        if not self.settings.metrics_interval_s:
            return
        names = [q.name for q in self.settings.queues]
        taken = metrics.drain(consumer.queue_metrics, names)
        for name, counts in taken.items():
            self.drained_before[name] = (self.drained_before.get(name, 0) + counts.succeeded
                                         + counts.dead_lettered)
            depth = depths.get(name, {}).get("visible")
            if counts.empty() and depth is None:
                continue
            log.info("metrics", extra=metrics.emf_fields(
                self.settings.metrics_namespace, name, counts, depth))
        self.minutes.write(metrics.minute_rows(taken, depths)  # + usage: one store call
                           + metrics.usage_flush(self.context, self.settings.metrics_namespace))

    def task_ended(self, task: asyncio.Task) -> None:
        """A task that must run as long as the poller does died of an error: without
        it a queue goes unpolled or held messages lose their heartbeats. Drain and exit
        with ``POLLER_TASK_FAILED``: the master respawns with backoff, as after a crash
        (a fault that kills every new poller the same way must not respawn in a tight
        loop). Logged even during a stop: the error is the same news then."""
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        log.error("poller.task_failed", exc_info=exc, extra={
            "task": task.get_name(), "error": f"{type(exc).__name__}: {exc}"[:500],
            "stopping": self.stop_mode})
        if self.stop_mode is None:
            self.request_stop(StopMode.TASK_FAILED)

    def check_recycle(self, consumer: Consumer, memory: bool = True) -> None:
        if self.stop_mode is not None:
            return
        settings = self.settings
        reason = None
        limit = settings.max_messages_per_poller
        if limit and consumer.handled >= limit:
            reason = "max_messages_per_poller"
        elif consumer.abandoned_threads:
            reason = "abandoned_thread"
        elif memory and settings.max_rss_mb and rss_mb() > settings.max_rss_mb:
            reason = "max_rss_mb"
        if reason:
            log.info("poller.recycling", extra={"reason": reason, "handled": consumer.handled,
                                                "rss_mb": round(rss_mb(), 1)})
            self.request_stop(StopMode.RECYCLE)


def rss_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def main(settings, index: int, shm,
         providers: Sequence[Callable[[PollerContext], None]] = ()) -> int:
    """The poller's entry point after fork; returns its exit code.

    :param providers: see ``Poller``; the CLI passes the job store's.
    """
    faulthandler.enable()  # SIGABRT from the arbiter dumps every thread's stack to stderr
    import uvloop

    try:
        return uvloop.run(Poller(settings, index, shm, providers=providers).run())
    except Exception as exc:  # noqa: BLE001 - the arbiter reports the exit code
        log.critical("poller.crashed", extra={"error": describe_exception(exc)}, exc_info=True)
        return exitcodes.POLLER_BOOT_FAILED
