"""Message type -> handler, filled by the plugins' ``vip_worker_register_handlers``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from vip_worker.errors import PluginError

TYPE_MAX_LEN = 256


@dataclass(frozen=True, slots=True)
class Handler:
    message_type: str
    fn: Callable
    is_async: bool
    plugin: str


class HandlerRegistry:
    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {}
        # plugin -> its resolved settings (see vip_worker.plugins.settings)
        self.plugin_settings: dict[str, dict] = {}

    def registrar(self, plugin: str) -> Callable[[str, Callable], None]:
        """The ``register`` callable handed to one plugin's hook."""

        def register(message_type: str, handler: Callable) -> None:
            self.add(plugin, message_type, handler)

        return register

    def add(self, plugin: str, message_type: str, fn: Callable) -> None:
        if not isinstance(message_type, str) or not 0 < len(message_type) <= TYPE_MAX_LEN:
            raise PluginError(plugin, f"message type must be a non-empty string, got "
                                      f"{message_type!r}")
        if not callable(fn):
            raise PluginError(plugin, f"handler for {message_type!r} is not callable")
        try:
            inspect.signature(fn).bind(None, None)
        except TypeError:
            raise PluginError(
                plugin, f"handler for {message_type!r} must accept (message, ctx)"
            ) from None
        existing = self.handlers.get(message_type)
        if existing is not None:
            raise PluginError(
                plugin,
                f"message type {message_type!r} is already registered by plugin "
                f"{existing.plugin!r}",
            )
        self.handlers[message_type] = Handler(
            message_type=message_type,
            fn=fn,
            is_async=is_async(fn),
            plugin=plugin,
        )

    def get(self, message_type: str) -> Handler | None:
        return self.handlers.get(message_type)

    def types_of(self, plugin: str) -> list[str]:
        return sorted(t for t, h in self.handlers.items() if h.plugin == plugin)


def is_async(fn: Callable) -> bool:
    """``async def`` functions, through decorators and ``async def __call__`` objects."""
    target = inspect.unwrap(fn)
    if inspect.iscoroutinefunction(target):
        return True
    call = getattr(target, "__call__", None)  # noqa: B004 - objects with async __call__
    return call is not None and inspect.iscoroutinefunction(call)
