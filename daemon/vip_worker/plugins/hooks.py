"""Calling the poller's hooks: each plugin's implementation on its own, awaited if async."""

from __future__ import annotations

import asyncio

from vip_worker.errors import HookFailed
from vip_worker.plugins.manager import describe_exception


async def call_hook(hook, *, only: set[str] | None = None, done: list[str] | None = None,
                    **kwargs) -> None:
    """Call every implementation of a pluggy hook; await ``async def`` ones.

    A start hook runs in pluggy's order, a stop hook (its name ends in ``_stop``) in
    the reverse: the plugin that started last stops first, so one that uses another's
    resources closes before them. Each implementation is called on its own: pluggy's
    own caller stops at the first that raises, and would leave the ``async def`` ones
    after it un-awaited. A stop hook runs every plugin's implementation whatever the others do, then
    raises one ``HookFailed`` naming each plugin that failed. Any other hook (the start
    hook) stops at the first failure, raised as ``HookFailed`` naming that plugin: the
    poller will not serve, so the plugins after it need not open their clients.
    ``CancelledError`` and other ``BaseException`` pass through at once.

    :param only: call only these plugins' implementations (None: all).
    :param done: appended with each plugin whose implementation returned.
    """
    run_all = hook.name.endswith("_stop")
    failures: list[tuple[str, Exception]] = []
    # get_hookimpls() lists the implementations in reverse call order (tryfirst last).
    impls = hook.get_hookimpls()
    for impl in (impls if run_all else reversed(impls)):
        if only is not None and impl.plugin_name not in only:
            continue
        try:
            result = impl.function(*(kwargs[name] for name in impl.argnames))
            if asyncio.iscoroutine(result):
                await result
            if done is not None:
                done.append(impl.plugin_name)
        except Exception as exc:  # noqa: BLE001 - collected, raised below naming the plugin
            failures.append((impl.plugin_name, exc))
            if not run_all:
                break
    if failures:
        detail = "; ".join(f"plugin {plugin!r}: {describe_exception(exc)}"
                           for plugin, exc in failures)
        raise HookFailed(hook.name, failures, detail) from failures[0][1]
