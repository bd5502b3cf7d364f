"""``vip-worker enqueue`` and ``vip-worker jobs`` (show, list, cancel): the producer and the
job store from a shell."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

from vip_worker import exitcodes
from vip_worker.cli import PAYLOAD_FLAGS, camel
from vip_worker.errors import ConfigError, HookFailed, PluginError
from vip_worker.store import StoreUnavailable


def payloads_from(args) -> list[dict[str, Any]]:
    """The payloads the flags describe; ``ValueError`` naming the flag (and file) if bad."""
    if args.file:
        return payloads_from_file(args.file)
    payload: dict[str, Any] = {}
    if args.payload:
        try:
            payload = json.loads(args.payload)
        except ValueError as exc:
            raise ValueError(f"--payload: not JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise ValueError("--payload must be a JSON object")
    for flag in PAYLOAD_FLAGS:
        value = getattr(args, flag.replace("-", "_"))
        if value is not None:
            payload[camel(flag)] = value
    return [payload]


def payloads_from_file(path: str) -> list[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.readlines()
    except OSError as exc:
        raise ValueError(f"--file {path}: cannot read it: {exc.strerror or exc}") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"--file {path}, line {number}: not JSON: {exc}") from None
        if not isinstance(row, dict):
            raise ValueError(f"--file {path}, line {number}: not a JSON object")
        rows.append(row)
    return rows


def cmd_enqueue(args, settings) -> int:
    from vip_worker.pipeline.producer import (
        NoHandler,
        Producer,
        QueueNotFound,
        SendFailed,
        new_job_id,
    )
    from vip_worker.plugins import describe_exception

    try:
        payloads = payloads_from(args)
    except ValueError as exc:
        print(f"vip-worker: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    if args.job_id and len(payloads) > 1:
        print("vip-worker: --job-id names one job; not with --file", file=sys.stderr)
        return exitcodes.USAGE
    producer = Producer(settings)
    inline = not producer.is_sqs_configured(args.type)
    job_id = ""
    try:
        for payload in payloads:
            job_id = args.job_id or new_job_id()
            producer.enqueue(args.type, payload, user_id=args.user_id, job_id=job_id)
            print(job_id, flush=True)
    except StoreUnavailable as exc:
        print(f"vip-worker: job store unavailable: {exc}", file=sys.stderr)
        return exitcodes.UNAVAILABLE
    except SendFailed as exc:
        print(f"vip-worker: job {exc.job_id}: {exc} (the job is {exc.job_status})",
              file=sys.stderr)
        # A queue that does not exist is a setting to fix; anything else may pass.
        return exitcodes.CONFIG if isinstance(exc, QueueNotFound) else exitcodes.UNAVAILABLE
    except (ConfigError, PluginError) as exc:  # the plugins, loaded for an inline run
        print(f"vip-worker: {exc}", file=sys.stderr)
        return exitcodes.CONFIG
    except HookFailed as exc:  # a plugin's start hook, before the job was created
        print(f"vip-worker: {exc}", file=sys.stderr)
        return exitcodes.FAILED
    except NoHandler as exc:
        print(f"vip-worker: {exc} (and no queue named {args.type!r} is configured)",
              file=sys.stderr)
        return exitcodes.USAGE
    except Exception as exc:  # noqa: BLE001 - reported in one line, classified below
        if not inline:
            from vip_worker.sqs.api import TRANSPORT_ERRORS, error_code

            if not isinstance(exc, TRANSPORT_ERRORS):
                raise
            print(f"vip-worker: SQS unavailable: {error_code(exc)}: {exc}", file=sys.stderr)
            return exitcodes.UNAVAILABLE
        print(f"vip-worker: job {job_id} failed in the inline run of its handler: "
              f"{describe_exception(exc)}", file=sys.stderr)
        return exitcodes.FAILED
    finally:
        producer.close()
    return exitcodes.OK


def cmd_jobs(args, settings) -> int:
    from vip_worker.store.factory import open_store

    try:
        store = open_store(settings)
    except StoreUnavailable as exc:
        print(f"vip-worker: job store unavailable: {exc}", file=sys.stderr)
        return exitcodes.UNAVAILABLE
    except ConfigError as exc:
        print(f"vip-worker: configuration error: {exc}", file=sys.stderr)
        return exitcodes.CONFIG
    try:
        if args.jobs_command == "show":
            job = store.get_job(args.job_id)
            if job is None:
                print(f"vip-worker: no job {args.job_id!r}", file=sys.stderr)
                return exitcodes.NOT_FOUND
            print(json.dumps(job, indent=2, default=str) if args.json else render(job))
            return exitcodes.OK
        if args.jobs_command == "cancel":
            return cancel(store, args.job_id)
        jobs = store.list_jobs(status=args.status, limit=args.limit)
        if args.json:
            print(json.dumps(jobs, indent=2, default=str))
        for job in [] if args.json else jobs:
            print(f"{job['_id']}  {job.get('type', ''):<8} {job['status']:<10} "
                  f"{job.get('progress', 0):>3}%  {when(job.get('updatedAt'))}  "
                  f"{job.get('error') or job.get('message') or ''}")
        return exitcodes.OK
    except StoreUnavailable as exc:
        print(f"vip-worker: job store unavailable: {exc}", file=sys.stderr)
        return exitcodes.UNAVAILABLE
    finally:
        store.close()


def cancel(store, job_id: str) -> int:
    """``jobs cancel ID``: the store's ``request_cancel`` (any user's job: an operator's)."""
    from vip_worker.store import CancelOutcome

    done = store.request_cancel(job_id, datetime.now(UTC))
    if done.outcome is CancelOutcome.NOT_FOUND:
        print(f"vip-worker: no job {job_id!r}", file=sys.stderr)
        return exitcodes.NOT_FOUND
    if done.outcome is CancelOutcome.REFUSED:
        print(f"vip-worker: job {job_id!r} is {done.job['status']}: nothing to cancel",
              file=sys.stderr)
        return exitcodes.FAILED
    if done.outcome is CancelOutcome.CANCELLED:
        print(f"{job_id} cancelled")
    else:
        print(f"{job_id} cancel requested: its poller stops it")
    return exitcodes.OK


def render(job: dict[str, Any]) -> str:
    lines = [f"job       {job['_id']}", f"type      {job.get('type')}",
             f"user      {job.get('userId')}", f"status    {job['status']}",
             f"progress  {job.get('progress', 0)}%"
             + (" (estimated)" if job.get("progressEstimated") else ""),
             f"message   {job.get('message') or '-'}",
             f"attempts  {job.get('attempts', 0)}"]
    usage = job.get("usage")
    if isinstance(usage, dict):
        cost = usage.get("cost")
        lines.append(f"usage     {usage.get('tokensIn', 0)} tokens in, "
                     f"{usage.get('tokensOut', 0)} out, {usage.get('images', 0)} images, "
                     f"model {usage.get('model') or '-'}, cost "
                     f"{'-' if cost is None else f'{cost:.6f}'}")
    if job.get("error"):
        lines.append(f"error     {job['error']}")
    for key in ("createdAt", "startedAt", "updatedAt", "completedAt"):
        lines.append(f"{key:<9} {when(job.get(key))}")
    if job.get("cancelRequestedAt"):
        lines.append(f"cancel    asked {when(job['cancelRequestedAt'])}, "
                     f"done {when(job.get('cancelledAt'))}")
    return "\n".join(lines)


def when(value) -> str:
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return str(value) if value else "-"
