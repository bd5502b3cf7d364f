"""Finding, importing and registering plugins; the plugin manager's factory.

Two kinds of plugin, loaded the same way:

- a package (a directory with ``__init__.py``) or a module (``name.py``) in one
  of the ``plugin_dirs``; it is imported as ``vip_worker_plugins.<name>`` so it
  cannot collide with an installed module of the same name;
- an installed distribution exposing an entry point in the
  ``vip_worker.plugins`` group.

Every failure raises ``PluginError`` naming the plugin: an import error, a
misspelled hook, a hook with wrong arguments, a type registered twice.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import stat
import sys
import traceback
import types
from dataclasses import dataclass, field, replace
from pathlib import Path

import pluggy

from vip_worker.errors import ConfigError, PluginError
from vip_worker.plugins import settings as plugin_settings
from vip_worker.plugins.hookspecs import PROJECT, HookSpecs
from vip_worker.plugins.registry import HandlerRegistry, is_async

NAMESPACE = "vip_worker_plugins"
ENTRY_POINT_GROUP = "vip_worker.plugins"
HOOK_PREFIX = "vip_worker_"


@dataclass
class PluginInfo:
    name: str
    origin: str  # a path, or "entry point <dist>"
    types: list[str] = field(default_factory=list)


@dataclass
class LoadedPlugins:
    manager: pluggy.PluginManager
    registry: HandlerRegistry
    infos: list[PluginInfo]
    # Every declared plugin setting with its value, source and secret flag.
    settings: list[plugin_settings.ResolvedSetting] = field(default_factory=list)

    def secrets(self) -> list[str]:
        """Values of the plugin settings declared secret, for the log's masking."""
        return plugin_settings.secret_values(self.settings)


def make_plugin_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(HookSpecs)
    return manager


def discover(plugin_dirs: list[str]) -> list[tuple[str, Path]]:
    """(name, path) of every plugin in the directories, in a stable order."""
    found = []
    for directory in plugin_dirs:
        root = Path(directory)
        if not root.is_dir():
            raise ConfigError("plugin_dirs", f"{directory} is not a directory")
        check_writers("plugin directory", root, root)
        for entry in sorted(root.iterdir()):
            if entry.name.startswith(("_", ".")):
                continue
            if entry.is_dir() and (entry / "__init__.py").is_file():
                for path in (entry, *entry.rglob("*")):
                    if path.is_dir() or path.suffix == ".py":
                        check_writers(f"plugin {entry.name!r}", path, root)
                found.append((entry.name, entry))
            elif entry.suffix == ".py" and entry.is_file():
                check_writers(f"plugin {entry.stem!r}", entry, root)
                found.append((entry.stem, entry))
    return found


def check_writers(what: str, path: Path, root: Path) -> None:
    """Refuse code that users other than the daemon's (or root) can change.

    Loading it would run their code as the daemon's user. Allowed writers: the
    owner when it is root or the daemon's user, and the group when it is the
    daemon's own group. Anything world-writable is refused.
    """
    st = path.lstat()
    problem = None
    if st.st_mode & stat.S_IWOTH:
        problem = "is writable by every user"
    elif st.st_uid not in (0, os.geteuid()):
        problem = f"is owned by another user (uid {st.st_uid})"
    elif st.st_mode & stat.S_IWGRP and st.st_gid not in (0, os.getegid()):
        problem = f"is writable by another group (gid {st.st_gid})"
    if problem:
        raise ConfigError("plugin_dirs", f"{what}: {path} {problem}; refusing to load code "
                          f"others can change (fix with chmod go-w / chown)")


def import_from_path(name: str, path: Path) -> types.ModuleType:
    if NAMESPACE not in sys.modules:
        namespace = types.ModuleType(NAMESPACE)
        namespace.__path__ = []
        sys.modules[NAMESPACE] = namespace
    module_name = f"{NAMESPACE}.{name}"
    if path.is_dir():
        spec = importlib.util.spec_from_file_location(
            module_name, path / "__init__.py", submodule_search_locations=[str(path)]
        )
    else:
        spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(module_name, None)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise PluginError(name, f"failed to import from {path}: {describe_exception(exc)}"
                          ) from exc
    return module


