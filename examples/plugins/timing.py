"""Example wrapper plugin: log handlers that run longer than a threshold.

Not loaded by default (it lives outside plugins/): add this directory to
``plugin_dirs`` to use it, e.g. ``plugin_dirs = ["plugins", "examples/plugins"]``.
It shows the ``vip_worker_wrap_handler`` hook: the wrapper is built once per
handler at load, keeps the handler's kind (def or async def), and adds one
monotonic-clock read before and after each call.
"""

import time

from vip_worker import hookimpl


@hookimpl
def vip_worker_register_settings(declare):
    declare("slow_after_s", 300.0, help="log timing.slow_handler for handlers slower than this")


@hookimpl(tryfirst=True)  # outermost: the time includes every other wrapper
def vip_worker_wrap_handler(handler):
    inner = handler.fn

    def report(ctx, started):
        elapsed = time.monotonic() - started
        # ctx.plugin_settings are the handler's plugin's; ours come from the poller.
        if elapsed > ctx.poller.plugin_settings("timing")["slow_after_s"]:
            ctx.log.warning("timing.slow_handler", extra={"elapsed_s": round(elapsed, 3)})

    if handler.is_async:
        async def timed(message, ctx):
            started = time.monotonic()
            try:
                return await inner(message, ctx)
            finally:
                report(ctx, started)
    else:
        def timed(message, ctx):
            started = time.monotonic()
            try:
                return inner(message, ctx)
            finally:
                report(ctx, started)
    return timed
