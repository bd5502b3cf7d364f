"""Each plugin's own settings: declared by the plugin, read from its config table and env.

A plugin declares its keys in ``vip_worker_register_settings(declare)``. Values
come from the declared default, then the ``[plugins.<plugin>]`` table, then the
environment variable ``VIP_WORKER_PLUGINS_<PLUGIN>_<KEY>``. An undeclared key, an
invalid value, or a table for a plugin that is not loaded stops the boot with
the plugin's name and the key. So does a plugin with settings whose name cannot
be part of an environment variable name (it must be lowercase ``[a-z][a-z0-9_]*``),
and two settings whose variables would have the same name.

A setting declared ``secret=True`` is masked by ``vip-worker config`` and in every
log line of the daemon (see ``secret_values``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vip_worker import config
from vip_worker.errors import ConfigError, PluginError

ENV_PREFIX = "VIP_WORKER_PLUGINS_"
HIDDEN = "****"


@dataclass(frozen=True)
class PluginSetting:
    key: str
    default: Any
    parse: Callable[[Any], Any]
    help: str
    secret: bool = False


@dataclass(frozen=True)
class ResolvedSetting:
    """One plugin setting's effective value and where it came from."""

    plugin: str
    key: str
    value: Any
    source: str  # "default" | "file <path>" | "env <NAME>"
    secret: bool


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


def declarations(manager, loaded: list[str]) -> dict[str, dict[str, PluginSetting]]:
    """Every loaded plugin's declared settings (runs ``vip_worker_register_settings``)."""
    declared: dict[str, dict[str, PluginSetting]] = {name: {} for name in loaded}
    for impl in manager.hook.vip_worker_register_settings.get_hookimpls():
        table = declared[impl.plugin_name]

        def declare(key: str, default: Any, parse: Callable | None = None, help: str = "",
                    secret: bool = False, _table=table, _plugin=impl.plugin_name) -> None:
            if not isinstance(key, str) or not config.NAME_RE.match(key):
                raise PluginError(_plugin, f"setting name {key!r} must be lowercase [a-z0-9_]")
            if key in _table:
                raise PluginError(_plugin, f"setting {key!r} declared twice")
            _table[key] = PluginSetting(key, default, parse or parser_for(default), help,
                                        bool(secret))

        try:
            impl.function(declare=declare)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(impl.plugin_name,
                              f"vip_worker_register_settings failed: {exc!r}") from exc
    check_env_names(declared)
    return declared


def check_env_names(declared: dict[str, dict[str, PluginSetting]]) -> None:
    """Each setting must have an environment variable of its own, which names the plugin."""
    owners: dict[str, str] = {}
    for plugin, keys in declared.items():
        if keys and not config.NAME_RE.match(plugin):
            raise PluginError(plugin, "declares settings, but its name cannot be part of their "
                              "environment variable names (VIP_WORKER_PLUGINS_<PLUGIN>_<KEY>): "
                              "a plugin with settings needs a lowercase name, [a-z][a-z0-9_]*, "
                              "at most 64 characters")
        for key in keys:
            name = env_name(plugin, key)
            if name in owners:
                raise PluginError(plugin, f"setting {key!r} would be set by {name}, as "
                                  f"{owners[name]} is: rename one of them")
            owners[name] = f"setting {key!r} of plugin {plugin!r}"


def resolve_all(manager, settings, loaded: list[str], disabled: set[str]
                ) -> list[ResolvedSetting]:
    """Every loaded plugin's settings, validated, with their sources; raises ConfigError
    (or PluginError) naming the plugin and the key."""
    declared = declarations(manager, loaded)
    for plugin in settings.plugin_settings:
        if plugin not in declared and plugin not in disabled:
            raise ConfigError(f"plugins.{plugin}", "no such plugin is loaded")
    env = settings.plugin_env
    for name in env:
        if not any(name == env_name(p, k) for p, keys in declared.items() for k in keys):
            if not any(name.startswith(ENV_PREFIX + p.upper() + "_") for p in disabled):
                raise ConfigError(name, "no loaded plugin declares this setting", "environment")

    rows: list[ResolvedSetting] = []
    for plugin, keys in declared.items():
        table = settings.plugin_settings.get(plugin, {})
        for key in table:
            if key not in keys:
                raise ConfigError(f"plugins.{plugin}.{key}",
                                  f"plugin {plugin!r} declares no such setting "
                                  f"(declared: {', '.join(sorted(keys)) or 'none'})")
        for key, spec in keys.items():
            value, source = spec.default, "default"
            if key in table:
                value, source = table[key], f"file {settings.config_file}"
            if env_name(plugin, key) in env:
                value, source = env[env_name(plugin, key)], f"env {env_name(plugin, key)}"
            if source != "default":
                try:
                    value = spec.parse(value)
                except ValueError as exc:
                    raise ConfigError(f"plugins.{plugin}.{key}", str(exc), source) from None
            rows.append(ResolvedSetting(plugin, key, value, source, spec.secret))
    return rows


def values_of(rows: list[ResolvedSetting], loaded: list[str]) -> dict[str, dict]:
    """plugin -> {key: value}: what handlers see as ``ctx.plugin_settings``."""
    values: dict[str, dict] = {name: {} for name in loaded}
    for row in rows:
        values[row.plugin][row.key] = row.value
    return values


def resolve(manager, settings, loaded: list[str], disabled: set[str]) -> dict[str, dict]:
    """Every loaded plugin's settings, validated; raises ConfigError naming plugin and key."""
    return values_of(resolve_all(manager, settings, loaded, disabled), loaded)


def secret_values(rows: list[ResolvedSetting]) -> list[str]:
    """The values of settings declared secret (each string of a list too), for the log's
    masking. Empty values are left out."""
    found: list[str] = []
    for row in rows:
        if not row.secret:
            continue
        items = row.value if isinstance(row.value, (list, tuple)) else [row.value]
        found += [str(item) for item in items if item not in (None, "")]
    return found


def describe(settings, rows: list[ResolvedSetting] | None) -> list[dict]:
    """``vip-worker config`` rows of the plugins' settings, secrets masked.

    :param rows: the loaded plugins' settings (``LoadedPlugins.settings``), every declared
        key with its source; ``None`` when the plugins could not be loaded: then only the
        file's ``[plugins.*]`` values and the ``VIP_WORKER_PLUGINS_*`` variables are shown,
        every value masked, since which of them are secret is unknown.
    """
    if rows is None:
        shown = []
        for plugin, table in settings.plugin_settings.items():
            shown += [{"key": f"plugins.{plugin}.{key}", "value": HIDDEN,
                       "source": f"file {settings.config_file}"} for key in table]
        shown += [{"key": name, "value": HIDDEN, "source": f"env {name}"}
                  for name in sorted(settings.plugin_env)]
        return shown
    result = []
    for row in rows:
        key = f"plugins.{row.plugin}.{row.key}"
        if not row.secret:
            value = config.mask(key, row.value)
        elif isinstance(row.value, str) or not row.value:
            value = config.mask_secret(row.value)
        else:
            value = HIDDEN
        result.append({"key": key, "value": value, "source": row.source})
    return result
