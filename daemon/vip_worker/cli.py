"""argv -> settings -> logging -> arbiter; every command returns an exit code.

Commands (each documented in docs/cli.md; a test keeps the two in step):

- ``vip-worker run [--config FILE] [--processes N]``: start the master.
- ``vip-worker config [--config FILE] [--json]``: the effective settings, their
  sources, secrets masked.
- ``vip-worker plugins [--config FILE] [--json]``: each plugin, where it was
  loaded from, and its message types.
- ``vip-worker enqueue TYPE [--topic ... | --payload JSON | --file JSONL]``: create
  jobs and queue them (inline without SQS); prints the job ids.
- ``vip-worker jobs show ID [--json]`` / ``jobs list [--status S] [--json]``.
- ``vip-worker status`` / ``vip-worker dlq peek|redrive``: see ``ops_cli``.
- ``vip-worker new-plugin NAME [--dir DIR]``: scaffold a plugin that works as generated.
- ``vip-worker dev [--exit-when-done] ...``: the embedded stack on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import select
import signal
import sys
import threading
import time

from vip_worker import __version__, config, exitcodes, logconfig
from vip_worker.errors import ConfigError, PluginError

log = logging.getLogger("vip_worker.cli")
# Each command's code, imported only when that command runs: ``--help`` stays fast and
# the master (``run``) never imports the ops commands, the dev stack or boto3.
COMMANDS = {
    "run": "vip_worker.cli:cmd_run",
    "config": "vip_worker.cli:cmd_config",
    "plugins": "vip_worker.cli:cmd_plugins",
    "enqueue": "vip_worker.ops.jobs:cmd_enqueue",
    "jobs": "vip_worker.ops.jobs:cmd_jobs",
    "status": "vip_worker.ops.commands:cmd_status",
    "dlq": "vip_worker.ops.commands:cmd_dlq",
}
# Commands that need no settings: called with the parsed arguments only.
STANDALONE_COMMANDS = {
    "dev": "vip_worker.dev.stack:main",
    "new-plugin": "vip_worker.dev.scaffold:main",
}
# --flag -> payload field (camelCase, as the app sends it) and its type.
PAYLOAD_FLAGS = {
    "mode": str, "topic": str, "word-count": int, "tone": str, "keywords": config.str_list,
    "target-audience": str, "language": str, "prompt": str, "size": str, "style": str,
    "seo-optimization": config.boolean, "include-images": config.boolean,
}
JOB_STATUSES = ("queued", "processing", "completed", "failed")
DEFAULT_WATCH_S = 2.0
MIN_WATCH_S = 1.0
PREFLIGHT_TIMEOUT_S = 60.0
# The boot's MongoDB check waits this long (pymongo's own default is 30 s; ours 5 s, but
# a URI may set more): a reload runs it while the master's loop waits.
STORE_CHECK_TIMEOUT_S = 6.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vip-worker", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"vip-worker {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="start the master and its pollers")
    add_config_arg(run)
    run.add_argument("--processes", type=int, help="poller processes (overrides config)")

    show = commands.add_parser("config", help="print the effective settings and their sources")
    add_config_arg(show)
    show.add_argument("--json", action="store_true", help="one JSON document")

    plugins = commands.add_parser("plugins", help="list plugins, their origin and types")
    add_config_arg(plugins)
    plugins.add_argument("--json", action="store_true", help="one JSON document")

    enqueue = commands.add_parser("enqueue", help="create jobs and queue their messages")
    add_config_arg(enqueue)
    enqueue.add_argument("type", help="message type, e.g. articles or images")
    enqueue.add_argument("--user-id", default="cli", help="the job's userId")
    enqueue.add_argument("--job-id", help="the job's id (default: a new ObjectId)")
    enqueue.add_argument("--payload", help="the payload as a JSON object")
    enqueue.add_argument("--file", help="JSON lines, one payload per line (bulk)")
    for flag, kind in PAYLOAD_FLAGS.items():
        enqueue.add_argument(f"--{flag}", type=kind, help=f"payload field {camel(flag)}")

    jobs = commands.add_parser("jobs", help="show jobs from the job store")
    jobs_commands = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    show_job = jobs_commands.add_parser("show", help="one job: status, progress, error, times")
    add_config_arg(show_job)
    show_job.add_argument("job_id")
    show_job.add_argument("--json", action="store_true", help="one JSON document")
    list_jobs = jobs_commands.add_parser("list", help="recent jobs, newest first")
    add_config_arg(list_jobs)
    list_jobs.add_argument("--status", type=job_status, metavar="STATUS",
                           help=f"only jobs in this status: {', '.join(JOB_STATUSES)}")
    list_jobs.add_argument("--limit", type=int, default=50)
    list_jobs.add_argument("--json", action="store_true", help="one JSON document")

    dev = commands.add_parser("dev", help="run the embedded stack on 127.0.0.1 (no AWS)")
    dev.add_argument("--port", type=int, default=0,
                     help="local SQS port (default: VIP_DEV_SQS_PORT or a free one)")
    dev.add_argument("--processes", type=int, default=2, help="poller processes")
    dev.add_argument("--jobs", type=int, default=6, help="demo jobs to enqueue")
    dev.add_argument("--latency", type=float, default=1.0,
                     help="seconds the stub generation service takes per call")
    dev.add_argument("--failure-rate", type=float, default=0.0,
                     help="share of generation calls the stub answers with 503")
    dev.add_argument("--exit-when-done", action="store_true",
                     help="stop and exit 0 once the demo batch is done")
    dev.add_argument("--timeout", type=float, default=120.0,
                     help="with --exit-when-done: give up (exit 1) after this many seconds")
    dev.add_argument("--state-dir", metavar="DIR",
                     help="keep the job store here (default: a temporary directory, removed "
                          "on exit)")
    add_ops_commands(commands)

    new_plugin = commands.add_parser("new-plugin", help="scaffold a handler plugin package")
    new_plugin.add_argument("name", help="plugin name, also its message type ([a-z0-9_])")
    new_plugin.add_argument("--dir", default="plugins",
                            help="where to create it (default: ./plugins)")
    return parser


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE",
                        help="TOML config file (default: $VIP_WORKER_CONFIG)")


def add_ops_commands(commands) -> None:
    """``status``, ``dlq peek`` and ``dlq redrive`` (their code: ``vip_worker.ops.commands``)."""
    status = commands.add_parser("status", help="queue depths, DLQs, rate, ETA, local daemon")
    add_config_arg(status)
    status.add_argument("--json", action="store_true", help="one JSON document")
    status.add_argument("--watch", nargs="?", type=watch_interval, const=DEFAULT_WATCH_S,
                        metavar="SECONDS",
                        help=f"refresh every SECONDS (default {DEFAULT_WATCH_S:g}, at least "
                             f"{MIN_WATCH_S:g}) until Ctrl-C")

    dlq = commands.add_parser("dlq", help="look at or move back a queue's dead letters")
    actions = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    peek = actions.add_parser("peek", help="show dead letters and leave them in place")
    add_config_arg(peek)
    peek.add_argument("queue", metavar="QUEUE", help="a configured queue's name; its DLQ is read")
    peek.add_argument("-n", type=positive_int, default=10, metavar="N",
                      help="messages to show (default 10)")
    peek.add_argument("--json", action="store_true", help="one JSON document")
    redrive = actions.add_parser("redrive", help="move dead letters back to their queue")
    add_config_arg(redrive)
    redrive.add_argument("queue", metavar="QUEUE", help="a configured queue; its DLQ is emptied")
    redrive.add_argument("--to", metavar="QUEUE_OR_URL",
                         help="target: a configured queue, a queue name or a URL")
    redrive.add_argument("--max", type=positive_int, metavar="N",
                         help="move at most N messages (always the manual move)")
    redrive.add_argument("--journal", metavar="FILE",
                         help="journal of the manual move (default: "
                              "<state_dir>/redrive/<dlq name>.journal)")


def camel(flag: str) -> str:
    first, *rest = flag.split("-")
    return first + "".join(part.capitalize() for part in rest)


def positive_int(text: str) -> int:
    value = int(text)  # argparse reports a ValueError as "invalid positive_int value"
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def watch_interval(text: str) -> float:
    """``status --watch``: seconds, at least MIN_WATCH_S (0 would refresh in a tight loop)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= MIN_WATCH_S:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be at least {MIN_WATCH_S:g} s, got {text}")
    return value


