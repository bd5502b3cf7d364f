"""``vip-worker status`` and ``vip-worker dlq peek|redrive``: the queues from a shell.

Neither needs the daemon: ``status`` asks SQS for the counts and reads the local
daemon's ``<runtime_dir>/status.json`` for its pollers and rate. The SQS work is in
``vip_worker.ops.dlq`` and ``vip_worker.sqs.queues``, and the redrive in
``vip_worker.ops.redrive_command``, through the blocking
``vip_worker.sqs.boto.SqsClient``. The flags are declared in ``vip_worker.cli``, which
imports this module only when one of these commands runs. Manual: docs/status-and-dlq.md.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

from vip_worker import exitcodes, statusfile
from vip_worker.ops.dlq import describe_error
from vip_worker.outcomes import ERROR_TEXT
from vip_worker.store.factory import runtime_dir

STALE_AFTER_S = 10.0  # the master writes status.json every 2 s
CLEAR_SCREEN = "\x1b[H\x1b[2J"
NO_DLQ_WARNING = ("queue {queue} has no DLQ (no dlq_url, no RedrivePolicy): a message that "
                  "keeps failing comes back again and again, forever; give the queue a "
                  "RedrivePolicy (docs/configuration.md)")


def fail(text: str) -> None:
    print(f"vip-worker: {text}", file=sys.stderr)


def client_for(settings):
    from vip_worker.sqs.boto import connect

    return connect(settings.region, settings.sqs_endpoint_url, max_pool=4)


# -- status ------------------------------------------------------------------------------


def cmd_status(args, settings) -> int:
    client = client_for(settings)
    run_dir = runtime_dir(settings)

    def refresh(watching: bool) -> int:
        doc = collect(client, settings, run_dir, time.time())
        if args.json:
            print(json.dumps(doc, separators=(",", ":")) if watching
                  else json.dumps(doc, indent=2), flush=True)
        else:
            text = render(doc)
            clear = CLEAR_SCREEN if watching and sys.stdout.isatty() else ""
            print(clear + text, flush=True)
        if not watching:
            for error in doc["errors"]:
                fail(error)
            for warning in doc["warnings"]:
                print(f"vip-worker: warning: {warning}", file=sys.stderr)
        return exitcodes.UNAVAILABLE if doc["errors"] else exitcodes.OK

    if args.watch is None:
        return refresh(False)
    code = exitcodes.OK
    try:
        while True:
            code = refresh(True)
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return code


def collect(client, settings, run_dir: str, now: float) -> dict[str, Any]:
    """The document ``status --json`` prints (keys in docs/status-and-dlq.md)."""
    from vip_worker.sqs import queues as sqs_queues
    from vip_worker.sqs.api import TRANSPORT_ERRORS

    queues, errors, warnings = [], [], []
    for queue in settings.queues:
        row: dict[str, Any] = {"name": queue.name, "url": queue.url, "error": None,
                               "visible": None, "in_flight": None, "delayed": None,
                               "depth": None, "dlq": None}
        try:
            row.update(sqs_queues.counts(client, queue.url))
            dlq_url = sqs_queues.resolve_dlq_url(client, queue.url, queue.dlq_url)
            if dlq_url:
                row["dlq"] = {"name": sqs_queues.queue_name(dlq_url), "url": dlq_url,
                              **sqs_queues.counts(client, dlq_url)}
            else:
                warnings.append(NO_DLQ_WARNING.format(queue=queue.name))
        except (*TRANSPORT_ERRORS, ValueError) as exc:
            row["error"] = describe_error(exc)
            errors.append(f"queue {queue.name} ({queue.url}): {row['error']}")
        queues.append(row)
    daemon = daemon_state(run_dir, now)
    unread = [q["name"] for q in queues if q["error"]]
    # A queue SQS did not answer for has no count: the sum would understate the depth.
    depth = None if unread else sum(q["depth"] or 0 for q in queues)
    rate = daemon.get("rate_per_min") if daemon["running"] else None
    if depth is None:
        eta = None
    elif depth == 0:
        eta = 0.0
    else:
        eta = round(depth / rate, 1) if rate else None
    return {"checked_at": round(now, 3), "queues": queues, "depth": depth,
            "rate_per_min": rate, "rate_scope": "this host", "eta_min": eta,
            "daemon": daemon, "errors": errors, "warnings": warnings}


def daemon_state(run_dir: str, now: float) -> dict[str, Any]:
    """The local daemon, from status.json: running only if fresh and its pid is alive."""
    path = statusfile.path(run_dir)
    state: dict[str, Any] = {"running": False, "status_file": path, "age_s": None}
    try:
        snap = statusfile.read(run_dir)
        written_at = snap["written_at"]
    except FileNotFoundError:
        state["note"] = f"not running on this host (no {path})"
        return state
    except (OSError, ValueError) as exc:
        state["note"] = f"unknown: cannot read {path}: {exc}"
        return state
    state["age_s"] = round(now - written_at, 1)
    state["pid"] = snap.get("pid")
    if now - written_at > STALE_AFTER_S:
        state["note"] = (f"not running on this host ({path} was last written "
                         f"{duration(now - written_at)} ago)")
        return state
    if not pid_alive(snap.get("pid")):
        state["note"] = f"not running on this host (pid {snap.get('pid')} has exited)"
        return state
    state.update({key: snap.get(key) for key in statusfile.KEYS})
    state.update(running=True, note=None)
    return state


def pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return True  # cannot tell: trust the fresh file
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, and owned by another user (the service account)
    return True


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{int(seconds)} s"
    minutes = int(seconds // 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def eta_text(eta_min: float | None) -> str:
    if eta_min is None:
        return "N/A"
    if 0 < eta_min < 1:
        return "<1 min"
    return duration(math.ceil(eta_min) * 60) if eta_min else "0 min"


def render(doc: dict[str, Any]) -> str:
    """The human output of ``status``."""
    lines = [f"{'QUEUE':<16} {'VISIBLE':>8} {'IN FLIGHT':>9} {'DELAYED':>8}  DLQ"]
    for q in doc["queues"]:
        if q["error"]:
            lines.append(f"{q['name']:<16} error: {q['error']}")
            continue
        dlq = q["dlq"]
        dlq_text = (f"{dlq['name']}: {dlq['depth']}" + (" (!)" if dlq["depth"] else "")
                    if dlq else "(none) (!)")
        lines.append(f"{q['name']:<16} {q['visible']:>8} {q['in_flight']:>9} "
                     f"{q['delayed']:>8}  {dlq_text}")
    daemon = doc["daemon"]
    rate = doc["rate_per_min"]
    if rate is not None:
        rate_text = f"{rate:g}/min (this host)"
    elif daemon["running"]:
        rate_text = "N/A (measuring)"
    else:
        rate_text = "N/A (no daemon on this host)"
    if doc["depth"] is None:
        unread = [q["name"] for q in doc["queues"] if q["error"]]
        depth_text = f"unknown (cannot read {', '.join(unread)}: see above)"
        eta = "unknown"
    else:
        depth_text, eta = str(doc["depth"]), eta_text(doc["eta_min"])
    lines.append(f"Queue Depth: {depth_text}, Rate: {rate_text}, ETA: {eta}")
    lines.append("")
    if not daemon["running"]:
        lines.append(f"Daemon: {daemon['note']}")
        return "\n".join(lines)
    pollers = daemon["pollers"] or []
    ready = sum(1 for p in pollers if p.get("ready"))
    state = f"stopping ({daemon['stopping']})" if daemon.get("stopping") else "running"
    lines.append(f"Daemon: {state}, pid {daemon['pid']}, up {duration(daemon['uptime_s'] or 0)}"
                 f", {ready}/{daemon['target']} pollers ready "
                 f"(status.json {daemon['age_s']:g} s old)")
    lines.append(f"  {'POLLER':<7} {'PID':>8}  {'STATE':<9} {'IN FLIGHT':>9} {'HANDLED':>8}  UP")
    for p in pollers:
        kind = "stopping" if p.get("stopping") else "ready" if p.get("ready") else "starting"
        lines.append(f"  {p.get('index', '?')!s:<7} {p.get('pid', '?')!s:>8}  {kind:<9} "
                     f"{int(p.get('in_flight', 0)):>9} {int(p.get('handled', 0)):>8}  "
                     f"{duration(p.get('uptime_s') or 0)}")
    totals = daemon.get("totals") or {}
    lines.append("  Totals: " + ", ".join(
        f"{name.replace('_', '-')} {int(totals.get(name, 0))}"
        for name in ("handled", "succeeded", "retried", "dead_lettered", "released",
                     "deferred")))
    return "\n".join(lines)


# -- dlq ----------------------------------------------------------------------------------


def cmd_dlq(args, settings) -> int:
    from vip_worker.sqs.api import TRANSPORT_ERRORS
    from vip_worker.sqs.queues import queue_name, resolve_dlq_url

    try:
        queue = settings.queue(args.queue)
    except KeyError:
        names = ", ".join(q.name for q in settings.queues)
        fail(f"no queue named {args.queue!r} in the configuration (configured: {names})")
        return exitcodes.USAGE
    client = client_for(settings)
    try:
        dlq_url = resolve_dlq_url(client, queue.url, queue.dlq_url)
    except (*TRANSPORT_ERRORS, ValueError) as exc:
        fail(f"queue {queue.name} ({queue.url}): {describe_error(exc)}")
        return exitcodes.UNAVAILABLE
    if not dlq_url:
        fail(f"queue {queue.name} has no dead-letter queue: set queues.{queue.name}.dlq_url "
             "or give the queue a RedrivePolicy")
        return exitcodes.CONFIG
    try:
        if args.dlq_command == "peek":
            return cmd_peek(args, client, dlq_url)
        from vip_worker.ops.redrive_command import cmd_redrive

        return cmd_redrive(args, settings, client, queue, dlq_url)
    except TRANSPORT_ERRORS as exc:
        fail(f"DLQ {queue_name(dlq_url)} of queue {queue.name}: {describe_error(exc)}")
        return exitcodes.UNAVAILABLE
    except KeyboardInterrupt:
        return exitcodes.INTERRUPTED  # a peek released its messages on the way out


def cmd_peek(args, client, dlq_url: str) -> int:
    from vip_worker.ops import dlq
    from vip_worker.sqs.queues import queue_name

    messages, problems = dlq.peek(client, dlq_url, args.n)
    for problem in problems:
        fail(f"could not release {problem}; it is visible again after "
             f"{dlq.PEEK_VISIBILITY_S} s")
    if args.json:
        print(json.dumps({"dlq_url": dlq_url, "messages": messages}, indent=2))
        return exitcodes.OK
    print(f"DLQ {queue_name(dlq_url)}: {len(messages)} message(s) shown, left in place")
    for m in messages:
        what = describe_body(m)
        print(f"{m['message_id']}  {what}  received {m['receive_count']}x  "
              f"sent {m['sent_at']}" + (f"  group {m['group_id']}" if m["group_id"] else ""))
        reason = m["reason"]
        short = [f"{k}={v}" for k, v in reason.items() if k != ERROR_TEXT]
        if short:
            print("    " + "  ".join(short))
        if ERROR_TEXT in reason:
            print(f"    {ERROR_TEXT}: {reason[ERROR_TEXT]}")
    return exitcodes.OK


def describe_body(message: dict) -> str:
    """``job ID type T`` for a body in the app's message format; what is missing, else."""
    if not message["body_is_json"]:
        return "body not JSON"
    job, kind = message["job_id"], message["type"]
    if job is not None and kind is not None:
        return f"job {job} type {kind}"
    return "  ".join([f"job {job}" if job is not None else "no jobId",
                      f"type {kind}" if kind is not None else "no type"])
