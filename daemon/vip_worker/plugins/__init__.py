"""The plugin system: hook specs, the manager factory, the handler registry,
plugin settings and the contexts handed to hooks and handlers.

``load_plugins`` is importable from here, as the plugin guide shows.
"""

from vip_worker.plugins.manager import LoadedPlugins, describe_exception, load_plugins

__all__ = ["LoadedPlugins", "describe_exception", "load_plugins"]
