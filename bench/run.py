"""Run every benchmark scenario; print a table, then a JSON summary as the very last line.

    python -m bench.run [--quick | --smoke] [--endpoint auto|moto|localstack] [--skip-peers]

``--smoke`` (seconds, tiny counts, moto, no peers) is what tests/bench runs; ``--quick``
takes about two minutes; the default is the full run. Everything runs on 127.0.0.1 with
fake credentials; the harness starts its own SQS endpoint and stops every process it
started. What each figure means: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from bench import api, drain, endpoint, idle, inflight, latency, peer_workers, sqsutil


@dataclass(frozen=True)
class Profile:
    name: str
    drain_count: int
    warmup: int
    backlog: int
    rounds: int
    processes: tuple[int, ...]
    pickups: int
    pickup_interval_s: float
    jobs: int
    hold_window_s: float
    idle_window_s: float
    peer_count: int
    peers: tuple[str, ...]


ALL_PEERS = ("celery", "sqs-consumer-batch", "sqs-consumer", "sqs-workers", "pyqs")
PROFILES = {
    # smoke: the hold window (4.5 s) spans a whole visibility timeout (4 s), so at least one
    # round of heartbeats (one every 2 s) always falls in it.
    "smoke": Profile("smoke", 100, 10, 100, 1, (1,), 5, 0.05, 20, 4.5, 6.0, 0, ()),
    # PyQS drains ~90 msg/s: only the full run waits for it (sqs-workers stands in).
    "quick": Profile("quick", 5000, 500, 2000, 1, (1, 2), 30, 0.15, 1000, 8.0, 60.0, 2000,
                     ALL_PEERS[:-1]),
    "full": Profile("full", 20000, 2000, 2000, 3, (1, 2), 100, 0.2, 1000, 60.0, 120.0, 5000,
                    ALL_PEERS),
}
# moto rescans a queue on every call: keep its queues shallow and its counts small.
MOTO_SCALE = {"drain_count": 1500, "warmup": 100, "backlog": 200, "jobs": 300,
              "peer_count": 1000}

SCENARIOS = ("drains", "scale-out", "pickup", "held", "peers", "idle", "api")

TARGETS = {
    "cpu_per_msg_ratio_vs_bare": ("<=", 1.1),
    "cpu_per_msg_ratio_vs_celery": (">=", 7.0),
    "cpu_per_msg_ratio_vs_sqs_consumer": (">=", 1.0),
    "throughput_ratio_vs_bare": (">=", 0.95),
    "pickup_p50_ms": ("<", 20.0),
    "heartbeat_calls_per_10_inflight": ("<=", 1.0),
    "rss_mb_1000_jobs": ("<", 1024.0),
    "idle_cpu_pct": ("<", 1.0),
    "empty_receives_per_queue_per_poller_per_min": ("<=", 3.0),
}


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="about two minutes")
    size.add_argument("--smoke", action="store_true", help="seconds: tiny counts, no peers")
    parser.add_argument("--endpoint", choices=("auto", "moto", "localstack"), default="auto",
                        help="auto: LocalStack when Python >= 3.13 is at hand, else moto "
                             "(--smoke: moto)")
    parser.add_argument("--skip-peers", action="store_true", help="skip scenario 8")
    parser.add_argument("--peers", default="", help="comma-separated subset of: "
                        + ", ".join(ALL_PEERS))
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    parser.add_argument("--track-jobs", choices=("on", "off", "both"), default="on",
                        help="the drained queue's track_jobs (the job ledger): on (the "
                        "daemon's default), off, or both (interleaved: bare, on, off per "
                        "round; the off rows are named '... track_jobs off')")
    parser.add_argument("--rounds", type=int, default=0,
                        help="rounds of the drains (default: the profile's, 1 quick, 3 full)")
    parser.add_argument("--only", default="", help="comma-separated subset of scenarios: "
                        + ", ".join(SCENARIOS) + " (default: all)")
    return parser.parse_args(argv)


def choose_profile(args) -> tuple[Profile, str]:
    profile = PROFILES["smoke" if args.smoke else "quick" if args.quick else "full"]
    kind = args.endpoint
    if kind == "auto":
        kind = "moto" if args.smoke or not endpoint.localstack_available() else "localstack"
    if kind == "moto" and profile.name != "smoke":
        profile = Profile(**{**profile.__dict__, **MOTO_SCALE})
    peers = () if args.skip_peers else profile.peers
    if args.peers:
        peers = tuple(p.strip() for p in args.peers.split(",") if p.strip())
    rounds = args.rounds or profile.rounds
    return Profile(**{**profile.__dict__, "peers": peers, "rounds": rounds}), kind


class Bench:
    def __init__(self, profile: Profile, ep, workdir: Path, track_jobs: str = "on") -> None:
        self.profile = profile
        self.track_jobs = track_jobs
        self.ep = ep
        self.sqs = sqsutil.client(ep.url)
        self.workdir = workdir
        self.mode = "prefill" if ep.kind == "localstack" else "paced"
        self.drains: dict[str, list[drain.Result]] = {}
        self.results: dict = {"errors": {}}
        self.runs = 0

    def dir(self, name: str) -> Path:
        self.runs += 1
        return self.workdir / f"{self.runs:02d}-{name}"

    def measure(self, consumers, count=None, name="", settings="") -> drain.Result:
        p = self.profile
        return drain.measure(self.ep, self.sqs, consumers, count or p.drain_count, p.warmup,
                             p.backlog, self.dir(name or consumers[0].name.replace(" ", "_")),
                             name=name, settings=settings, mode=self.mode)

    def record(self, result: drain.Result) -> drain.Result:
        self.drains.setdefault(result.name, []).append(result)
        print(f"  {result.name:34} {result.msgs_per_s:8.0f} msg/s  "
              f"{result.cpu_ms_per_msg:6.3f} ms CPU/msg  endpoint "
              f"{result.endpoint_cpu_ms_per_msg:6.3f} ms/msg", file=sys.stderr, flush=True)
        return result

    def guarded(self, key: str, fn):
        started = time.monotonic()
        print(f"bench: {key} ...", file=sys.stderr, flush=True)
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - one failed scenario must not hide the rest
            self.results["errors"][key] = f"{type(exc).__name__}: {exc}"[:1500]
            traceback.print_exc(file=sys.stderr)
            return None
        finally:
            print(f"bench: {key} took {time.monotonic() - started:.1f} s", file=sys.stderr,
                  flush=True)

    # -- scenarios 1, 2: drains of daemon and bare loop, alternating ------------------------

    def drains_vs_bare(self) -> None:
        url = self.ep.url
        ledger = {"on": (True,), "off": (False,), "both": (True, False)}[self.track_jobs]
        for _ in range(self.profile.rounds):
            for processes in self.profile.processes:
                self.record(self.measure([drain.BareConsumer(url, processes)]))
                for track in ledger:
                    # The default (on) keeps the plain name: the summary's ratios use it.
                    label = f"vip-worker p={processes}" + (
                        " track_jobs off" if not track and self.track_jobs == "both" else "")
                    daemon = drain.DaemonConsumer(url, processes, label=label,
                                                  queue_settings={"track_jobs": track})
                    self.record(self.measure([daemon])).extra.update(daemon.store_counts)

    # -- scenario 7: two daemons on one queue ----------------------------------------------

    def scale_out(self) -> None:
        url = self.ep.url
        daemons = [drain.DaemonConsumer(url, 1, keep_ids=True, label=f"daemon {n}")
                   for n in (1, 2)]
        result = self.record(self.measure(
            daemons, name="vip-worker 2 daemons x p=1",
            settings="two masters, processes=1 each, concurrency=10, same queue"))
        result.extra["duplicates"] = drain.duplicates(daemons)
        self.results["scale_out"] = result

    # -- scenario 3 --------------------------------------------------------------------------

    def pickup(self) -> None:
        p = self.profile
        self.results["pickup"] = latency.run(self.ep, self.sqs, self.dir("pickup"), p.pickups,
                                             p.pickup_interval_s)

    # -- scenarios 4, 5 ----------------------------------------------------------------------

    def held_jobs(self) -> None:
        p = self.profile
        vis = inflight.VISIBILITY_S if p.name != "smoke" else 4
        for kind in ("async_sleep", "sleep"):
            self.results[f"held_{kind}"] = inflight.run(
                self.ep, self.sqs, self.dir(f"held-{kind}"), kind, p.jobs, p.hold_window_s,
                visibility_s=vis)

    # -- scenario 8 --------------------------------------------------------------------------

    def peers(self) -> None:
        p = self.profile
        self.results["peers"] = {}
        self.peer_reference()
        for name in p.peers:
            def one(name=name):
                try:
                    peer = peer_workers.make(name, self.ep.url)
                    if isinstance(peer, peer_workers.CeleryPeer):
                        peer.make_bodies(p.peer_count + p.warmup, self.workdir / "celery", "-")
                except peer_workers.Unavailable as exc:
                    self.results["peers"][name] = {"unavailable": str(exc)}
                    return
                result = self.record(self.measure([peer], p.peer_count))
                self.results["peers"][name] = {"name": result.name}
            self.guarded(f"peer {name}", one)
        self.peer_reference()  # before and after the peers: the median of the two

    def peer_reference(self) -> None:
        self.record(self.measure([drain.DaemonConsumer(self.ep.url, 1)], self.profile.peer_count,
                                 name="vip-worker p=1 (peer count)"))


def median_result(results: list[drain.Result]) -> drain.Result:
    if len(results) == 1:
        return results[0]
    ordered = sorted(results, key=lambda r: r.cpu_ms_per_msg)
    middle = ordered[len(ordered) // 2]
    median = drain.Result(middle.name, middle.settings, middle.count, middle.seconds,
                          middle.cpu_s, middle.endpoint_cpu_s, extra=dict(middle.extra))
    median.msgs_per_s = statistics.median(r.msgs_per_s for r in results)
    median.cpu_ms_per_msg = statistics.median(r.cpu_ms_per_msg for r in results)
    median.endpoint_cpu_ms_per_msg = statistics.median(r.endpoint_cpu_ms_per_msg
                                                       for r in results)
    median.endpoint_busy = statistics.median(r.endpoint_busy for r in results)
    median.extra["rounds"] = len(results)
    return median


def ratio(a, b, digits=3):
    if a is None or b is None or not b:
        return None
    return round(a / b, digits)


def summarize(bench: Bench, kind: str, idle_result: dict | None) -> dict:
    drains = {name: median_result(rs) for name, rs in bench.drains.items()}
    summary: dict = {"endpoint": kind, "profile": bench.profile.name}
    per_p = {}
    summary["track_jobs"] = bench.track_jobs
    for p in bench.profile.processes:
        daemon, bare = drains.get(f"vip-worker p={p}"), drains.get(f"bare boto3 p={p}")
        if daemon and bare:
            per_p[p] = (ratio(daemon.msgs_per_s, bare.msgs_per_s),
                        ratio(daemon.cpu_ms_per_msg, bare.cpu_ms_per_msg))
        off = drains.get(f"vip-worker p={p} track_jobs off")
        if off and bare:  # --track-jobs both: the ledger-off rows against the same bare
            summary[f"throughput_ratio_vs_bare_p{p}_track_jobs_off"] = ratio(
                off.msgs_per_s, bare.msgs_per_s)
            summary[f"cpu_per_msg_ratio_vs_bare_p{p}_track_jobs_off"] = ratio(
                off.cpu_ms_per_msg, bare.cpu_ms_per_msg)
        if off and daemon:
            summary[f"ledger_cpu_us_per_msg_p{p}"] = round(
                (daemon.cpu_ms_per_msg - off.cpu_ms_per_msg) * 1000, 1)
    if per_p:
        summary["throughput_ratio_vs_bare"] = min(t for t, _ in per_p.values())
        summary["cpu_per_msg_ratio_vs_bare"] = max(c for _, c in per_p.values())
        for p, (t, c) in per_p.items():
            summary[f"throughput_ratio_vs_bare_p{p}"] = t
            summary[f"cpu_per_msg_ratio_vs_bare_p{p}"] = c
    reference = drains.get("vip-worker p=1 (peer count)")
    peer_results = bench.results.get("peers", {})
    celery = next((drains.get(v.get("name")) for k, v in peer_results.items()
                   if k == "celery" and "name" in v), None)
    node = next((drains.get(v.get("name")) for k, v in peer_results.items()
                 if k == "sqs-consumer-batch" and "name" in v), None)
    summary["cpu_per_msg_ratio_vs_celery"] = ratio(
        celery.cpu_ms_per_msg if celery else None, reference.cpu_ms_per_msg if reference else None)
    summary["cpu_per_msg_ratio_vs_sqs_consumer"] = ratio(
        node.cpu_ms_per_msg if node else None, reference.cpu_ms_per_msg if reference else None)
    pickup = bench.results.get("pickup") or {}
    summary["pickup_p50_ms"] = pickup.get("p50_ms")
    summary["pickup_p99_ms"] = pickup.get("p99_ms")
    held_async = bench.results.get("held_async_sleep") or {}
    held_sync = bench.results.get("held_sleep") or {}
    summary["heartbeat_calls_per_10_inflight"] = held_async.get("calls_per_10_inflight")
    summary["heartbeat_calls_per_min"] = held_async.get("heartbeat_calls_per_min")
    summary["heartbeat_one_call_per_message_per_min"] = held_async.get(
        "one_call_per_message_per_min")
    summary["heartbeat_calls_per_10_inflight_threads"] = held_sync.get("calls_per_10_inflight")
    rss = [r.get("rss_max_mb") for r in (held_async, held_sync) if r.get("rss_max_mb")]
    summary["rss_mb_1000_jobs"] = max(rss) if rss else None
    summary["rss_mb_1000_async_jobs"] = held_async.get("rss_max_mb")
    summary["rss_mb_1000_thread_jobs"] = held_sync.get("rss_max_mb")
    summary["held_jobs"] = held_async.get("jobs") or held_sync.get("jobs")
    summary["cpu_pct_1000_async_jobs"] = held_async.get("cpu_pct")
    summary["cpu_pct_1000_thread_jobs"] = held_sync.get("cpu_pct")
    idle_result = idle_result or {}
    summary["idle_cpu_pct"] = idle_result.get("cpu_pct")
    summary["empty_receives_per_min"] = idle_result.get("receives_per_min")
    summary["empty_receives_per_queue_per_poller_per_min"] = idle_result.get(
        "receives_per_queue_per_poller_per_min")
    scale = bench.results.get("scale_out")
    if scale is not None:
        one = drains.get("vip-worker p=1")
        summary["scale_out_msgs_per_s"] = round(scale.msgs_per_s, 1)
        summary["scale_out_ratio_vs_one_daemon"] = ratio(scale.msgs_per_s,
                                                         one.msgs_per_s if one else None)
        summary["scale_out_endpoint_busy"] = round(scale.endpoint_busy, 2)
        summary["scale_out_duplicates"] = scale.extra.get("duplicates")
    summary["msgs_per_s"] = {n: round(r.msgs_per_s, 1) for n, r in drains.items()}
    summary["cpu_ms_per_msg"] = {n: round(r.cpu_ms_per_msg, 4) for n, r in drains.items()}
    summary["endpoint_cpu_ms_per_msg"] = {n: round(r.endpoint_cpu_ms_per_msg, 4)
                                          for n, r in drains.items()}
    summary["endpoint_busy_cores"] = {n: round(r.endpoint_busy, 2) for n, r in drains.items()}
    summary["calls_per_100_msgs"] = {n: r.extra.get("calls_per_100_msgs") for n, r in
                                     drains.items() if r.extra.get("calls_per_100_msgs")}
    summary["peers_unavailable"] = {k: v["unavailable"] for k, v in peer_results.items()
                                    if "unavailable" in v}
    summary["targets"] = {}
    for key, (op, bound) in TARGETS.items():
        value = summary.get(key)
        met = None if value is None else {"<=": value <= bound, ">=": value >= bound,
                                          "<": value < bound}[op]
        summary["targets"][key] = {"target": f"{op} {bound:g}", "value": value, "met": met}
    summary["errors"] = bench.results["errors"]
    # The ledger's rows after each daemon drain (the median's round): a job per message.
    summary["store_jobs"] = {n: {**r.extra["store_jobs"], "attempts": r.extra["store_attempts"]}
                             for n, r in drains.items() if r.extra.get("store_jobs")}
    summary["settings"] = {n: r.settings for n, r in drains.items()}
    return summary, drains


def print_table(summary: dict, drains: dict, bench: Bench, idle_result: dict | None) -> None:
    out = sys.stdout
    print(f"\nvip-worker benchmarks: profile {bench.profile.name}, endpoint {summary['endpoint']}"
          f" ({bench.mode}), {os.cpu_count()} CPUs, {platform.python_version()}", file=out)
    print("\n| system | msgs/s | CPU ms/msg | endpoint CPU ms/msg | endpoint busy (cores) | "
          "calls per 100 msgs |", file=out)
    print("|---|---:|---:|---:|---:|---|", file=out)
    for name, r in drains.items():
        calls = r.extra.get("calls_per_100_msgs") or {}
        text = ", ".join(f"{k} {v:g}" for k, v in calls.items())
        print(f"| {name} | {r.msgs_per_s:.0f} | {r.cpu_ms_per_msg:.3f} | "
              f"{r.endpoint_cpu_ms_per_msg:.3f} | {r.endpoint_busy:.2f} | {text} |", file=out)
    pickup = bench.results.get("pickup")
    if pickup:
        print(f"\npickup latency ({pickup['count']} messages, idle daemon): p50 "
              f"{pickup['p50_ms']} ms, p90 {pickup['p90_ms']} ms, p99 {pickup['p99_ms']} ms, "
              f"max {pickup['max_ms']} ms", file=out)
    for kind in ("async_sleep", "sleep"):
        held = bench.results.get(f"held_{kind}")
        if held:
            print(f"{held['jobs']} held {kind} jobs: RSS {held['rss_max_mb']} MB (idle daemon "
                  f"{held['rss_idle_mb']} MB), CPU {held['cpu_pct']}% of a core, "
                  f"{held['threads']} threads; heartbeat {held['heartbeat_calls_per_min']} "
                  f"calls/min for {held['one_call_per_message_per_min']} extensions/min = "
                  f"{held['calls_per_10_inflight']} calls per 10 in flight", file=out)
    if idle_result:
        print(f"idle ({idle_result['window_s']} s, {idle.PROCESSES} pollers, "
              f"{len(idle.QUEUES)} queues): CPU {idle_result['cpu_pct']}%, "
              f"{idle_result['receives_per_min']} empty receives/min = "
              f"{idle_result['receives_per_queue_per_poller_per_min']} per queue per poller",
              file=out)
    dups = summary.get("scale_out_duplicates")
    if dups:
        print(f"scale-out: 2 daemons {summary['scale_out_msgs_per_s']} msgs/s "
              f"({summary['scale_out_ratio_vs_one_daemon']}x one daemon p=1), endpoint busy "
              f"{summary['scale_out_endpoint_busy']} cores; ids handled twice: "
              f"{dups['endpoint_duplicates']} by endpoint double delivery, "
              f"{dups['daemon_duplicates']} by the daemon", file=out)
    for name, reason in summary["peers_unavailable"].items():
        print(f"peer {name}: not measured: {reason}", file=out)
    print("\n| target | value | met |\n|---|---:|---|", file=out)
    for key, t in summary["targets"].items():
        met = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        print(f"| {key} {t['target']} | {t['value']} | {met} |", file=out)
    for key, error in summary["errors"].items():
        print(f"error in {key}: {error.splitlines()[0]}", file=out)


def stop_on_term(signum, frame):
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    profile, kind = choose_profile(args)
    only = {s.strip() for s in args.only.split(",") if s.strip()} or set(SCENARIOS)
    unknown = only - set(SCENARIOS)
    if unknown:
        print(f"bench: unknown scenario(s) {sorted(unknown)}; known: {', '.join(SCENARIOS)}",
              file=sys.stderr)
        return 2
    os.environ.update(endpoint.base_env())  # the harness's own boto3 clients
    # Every process the harness starts has a session of its own: TERM must unwind the
    # finally blocks below that stop them, instead of killing the harness alone.
    signal.signal(signal.SIGTERM, stop_on_term)
    workdir = Path(tempfile.mkdtemp(prefix="vip-bench-"))
    started = time.monotonic()
    ep = endpoint.start(kind, str(workdir))
    bench = Bench(profile, ep, workdir, args.track_jobs)
    idle_run = None
    idle_result = None
    try:
        def start_idle():
            nonlocal idle_run
            idle_run = idle.IdleRun(ep, bench.sqs, bench.dir("idle"), profile.idle_window_s)
            idle_run.start()

        if "idle" in only:
            bench.guarded("idle (start, runs in the background)", start_idle)
        if "drains" in only:
            bench.guarded("drains vs bare", bench.drains_vs_bare)
        if "scale-out" in only:
            bench.guarded("scale-out", bench.scale_out)
        if "pickup" in only:
            bench.guarded("pickup latency", bench.pickup)
        if "held" in only:
            bench.guarded("held jobs", bench.held_jobs)
        if profile.peers and "peers" in only:
            bench.guarded("peers", bench.peers)
        # The job API (bench/api.py); not in --smoke unless asked for: tests/bench's budget.
        if "api" in only and (profile.name != "smoke" or args.only):
            bench.results["api"] = bench.guarded("job API", lambda: api.run(
                ep, str(bench.dir("api")), profile.name))
        if idle_run is not None:
            idle_result = bench.guarded("idle (finish)", idle_run.finish)
            bench.results["idle"] = idle_result
    finally:
        if idle_run is not None:
            idle_run.stop()
        ep.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    summary, drains = summarize(bench, kind, idle_result)
    summary["elapsed_s"] = round(time.monotonic() - started, 1)
    summary["details"] = {k: v for k, v in bench.results.items()
                          if k not in ("errors", "scale_out")}
    print_table(summary, drains, bench, idle_result)
    if bench.results.get("api"):
        api.report(bench.results["api"])
    if args.keep:
        print(f"work dir kept: {workdir}", file=sys.stdout)
    sys.stdout.flush()
    print(json.dumps(summary, default=str, separators=(",", ":")))
    return 0 if not summary["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
