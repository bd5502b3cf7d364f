"""``python -m bench.quota`` runs and ends with its JSON summary (docs/benchmarks.md).

No timed assertions: only the contract (the last stdout line is one JSON object with the
documented keys) and the counts that do not depend on the machine's speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KEYS = ("acquire_round_trips", "acquire_cpu_us_sqlite", "acquire_cpu_us_sqlite_rpm60",
        "report_cpu_us_sqlite", "acquire_cpu_us_mongomock", "limit_rpm", "worst_60s_window",
        "fleet_asks_per_s", "sqs_calls_per_deferral", "store_calls_per_deferral")


def test_the_quota_benchmark_prints_its_summary_last():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "VIP_WORKER_"))}
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    proc = subprocess.run([sys.executable, "-m", "bench.quota", "--quick", "--seconds", "1",
                           "--procs", "2", "--rpm", "20"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(KEYS) <= set(summary)
    assert summary["acquire_round_trips"] == 1.0
    assert summary["worst_60s_window"] == 20  # 2 processes, 1 s: exactly the limit
    assert summary["store_calls_per_deferral"] == 2.0
