"""Handlers for the benchmark: no-op, pickup stamps, and long sleeps (async and blocking).

Types:

- ``noop`` (async) and ``noop_sync`` (def, runs in the handler thread pool): do nothing,
  so a drain measures the daemon and the endpoint, not the work.
- ``stamp`` (async): appends ``<jobId> <time.time()>`` to the ``stamp_file`` setting the
  moment the handler starts (pickup latency; a file, so the log level plays no part).
- ``async_sleep`` / ``sleep``: ``await asyncio.sleep`` / ``time.sleep`` for
  ``payload.seconds``: I/O-bound long jobs held by one daemon.
"""

import asyncio
import time

from vip_worker import hookimpl


async def noop(message, ctx):
    return None


def noop_sync(message, ctx):
    return None


async def stamp(message, ctx):
    now = time.time()
    with open(ctx.plugin_settings["stamp_file"], "a") as fh:
        fh.write(f"{message.job_id} {now:.6f}\n")


async def async_sleep(message, ctx):
    await asyncio.sleep(float(message.payload.get("seconds", 0)))


def blocking_sleep(message, ctx):
    time.sleep(float(message.payload.get("seconds", 0)))


@hookimpl
def vip_worker_register_handlers(register):
    register("noop", noop)
    register("noop_sync", noop_sync)
    register("stamp", stamp)
    register("async_sleep", async_sleep)
    register("sleep", blocking_sleep)


@hookimpl
def vip_worker_register_settings(declare):
    declare("stamp_file", "", help="file the stamp handler appends '<jobId> <unix time>' to")
