"""Open the configured job store: MongoDB when ``mongodb_uri`` is set, else SQLite.

Call it in the process that uses the store (after fork): neither a SQLite
connection nor a pymongo client may cross a fork.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from vip_worker.errors import ConfigError
from vip_worker.store import JobStore, StoreUnavailable

SQLITE_FILE = "jobs.sqlite3"
DEFAULT_STATE_DIR = "var"
COLLECTION_KEYS = ("jobs_collection", "content_collection", "media_collection")


def state_dir(settings: Any, environ: Mapping[str, str] | None = None) -> str:
    """``state_dir``; empty: ``$STATE_DIRECTORY`` (systemd's ``StateDirectory=``, whose
    first entry is ours when it lists several), else ``./var``."""
    env = os.environ if environ is None else environ
    if settings.state_dir:
        return settings.state_dir
    systemd_dirs = env.get("STATE_DIRECTORY", "")
    return systemd_dirs.split(":")[0] if systemd_dirs else DEFAULT_STATE_DIR


def runtime_dir(settings: Any, environ: Mapping[str, str] | None = None) -> str:
    """``runtime_dir``; empty: ``$RUNTIME_DIRECTORY`` (systemd's ``RuntimeDirectory=``),
    else ``<state_dir>/run``. Absolute."""
    env = os.environ if environ is None else environ
    if settings.runtime_dir:
        return os.path.abspath(settings.runtime_dir)
    systemd_dirs = env.get("RUNTIME_DIRECTORY", "")
    if systemd_dirs:
        return os.path.abspath(systemd_dirs.split(":")[0])
    return os.path.abspath(os.path.join(state_dir(settings, environ), "run"))


def sqlite_path(settings: Any, environ: Mapping[str, str] | None = None) -> str:
    """The embedded store's file, absolute: ``sqlite_path`` or ``<state_dir>/jobs.sqlite3``."""
    path = settings.sqlite_path or os.path.join(state_dir(settings, environ), SQLITE_FILE)
    return os.path.abspath(path)


def is_dns_failure(exc: BaseException) -> bool:
    """Whether pymongo's ``ConfigurationError`` wraps a failed DNS query (dnspython's
    exceptions live in the ``dns`` package)."""
    cause = exc.__cause__
    return cause is not None and type(cause).__module__.split(".")[0] == "dns"


def open_store(settings: Any, environ: Mapping[str, str] | None = None) -> JobStore:
    """The job store ``settings`` name.

    :param settings: :class:`vip_worker.config.Settings` (or any object with the
        pipeline settings as attributes).
    :param environ: the environment, for ``$STATE_DIRECTORY`` (default ``os.environ``).
    :raises ConfigError: a setting the store cannot use, named.
    :raises StoreUnavailable: the store could not be reached or created.
    """
    names = {key: getattr(settings, key) for key in COLLECTION_KEYS}
    if names["jobs_collection"] in (names["content_collection"], names["media_collection"]):
        raise ConfigError("jobs_collection", "must differ from the content collections")
    if settings.mongodb_uri:
        from pymongo.errors import ConfigurationError, InvalidName

        from vip_worker.store.mongo import MongoStore

        try:
            return MongoStore(settings.mongodb_uri, settings.mongodb_database, **names,
                              metrics_retention_h=retention_h(settings))
        except InvalidName as exc:
            raise ConfigError("mongodb_database/collections", str(exc)) from None
        except (ConfigurationError, ValueError) as exc:
            if is_dns_failure(exc):
                # A mongodb+srv:// name pymongo resolves in the client's constructor: DNS
                # down or slow is an outage (retried), not a setting to fix (exit 78).
                raise StoreUnavailable(f"mongodb: DNS lookup failed: {exc}") from exc
            # InvalidURI, and pymongo's ValueError for a port that is not a number: the
            # collections were checked above, so a ValueError here is the URI's.
            raise ConfigError("mongodb_uri", str(exc)) from None

    from vip_worker.store.sqlite import SqliteStore, check_name

    for key, name in names.items():
        try:
            check_name(name)
        except ValueError as exc:
            raise ConfigError(key, str(exc)) from None
    return SqliteStore(sqlite_path(settings, environ), **names,
                       metrics_retention_h=retention_h(settings))


def retention_h(settings: Any) -> float:
    """``metrics_retention_h`` (a settings object without it: the default)."""
    from vip_worker.store.buckets import DEFAULT_RETENTION_H

    return float(getattr(settings, "metrics_retention_h", DEFAULT_RETENTION_H))


def provide_store(context: Any) -> None:
    """Register the configured job store as the context's ``store`` resource: opened on
    first use (``ctx.store``) in the process that uses it, closed when the poller stops.

    :param context: a :class:`vip_worker.plugins.context.PollerContext`.
    """
    from vip_worker.plugins.context import STORE

    context.provide(STORE, lambda: open_store(context.settings), close=lambda store: store.close())
