"""``vip-worker run``: logging, the plugin check in a throw-away child, then the arbiter.

Imported only when ``run`` runs (``cli.COMMANDS``). The master keeps what this module
imports: the standard library and the spine, never plugin code (each poller imports it
fresh after fork; ``preflight`` loads it in a child that exits).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import sys
import threading
import time

from vip_worker import cli, config, exitcodes, logconfig
from vip_worker.errors import ConfigError, PluginError

log = logging.getLogger("vip_worker.boot")
PREFLIGHT_TIMEOUT_S = 60.0
# The boot's MongoDB check waits this long (pymongo's own default is 30 s; ours 5 s, but
# a URI may set more): a reload runs it while the master's loop waits.
STORE_CHECK_TIMEOUT_S = 6.0


def cmd_run(args, settings) -> int:
    secrets = set(config.secrets(settings))
    logging_fields = {"fields": install_logging(settings, secrets)}
    problem, plugin_secrets = preflight(settings)
    if problem:
        print(f"vip-worker: {problem}", file=sys.stderr)
        log.critical("boot.failed", extra={"error": problem})
        return exitcodes.CONFIG
    if plugin_secrets:
        secrets.update(plugin_secrets)
        logging_fields["fields"] = install_logging(settings, secrets)

    from vip_worker.arbiter import Arbiter

    def reload():
        fresh = config.load(args.config, overrides=cli.overrides(args))
        trouble, fresh_secrets = preflight(fresh)
        if trouble:
            raise ConfigError("reload", trouble)
        new = (set(config.secrets(fresh)) | set(fresh_secrets)) - secrets
        if new:
            # The old values stay masked too: old pollers may still log them.
            secrets.update(new)
            logging_fields["fields"] = install_logging(settings, secrets)
        return fresh

    def poller_main(poller_settings, index, shm):
        from vip_worker import poller
        from vip_worker.store.factory import provide_store

        # The job store is a resource the spine does not open itself: ctx.store.
        return poller.main(poller_settings, index, shm, providers=[provide_store])

    from vip_worker.store.factory import runtime_dir

    arbiter = Arbiter(settings=settings, poller_main=poller_main, reload=reload,
                      after_fork=lambda index: logconfig.after_fork(logging_fields["fields"],
                                                                    index),
                      runtime_dir=runtime_dir(settings), start_services=start_services)
    return arbiter.run()


def install_logging(settings, secrets) -> logconfig.ProcessFields:
    """(Re)install the JSON log handler, masking ``secrets``; close the one it replaces.

    Level and file are those of ``settings`` (the boot's: a reload does not change them).
    """
    old = list(logging.getLogger(logconfig.ROOT).handlers)
    fields = logconfig.configure(settings.log_level, settings.log_file, secrets=sorted(secrets))
    for handler in old:
        handler.close()
    return fields


def start_services(arbiter) -> list:
    """The master's optional threads: the health endpoint and the spot watcher.

    Returns objects with ``stop()``; the arbiter stops them when it exits. A health port
    that cannot be bound fails the boot with exit 78, like any other bad setting.
    """
    from vip_worker.services import health, spot

    settings = arbiter.settings
    services = []
    if settings.health_port:
        # The health thread reads only what the master's loop published (one attribute).
        server = health.HealthServer(settings.health_host, settings.health_port,
                                     lambda: arbiter.published)
        try:
            server.start()
        except OSError as exc:
            log.critical("health.bind_failed", extra={
                "host": settings.health_host, "port": settings.health_port, "error": str(exc)})
            raise SystemExit(exitcodes.CONFIG) from None
        services.append(server)
    if settings.spot_watch:
        # on_notice runs in the watcher thread; request_stop only queues a TERM for the master.
        watcher = spot.SpotWatcher(settings.imds_endpoint, settings.spot_poll_interval_s,
                                   spot.stopper(arbiter.request_stop, settings.grace_period_s))
        watcher.start()
        services.append(watcher)
    return services


def preflight(settings) -> tuple[str | None, list[str]]:
    """Load every plugin in a throw-away child; return (the error text or None, the values
    of the plugin settings declared secret, for the log's masking). The child also
    checks a MongoDB job store (``check_store``); unreachable, it is logged here
    (``store.unreachable``), not refused.

    The master itself never imports plugin code: each poller imports it fresh
    after fork, which is what lets SIGHUP pick up changed plugins.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        code = exitcodes.OK
        try:
            from vip_worker.plugins import load_plugins

            loaded = load_plugins(settings)
            if not loaded.registry.handlers:
                raise ConfigError("plugin_dirs", "no plugin registers a handler (looked in: "
                                  f"{', '.join(settings.plugin_dirs) or 'no directory'}; "
                                  "and the vip_worker.plugins entry points)")
            answer = {"secrets": loaded.secrets(), "store_error": bounded(
                lambda: check_store(settings), STORE_CHECK_TIMEOUT_S,
                f"the store did not answer within {STORE_CHECK_TIMEOUT_S:g} s")}
            write_all(write_fd, json.dumps(answer).encode())
        except (PluginError, ConfigError) as exc:
            os.write(write_fd, str(exc).encode()[:60000])
            code = exitcodes.CONFIG
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, then exit
            os.write(write_fd, f"plugin loading failed: {exc!r}".encode()[:60000])
            code = exitcodes.CONFIG
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks = []
    deadline = time.monotonic() + PREFLIGHT_TIMEOUT_S
    while True:
        # Bounded: a plugin whose import hangs must not freeze the master (its loop
        # feeds systemd's watchdog).
        ready, _, _ = select.select([read_fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read_fd)
            return f"loading the plugins took longer than {PREFLIGHT_TIMEOUT_S:g} s", []
        chunk = os.read(read_fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    text = b"".join(chunks).decode(errors="replace")
    if os.waitstatus_to_exitcode(status) == exitcodes.OK:
        try:
            answer = json.loads(text)
            secrets = [str(s) for s in answer["secrets"]]
        except (ValueError, TypeError, KeyError):
            return "plugin check failed: unreadable answer from the check", []
        if answer.get("store_error"):
            log.error("store.unreachable", extra={
                "backend": "mongodb", "error": str(answer["store_error"])[:1000],
                "detail": "the daemon starts anyway; jobs are retried (StoreUnavailable) "
                          "until the store answers"})
        return None, secrets
    return text or "plugin check failed", []


def check_store(settings) -> str | None:
    """Open the MongoDB store and read from it, in the preflight child (a pymongo client
    must not cross the master's forks); the error met, or None. A setting the store
    cannot use raises ``ConfigError`` (a boot failure). The embedded SQLite store is not
    checked: it is a local file, made on first use."""
    if not settings.mongodb_uri:
        return None
    from vip_worker.store.factory import open_store

    store = None
    try:
        store = open_store(settings)
        store.get_job("vip-worker-boot-check")
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - unreachable, refused, an index conflict...
        return f"{type(exc).__name__}: {exc}"
    finally:
        if store is not None:
            with contextlib.suppress(Exception):
                store.close()
    return None


def bounded(fn, timeout_s: float, late: str):
    """``fn()`` in a daemon thread, waited for at most ``timeout_s``; ``late`` when it
    has not returned by then (the preflight child exits without waiting for it). An
    exception it raises is raised here."""
    outcome: list = []

    def work():
        try:
            outcome.append((True, fn()))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            outcome.append((False, exc))

    thread = threading.Thread(target=work, name="preflight-check", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not outcome:
        return late
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]
