"""The hooks a vip-worker plugin may implement, declared once.

A plugin is a module or package with functions marked ``@vip_worker.hookimpl``
and named after one of the specifications below. ``docs/plugins.md`` documents
each of them; a test fails when one is missing there.
"""

import pluggy

PROJECT = "vip_worker"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class HookSpecs:
    @hookspec
    def vip_worker_register_handlers(self, register):
        """Register this plugin's message handlers.

        Called once when the plugins are loaded (at boot, in a throw-away
        process, and again in each poller after fork).

        :param register: ``register(message_type, handler)``. ``handler`` is
            ``def handler(message, ctx)`` (run in the poller's thread pool, for
            blocking clients such as requests and pymongo) or ``async def`` (run
            on the event loop; it must never block). ``message`` is a
            :class:`vip_worker.Envelope`; ``ctx`` a
            :class:`vip_worker.plugins.context.HandlerContext`. A type registered by two
            plugins stops the boot.
        """

    @hookspec
    def vip_worker_register_settings(self, declare):
        """Declare this plugin's own settings, read from its ``[plugins.<name>]`` table.

        Called once at load, before handlers are registered. Each declared key
        may be set in the config file's ``[plugins.<plugin>]`` table or by the
        environment variable ``VIP_WORKER_PLUGINS_<PLUGIN>_<KEY>``; an undeclared
        key or an invalid value stops the boot naming the plugin and the key.
        Handlers read the values as ``ctx.plugin_settings``.

        A plugin that declares settings must have a lowercase ``[a-z][a-z0-9_]*``
        name (it is part of the variable's name), or the boot stops naming it.

        :param declare: ``declare(key, default, parse=None, help="", secret=False)``.
            ``parse`` turns a file value or an environment string into the value,
            raising ``ValueError`` when it is invalid; by default it follows the type
            of ``default`` (bool, int, float, str, list of str). ``secret=True``
            masks the value in ``vip-worker config`` and in the daemon's log.
        """

    @hookspec
    def vip_worker_wrap_handler(self, handler):
        """Wrap a handler with a cross-cutting concern (timing, tracing, error reporting).

        Called once per registered handler at load; return a callable that
        replaces it, or ``None`` to leave it alone. The wrapper must keep the
        handler's kind: ``async def`` for an async handler (``handler.is_async``),
        ``def`` otherwise, and call ``handler.fn(message, ctx)``. Wrapping happens
        once at load, so a daemon without wrappers pays nothing per message.
        Order: the wrapper pluggy calls first is the outermost (mark it
        ``@hookimpl(tryfirst=True)`` to be outermost, ``trylast=True`` innermost).

        :param handler: a :class:`vip_worker.plugins.registry.Handler` (``message_type``,
            ``fn``, ``is_async``, ``plugin``).
        """

    @hookspec
    def vip_worker_poller_start(self, context):
        """A poller process has started, after fork, before its first receive.

        Open per-process clients here (an HTTP session, a database client) and
        keep them in ``context.resources``; handlers see the same dict as
        ``ctx.resources``. May be ``async def``. An exception stops this poller
        (the master reports it and replaces the poller with backoff): the start
        hooks not called yet are skipped, and only the plugins whose start hook
        had returned get their stop hook.

        :param context: the poller's :class:`vip_worker.plugins.context.PollerContext`.
        """

    @hookspec
    def vip_worker_poller_stop(self, context):
        """A poller is about to exit, after its last handler finished or was handed back.

        Close what ``vip_worker_poller_start`` opened. May be ``async def``.
        Stop hooks run in the reverse of the start order (a plugin built on
        another's resources is stopped before it). Every plugin's stop hook runs,
        whatever the others raise; the exceptions are logged together
        (``poller.stop_hook_failed``, naming each plugin). When a start hook
        raised, only the plugins whose start hook had returned are stopped.

        :param context: the poller's :class:`vip_worker.plugins.context.PollerContext`.
        """
