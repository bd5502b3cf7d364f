"""argv -> settings -> the command; every command returns an exit code.

The grammar of every command and flag is here; each command's code is imported only when
it runs (``COMMANDS``): ``run`` is ``vip_worker.boot`` (logging, the plugin check, the
arbiter).

Commands (each documented in docs/cli.md; a test keeps the two in step):

- ``vip-worker run [--config FILE] [--processes N]``: start the master.
- ``vip-worker config [--config FILE] [--json]``: the effective settings, their
  sources, secrets masked.
- ``vip-worker plugins [--config FILE] [--json]``: each plugin, where it was
  loaded from, and its message types.
- ``vip-worker enqueue TYPE [--topic ... | --payload JSON | --file JSONL]``: create
  jobs and queue them (inline without SQS); prints the job ids.
- ``vip-worker jobs show ID [--json]`` / ``jobs list [--status S] [--json]`` /
  ``jobs cancel ID``.
- ``vip-worker status`` / ``vip-worker dlq peek|redrive``: see ``vip_worker.ops.commands``.
- ``vip-worker web [--host H] [--port N]`` / ``web-key create|list|revoke``: the job API
  (``vip_worker.web``) and its API keys.
- ``vip-worker new-plugin NAME [--dir DIR]``: scaffold a plugin that works as generated.
- ``vip-worker dev [--exit-when-done] ...``: the embedded stack on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys

from vip_worker import __version__, config, exitcodes, logconfig
from vip_worker.errors import ConfigError, PluginError

log = logging.getLogger("vip_worker.cli")
# Each command's code, imported only when that command runs: ``--help`` stays fast and
# the master (``run``) never imports the ops commands, the dev stack or boto3.
COMMANDS = {
    "run": "vip_worker.boot:cmd_run",
    "config": "vip_worker.cli:cmd_config",
    "plugins": "vip_worker.cli:cmd_plugins",
    "enqueue": "vip_worker.ops.jobs:cmd_enqueue",
    "jobs": "vip_worker.ops.jobs:cmd_jobs",
    "status": "vip_worker.ops.commands:cmd_status",
    "dlq": "vip_worker.ops.commands:cmd_dlq",
    "web": "vip_worker.web.server:cmd_web",
    "web-key": "vip_worker.web.keys:cmd_web_key",
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
JOB_STATUSES = ("queued", "processing", "completed", "failed", "cancelled")
DEFAULT_WATCH_S = 2.0
MIN_WATCH_S = 1.0


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
    cancel_job = jobs_commands.add_parser("cancel", help="cancel a job (queued: at once; "
                                          "running: its poller stops it)")
    add_config_arg(cancel_job)
    cancel_job.add_argument("job_id")
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
    # The demo shows a 429 and the fleet-wide pause by default (one call in 5, 3 s).
    dev.add_argument("--throttle-every", type=int, default=5, metavar="N",
                     help="the stub answers every Nth generation call 429 (the fleet "
                          "pauses; 0: never)")
    dev.add_argument("--retry-after", type=float, default=3.0, metavar="SECONDS",
                     help="the Retry-After of those 429 answers")
    dev.add_argument("--quota-rpm", type=int, default=0, metavar="N",
                     help="a fleet-wide limit of generation calls per minute (quotas)")
    dev.add_argument("--exit-when-done", action="store_true",
                     help="stop and exit 0 once the demo batch is done")
    dev.add_argument("--timeout", type=float, default=120.0,
                     help="with --exit-when-done: give up (exit 1) after this many seconds")
    dev.add_argument("--state-dir", metavar="DIR",
                     help="keep the job store here (default: a temporary directory, removed "
                          "on exit)")
    add_ops_commands(commands)
    add_web_commands(commands)

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
    redrive.add_argument("--move-task", action="store_true",
                         help="use SQS's StartMessageMoveTask instead of the manual move "
                              "(unbounded: it may move messages dead-lettered again while "
                              "it runs)")
    redrive.add_argument("--journal", metavar="FILE",
                         help="journal of the manual move (default: "
                              "<state_dir>/redrive/<dlq name>.journal)")


def add_web_commands(commands) -> None:
    """``web`` and ``web-key`` (their code: ``vip_worker.web``)."""
    web = commands.add_parser("web", help="serve the job API (FastAPI) the app calls")
    add_config_arg(web)
    web.add_argument("--host", help="address to bind (overrides web_host)")
    web.add_argument("--port", type=int, help="port to bind (overrides web_port)")
    web_key = commands.add_parser("web-key", help="make, list or revoke the job API's keys")
    actions = web_key.add_subparsers(dest="web_key_command", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="make a key and show it once")
    add_config_arg(create)
    create.add_argument("--user", dest="name", required=True,
                        help="who the key is for (a label, e.g. app-backend)")
    create.add_argument("--role", choices=("backend", "admin", "viewer"), default="backend",
                        help="backend: acts for X-User-Id; admin: sees every job and signs "
                             "in to the dashboard; viewer: the dashboard, read-only")
    listing = actions.add_parser("list", help="the keys: id, role, label, creation")
    add_config_arg(listing)
    revoke = actions.add_parser("revoke", help="remove a key (takes effect at once)")
    add_config_arg(revoke)
    revoke.add_argument("key_id", metavar="ID")


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
    if args.command in ("run", "web"):
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


if __name__ == "__main__":
    sys.exit(main())
