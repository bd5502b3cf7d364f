"""Each plugin's own settings: declared by the plugin, read from its config table and env.

A plugin declares its keys in ``vip_worker_register_settings(declare)``. Values
come from the declared default, then the ``[plugins.<plugin>]`` table, then the
environment variable ``VIP_WORKER_PLUGINS_<PLUGIN>_<KEY>``. An undeclared key, an
invalid value, or a table for a plugin that is not loaded stops the boot with
the plugin's name and the key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vip_worker import config
from vip_worker.errors import ConfigError, PluginError

ENV_PREFIX = "VIP_WORKER_PLUGINS_"


@dataclass(frozen=True)
class PluginSetting:
    key: str
    default: Any
    parse: Callable[[Any], Any]
    help: str


def parser_for(default: Any) -> Callable[[Any], Any]:
    if isinstance(default, bool):
        return config.boolean
    if isinstance(default, int):
        return config.integer(-(2**63), 2**63 - 1)
    if isinstance(default, float):
        return config.number(float("-inf"), float("inf"))
    if isinstance(default, list):
        return config.str_list
    return config.string


def env_name(plugin: str, key: str) -> str:
    return f"{ENV_PREFIX}{plugin.upper()}_{key.upper()}"


def resolve(manager, settings, loaded: list[str], disabled: set[str]) -> dict[str, dict]:
    """Every loaded plugin's settings, validated; raises ConfigError naming plugin and key."""
    declared: dict[str, dict[str, PluginSetting]] = {name: {} for name in loaded}
    for impl in manager.hook.vip_worker_register_settings.get_hookimpls():
        table = declared[impl.plugin_name]

        def declare(key: str, default: Any, parse: Callable | None = None, help: str = "",
                    _table=table, _plugin=impl.plugin_name) -> None:
            if not isinstance(key, str) or not config.NAME_RE.match(key):
                raise PluginError(_plugin, f"setting name {key!r} must be lowercase [a-z0-9_]")
            if key in _table:
                raise PluginError(_plugin, f"setting {key!r} declared twice")
            _table[key] = PluginSetting(key, default, parse or parser_for(default), help)

        try:
            impl.function(declare=declare)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(impl.plugin_name,
                              f"vip_worker_register_settings failed: {exc!r}") from exc

    for plugin in settings.plugin_settings:
        if plugin not in declared and plugin not in disabled:
            raise ConfigError(f"plugins.{plugin}", "no such plugin is loaded")
    env = settings.plugin_env
    for name in env:
        if not any(name == env_name(p, k) for p, keys in declared.items() for k in keys):
            if not any(name.startswith(ENV_PREFIX + p.upper() + "_") for p in disabled):
                raise ConfigError(name, "no loaded plugin declares this setting", "environment")

    resolved: dict[str, dict] = {}
    for plugin, keys in declared.items():
        table = settings.plugin_settings.get(plugin, {})
        for key in table:
            if key not in keys:
                raise ConfigError(f"plugins.{plugin}.{key}",
                                  f"plugin {plugin!r} declares no such setting "
                                  f"(declared: {', '.join(sorted(keys)) or 'none'})")
        values = {}
        for key, spec in keys.items():
            value, source = spec.default, None
            if key in table:
                value, source = table[key], "file"
            if env_name(plugin, key) in env:
                value, source = env[env_name(plugin, key)], f"env {env_name(plugin, key)}"
            if source is not None:
                try:
                    value = spec.parse(value)
                except ValueError as exc:
                    raise ConfigError(f"plugins.{plugin}.{key}", str(exc), source) from None
            values[key] = value
        resolved[plugin] = values
    return resolved
