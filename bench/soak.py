"""The long chaos run: the CI chaos scenario (tests/chaos), with more jobs and more time.

    .venv/bin/python bench/soak.py --jobs 500 --minutes 5

Starts its own moto server on 127.0.0.1, the stub generation service with a fault
drawn per call, the SQS fault proxy, and the real daemon (2 pollers, SQLite store),
then feeds the jobs over ``--minutes`` (never more than ``--max-queued`` waiting:
moto slows with depth) while pollers are SIGKILLed, the daemon is TERMed and
restarted, and the job store is locked. Drains, accounts for every job with the
ledger, and stops everything it started, also on Ctrl-C.

Prints the figures, then a JSON summary as its last line. Exit code 0 when the
ledger balances (nothing lost, stuck or duplicated), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.chaos.scenario import ChaosConfig, run_scenario  # noqa: E402
from vip_worker.sqs.local import LOCAL_AWS_ENV  # noqa: E402


def machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500, help="jobs to create (default 500)")
    parser.add_argument("--minutes", type=float, default=5.0,
                        help="how long jobs are fed while the chaos runs (default 5)")
    parser.add_argument("--max-queued", type=int, default=200,
                        help="the feeder waits while more messages than this are queued")
    parser.add_argument("--processes", type=int, default=2, help="poller processes")
    parser.add_argument("--concurrency", type=int, default=4, help="handlers per poller")
    parser.add_argument("--seed", type=int, default=None, help="seed of the random choices")
    parser.add_argument("--drain-minutes", type=float, default=10.0,
                        help="longest wait for the queues to drain after the chaos")
    parser.add_argument("--workdir", help="keep logs and the store here (default: a temp "
                                          "directory, removed at the end)")
    return parser.parse_args(argv)


def config_for(args: argparse.Namespace) -> ChaosConfig:
    feed_s = args.minutes * 60
    return ChaosConfig(
        jobs=args.jobs, feed_s=feed_s, calm_after_s=10.0, max_queued=args.max_queued,
        processes=args.processes, concurrency=args.concurrency,
        restarts=max(1, round(args.minutes / 2)),  # a restart every ~2 minutes
        store_outages=max(1, round(args.minutes / 2)),
        sqs_outages=max(1, round(args.minutes / 2)),
        drain_timeout_s=args.drain_minutes * 60, seed=args.seed)


def print_figures(summary: dict, chaos_log: list[str]) -> None:
    print("chaos events:")
    for line in chaos_log:
        print("  " + line)
    print(f"jobs {summary['jobs']}: completed {summary['completed']}, failed "
          f"{summary['failed']} (attempts or poller deaths spent: {summary['gave_up']}); "
          f"lost {summary['lost']}, stuck {summary['stuck']}, duplicates "
          f"{summary['duplicates']}, failed without DLQ {summary['failed_without_dlq']}, "
          f"dead-lettered but not failed {summary['dead_lettered_not_failed']}")
    print(f"generation calls per job: {summary['generation_calls_per_job']}")
    generations = summary["generations_per_completed_job"]
    print(f"generations per completed job: {json.dumps(generations)}; generation calls "
          f"saved by checkpoints: {generations.get('saved_by_checkpoints', 0)}")
    print(f"faults injected: {json.dumps(summary['faults']['sqs'])} (SQS), "
          f"{json.dumps(summary['faults']['generation'])} (generation), "
          f"{json.dumps(summary['faults']['chaos'])}")
    print(f"daemon events: {json.dumps(summary['events'])}")
    print(f"recovery after a poller's SIGKILL (jobs it was running): "
          f"{json.dumps(summary['recovery_after_kill'])}")
    print(f"rescues (job.rescued): {summary['events'].get('job.rescued', 0)}, re-sends "
          f"(message.resent): {summary['events'].get('message.resent', 0)}, DLQ copies "
          f"moved by SQS's redrive (no reason): {summary['redriven_by_sqs']}")
    print(f"job-document writes per job: {json.dumps(summary['store_writes_per_job'])}")
    print(f"duration {summary['duration_s']} s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.update(LOCAL_AWS_ENV)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SQS"):
        os.environ.pop(name, None)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    from moto.server import ThreadedMotoServer

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        report, run = run_scenario(config_for(args), workdir, f"http://{host}:{port}")
    finally:
        server.stop()
    if not args.workdir and report.ok:
        shutil.rmtree(workdir, ignore_errors=True)
    elif not report.ok:
        print(f"logs and the job store kept in {workdir}", file=sys.stderr)
    summary = {**report.summary(), "machine": machine(),
               "settings": {"processes": args.processes, "concurrency": args.concurrency,
                            "minutes": args.minutes, "max_queued": args.max_queued}}
    print_figures(summary, run.chaos_log)
    if not report.ok:
        print(report.explain(), file=sys.stderr)
    print(json.dumps(summary, default=str))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
