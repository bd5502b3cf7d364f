"""The benchmark harness runs end to end (``--smoke``) and ends with its JSON summary.

No timed assertions: the figures of a smoke run are too small to mean anything, and the
machine is shared. What is checked is the contract of ``python -m bench.run``: the last
stdout line is one JSON object with every documented key (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTED_KEYS = (
    "throughput_ratio_vs_bare", "cpu_per_msg_ratio_vs_bare", "cpu_per_msg_ratio_vs_celery",
    "pickup_p50_ms", "pickup_p99_ms", "heartbeat_calls_per_10_inflight", "rss_mb_1000_jobs",
    "idle_cpu_pct", "empty_receives_per_min", "msgs_per_s", "cpu_ms_per_msg",
    "endpoint_cpu_ms_per_msg", "targets", "endpoint",
)
SMOKE_TIMEOUT_S = 58


@pytest.fixture(scope="module")
def smoke_summary():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "VIP_WORKER_"))}
    env.update({"AWS_EC2_METADATA_DISABLED": "true", "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"})
    proc = subprocess.Popen([sys.executable, "-m", "bench.run", "--smoke"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=SMOKE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # TERM lets the harness stop the endpoint and daemons it started (each in a
        # session of its own, out of reach of a kill of the harness alone).
        proc.terminate()
        try:
            stdout, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        pytest.fail(f"bench.run --smoke took over {SMOKE_TIMEOUT_S} s; stderr:\n{stderr[-3000:]}")
    result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    lines = result.stdout.strip().splitlines()
    assert lines, f"no output; stderr:\n{result.stderr[-3000:]}"
    try:
        summary = json.loads(lines[-1])
    except ValueError:
        pytest.fail(f"last line is not JSON: {lines[-1][:500]!r}\nstderr:\n{result.stderr[-3000:]}")
    return result, summary


def test_last_line_is_the_json_summary_with_the_documented_keys(smoke_summary):
    _, summary = smoke_summary
    missing = [key for key in DOCUMENTED_KEYS if key not in summary]
    assert not missing, f"summary lacks {missing}"


def test_every_documented_key_is_in_the_docs():
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    assert [key for key in DOCUMENTED_KEYS if f"`{key}`" not in text] == []


def test_smoke_run_measured_every_scenario_without_errors(smoke_summary):
    result, summary = smoke_summary
    assert summary["errors"] == {}, result.stderr[-3000:]
    assert result.returncode == 0
    for key in ("throughput_ratio_vs_bare", "cpu_per_msg_ratio_vs_bare", "pickup_p50_ms",
                "heartbeat_calls_per_10_inflight", "rss_mb_1000_jobs", "idle_cpu_pct",
                "empty_receives_per_min"):
        assert summary[key] is not None, key
