"""Handlers for the end-to-end tests; each appends to a ledger file.

Ledger lines: ``start <jobId> <pid>`` and ``end <jobId> <pid>``, so a test can
count how many times a job ran and in which poller.
"""

import asyncio
import os
import time

from vip_worker import PermanentError, hookimpl


def record(ctx, kind, message):
    with open(ctx.plugin_settings["ledger"], "a") as fh:
        fh.write(f"{kind} {message.job_id} {os.getpid()}\n")


def sleep_job(message, ctx):
    record(ctx, "start", message)
    time.sleep(float(message.payload.get("seconds", 0)))  # the job: slow on purpose
    record(ctx, "end", message)


async def async_sleep_job(message, ctx):
    record(ctx, "start", message)
    await asyncio.sleep(float(message.payload.get("seconds", 0)))  # the job: slow on purpose
    record(ctx, "end", message)


def failing_job(message, ctx):
    record(ctx, "start", message)
    raise PermanentError("this job can never succeed")


def flaky_job(message, ctx):
    record(ctx, "start", message)
    if ctx.receive_count < int(message.payload.get("succeed_on", 2)):
        raise RuntimeError(f"transient failure on delivery {ctx.receive_count}")
    record(ctx, "end", message)


async def loop_blocker(message, ctx):
    record(ctx, "start", message)
    time.sleep(float(message.payload.get("seconds", 60)))  # blocks the event loop on purpose
    record(ctx, "end", message)


@hookimpl
def vip_worker_register_handlers(register):
    register("sleep", sleep_job)
    register("async_sleep", async_sleep_job)
    register("fail", failing_job)
    register("flaky", flaky_job)
    register("block", loop_blocker)


@hookimpl
def vip_worker_poller_start(context):
    # Per-process resources are made after fork, here.
    context.resources["testjobs.pid"] = os.getpid()
    with open(context.plugin_settings("testjobs")["ledger"], "a") as fh:
        fh.write(f"poller_start - {os.getpid()}\n")


@hookimpl
async def vip_worker_poller_stop(context):
    with open(context.plugin_settings("testjobs")["ledger"], "a") as fh:
        fh.write(f"poller_stop - {context.resources['testjobs.pid']}\n")


@hookimpl
def vip_worker_register_settings(declare):
    declare("ledger", "", help="file the handlers append start/end lines to")
