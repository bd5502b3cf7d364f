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
# The boot's SQS check, run beside the store's: a blackholed endpoint costs botocore
# 3 x connect_timeout (5 s); the pollers' own retries are what matter then.
SQS_CHECK_TIMEOUT_S = 6.0


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
        from vip_worker.pipeline.quota import provide_quota
        from vip_worker.store.factory import provide_store

        # The job store and the quota governor are resources the spine does not open
        # itself: ctx.store, ctx.quota.
        return poller.main(poller_settings, index, shm,
                           providers=[provide_store, provide_quota])

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
    (``store.unreachable``), not refused. And it asks SQS about every queue
    (``check_queues``): one SQS says does not exist is the error; one it could not ask
    about is logged here (``queue.unchecked``), not refused.

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
            answer = {"secrets": loaded.secrets(), **run_checks(settings)}
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
        return queue_problem(answer.get("queues") or {}), secrets
    return text or "plugin check failed", []


def run_checks(settings) -> dict:
    """The preflight child's checks of the store and the queues, run side by side
    (a reload waits for them on the master's loop), each bounded in time."""
    store_late = f"the store did not answer within {STORE_CHECK_TIMEOUT_S:g} s"
    sqs_late = f"SQS did not answer within {SQS_CHECK_TIMEOUT_S:g} s"
    store, queues = bounded_all(
        [(lambda: check_store(settings), STORE_CHECK_TIMEOUT_S, store_late),
         (lambda: check_queues(settings), SQS_CHECK_TIMEOUT_S,
          {"missing": [], "unchecked": [["", "", sqs_late]]})])
    return {"store_error": store, "queues": queues}


def check_queues(settings) -> dict[str, list[list[str]]]:
    """Ask SQS about each queue and each ``dlq_url`` set, in the preflight child (a boto3
    client must not cross the master's forks): ``{"missing": [[what, url]], "unchecked":
    [[queue name, url, error]]}``. Missing: SQS answered that it does not exist (a
    setting names a queue that is not there). Unchecked: any other failure to ask."""
    from vip_worker.sqs import boto as sqs_boto
    from vip_worker.sqs.api import TRANSPORT_ERRORS, error_code
    from vip_worker.sqs.queues import queue_exists

    found: dict[str, list[list[str]]] = {"missing": [], "unchecked": []}
    if not settings.queues:
        return found
    try:
        client = sqs_boto.connect(settings.region, settings.sqs_endpoint_url)
    except TRANSPORT_ERRORS as exc:  # no client, no answer: as for an unreachable SQS
        found["unchecked"].append(["", "", f"{error_code(exc)}: {str(exc)[:300]}"])
        return found
    for queue in settings.queues:
        for what, url in ((f"queue {queue.name!r}", queue.url),
                          (f"the dlq_url of queue {queue.name!r}", queue.dlq_url)):
            if not url:
                continue
            try:
                if not queue_exists(client, url):
                    found["missing"].append([what, url])
            except TRANSPORT_ERRORS as exc:
                found["unchecked"].append([queue.name, url,
                                           f"{error_code(exc)}: {str(exc)[:300]}"])
    return found


def queue_problem(queues: dict) -> str | None:
    """The boot's error for the queues SQS says do not exist (None: none); those it
    could not ask about are logged (``queue.unchecked``), the pollers retry them."""
    for name, url, error in queues.get("unchecked", []):
        log.warning("queue.unchecked", extra={
            "queue": name or None, "url": url or None, "error": error,
            "detail": "could not ask SQS whether the queue exists; the daemon starts "
                      "anyway and its pollers retry"})
    missing = queues.get("missing", [])
    if not missing:
        return None
    return "; ".join(f"{what} does not exist: {url}" for what, url in missing) + (
        " (SQS answered QueueDoesNotExist; check the queue's url and dlq_url settings, "
        "its region and account)")


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


def bounded(fn, timeout_s: float, late):
    """``fn()`` in a daemon thread, waited for at most ``timeout_s``; ``late`` when it
    has not returned by then (the preflight child exits without waiting for it). An
    exception it raises is raised here."""
    return bounded_all([(fn, timeout_s, late)])[0]


def bounded_all(calls) -> list:
    """``bounded`` for several ``(fn, timeout_s, late)`` at once: each in its own daemon
    thread, all started together, each waited for up to its own deadline. The results
    in order; the first exception raised (in order) is raised here."""
    start = time.monotonic()
    runs = []
    for fn, timeout_s, late in calls:
        outcome: list = []

        def work(fn=fn, outcome=outcome):
            try:
                outcome.append((True, fn()))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                outcome.append((False, exc))

        thread = threading.Thread(target=work, name="preflight-check", daemon=True)
        thread.start()
        runs.append((thread, outcome, start + timeout_s, late))
    results = []
    for thread, outcome, deadline, late in runs:
        thread.join(max(0.0, deadline - time.monotonic()))
        if not outcome:
            results.append(late)
            continue
        ok, value = outcome[0]
        if not ok:
            raise value
        results.append(value)
    return results


def write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]