def job_status(text: str) -> str:
    """``jobs list --status``: argparse's ``choices`` error omits them when a metavar is set."""
    if text not in JOB_STATUSES:
        raise argparse.ArgumentTypeError(
            f"invalid status {text!r} (choose from {', '.join(JOB_STATUSES)})")
    return text


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in STANDALONE_COMMANDS:
        return resolve(STANDALONE_COMMANDS[args.command])(args)
    try:
        settings = config.load(args.config, overrides=overrides(args),
                               require_queues=args.command in ("run", "status", "dlq"))
    except ConfigError as exc:
        print(f"vip-worker: configuration error: {exc}", file=sys.stderr)
        return exitcodes.CONFIG
    command = resolve(COMMANDS[args.command])
    if args.command == "run":
        return command(args, settings)  # it installs the JSON log
    with logconfig.console():  # a warning (producer.inline) shows its fields on stderr
        return command(args, settings)


def resolve(target: str):
    """``"package.module:function"`` -> the function, importing its module now."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def overrides(args: argparse.Namespace) -> dict:
    processes = getattr(args, "processes", None)
    return {"processes": processes} if processes is not None else {}


def cmd_config(args, settings) -> int:
    """The settings, then every plugin's declared settings (so the plugins are loaded:
    their declarations say which values are secret). A plugin that does not load is
    reported, its settings shown masked, and the exit code is 78."""
    from vip_worker.plugins import load_plugins
    from vip_worker.plugins import settings as plugin_settings

    code, declared = exitcodes.OK, None
    try:
        declared = load_plugins(settings).settings
    except (PluginError, ConfigError) as exc:
        print(f"vip-worker: {exc} (plugin settings shown with their values masked)",
              file=sys.stderr)
        code = exitcodes.CONFIG
    rows = config.describe(settings) + plugin_settings.describe(settings, declared)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return code
    width = max(len(r["key"]) for r in rows)
    for row in rows:
        print(f"{row['key']:<{width}}  {json.dumps(row['value'], default=str)}  "
              f"[{row['source']}]")
    return code


def cmd_plugins(args, settings) -> int:
    from vip_worker.plugins import load_plugins

    try:
        loaded = load_plugins(settings)
    except (PluginError, ConfigError) as exc:
        print(f"vip-worker: {exc}", file=sys.stderr)
        return exitcodes.CONFIG
    if args.json:
        print(json.dumps([vars(i) for i in loaded.infos], indent=2))
        return exitcodes.OK
    if not loaded.infos:
        print("no plugins loaded (plugin_dirs: " + ", ".join(settings.plugin_dirs) + ")")
    for info in loaded.infos:
        print(f"{info.name}: types {', '.join(info.types) or '(none)'}  [{info.origin}]")
    return exitcodes.OK


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
        fresh = config.load(args.config, overrides=overrides(args))
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

        return poller.main(poller_settings, index, shm)

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


if __name__ == "__main__":
    sys.exit(main())