def describe_exception(exc: BaseException) -> str:
    """``ValueError: boom (at plugins/x/__init__.py:12)``: the innermost frame."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = ""
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f" (at {exc.filename}:{exc.lineno})"
    elif frames:
        where = f" (at {frames[-1].filename}:{frames[-1].lineno})"
    return f"{type(exc).__name__}: {exc}{where}"


def check_hook_names(name: str, module: object, manager: pluggy.PluginManager) -> None:
    """A ``vip_worker_*`` attribute that is not a hook is a misspelling: fail loudly."""
    known = {n for n in dir(HookSpecs) if n.startswith(HOOK_PREFIX)}
    for attr in dir(module):
        value = getattr(module, attr)
        if not attr.startswith(HOOK_PREFIX) or not callable(value):
            continue
        if attr not in known:
            raise PluginError(
                name, f"{attr!r} is not a vip-worker hook (known: {', '.join(sorted(known))})"
            )
        if getattr(value, f"{PROJECT}_impl", None) is None:
            # pluggy ignores an unmarked function: the plugin would load and do nothing.
            raise PluginError(name, f"{attr!r} lacks the @vip_worker.hookimpl marker")


def check_no_wrappers(manager: pluggy.PluginManager) -> None:
    """Refuse pluggy hook wrappers: vip-worker calls each implementation itself (so that
    every registration is attributed and every stop hook runs), which a wrapper would
    turn into a generator that does nothing."""
    for name in (n for n in dir(HookSpecs) if n.startswith(HOOK_PREFIX)):
        for impl in getattr(manager.hook, name).get_hookimpls():
            if impl.wrapper or impl.hookwrapper:
                raise PluginError(impl.plugin_name, f"{name}: hook wrappers (wrapper=True, "
                                  f"hookwrapper=True) are not supported")


def load_plugins(settings) -> LoadedPlugins:
    """Import every enabled plugin, register it, and collect its handlers."""
    manager = make_plugin_manager()
    infos: list[PluginInfo] = []
    disabled = set(settings.disabled_plugins)
    seen: dict[str, str] = {}

    candidates: list[tuple[str, str, object]] = []
    for name, path in discover(settings.plugin_dirs):
        if name in disabled:
            continue
        if name in seen:
            raise PluginError(name, f"found twice: {seen[name]} and {path}")
        seen[name] = str(path)
        candidates.append((name, str(path), lambda n=name, p=path: import_from_path(n, p)))
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in disabled:
            continue
        if ep.name in seen:
            raise PluginError(ep.name, f"found twice: {seen[ep.name]} and entry point {ep.value}")
        dist = ep.dist.name if ep.dist else "?"
        seen[ep.name] = f"entry point {ep.value} ({dist})"
        candidates.append((ep.name, seen[ep.name], lambda e=ep: load_entry_point(e)))

    for name, origin, importer in candidates:
        module = importer()
        check_hook_names(name, module, manager)
        try:
            manager.register(module, name=name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            raise PluginError(name, str(exc)) from exc
        infos.append(PluginInfo(name=name, origin=origin))
    try:
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(getattr(exc, "plugin_name", "?"), str(exc)) from exc
    check_no_wrappers(manager)

    registry = HandlerRegistry()
    names = [info.name for info in infos]
    resolved = plugin_settings.resolve_all(manager, settings, names, disabled)
    registry.plugin_settings = plugin_settings.values_of(resolved, names)
    for impl in manager.hook.vip_worker_register_handlers.get_hookimpls():
        # Called per plugin (not through the hook caller) so that each
        # registration is attributed to the plugin that made it.
        try:
            impl.function(register=registry.registrar(impl.plugin_name))
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(
                impl.plugin_name, f"vip_worker_register_handlers failed: "
                                  f"{describe_exception(exc)}"
            ) from exc
    wrap_handlers(manager, registry)
    for info in infos:
        info.types = registry.types_of(info.name)
    for message_type in settings.type_limits:
        if registry.get(message_type) is None:
            raise ConfigError(f"type_limits.{message_type}", "no plugin handles this type")
    return LoadedPlugins(manager=manager, registry=registry, infos=infos, settings=resolved)


def wrap_handlers(manager: pluggy.PluginManager, registry: HandlerRegistry) -> None:
    """Apply every ``vip_worker_wrap_handler`` once, innermost first."""
    impls = manager.hook.vip_worker_wrap_handler.get_hookimpls()
    if not impls:
        return
    for message_type, handler in list(registry.handlers.items()):
        # pluggy calls the last of get_hookimpls() first: it must be the outermost.
        for impl in impls:
            try:
                wrapped = impl.function(handler=handler)
            except Exception as exc:
                raise PluginError(impl.plugin_name, f"vip_worker_wrap_handler failed for "
                                  f"{message_type!r}: {describe_exception(exc)}") from exc
            if wrapped is None:
                continue
            if not callable(wrapped) or is_async(wrapped) != handler.is_async:
                kind = "an async" if handler.is_async else "a plain (def)"
                raise PluginError(impl.plugin_name, f"vip_worker_wrap_handler must return "
                                  f"{kind} callable for {message_type!r}")
            handler = replace(handler, fn=wrapped)
        registry.handlers[message_type] = handler


def load_entry_point(ep: importlib.metadata.EntryPoint) -> object:
    try:
        return ep.load()
    except Exception as exc:
        raise PluginError(ep.name, f"failed to import entry point {ep.value}: "
                                   f"{describe_exception(exc)}") from exc
