"""``vip-worker new-plugin``: the generated plugin loads and its own tests pass as generated."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vip_worker.dev.stack import vip_worker_command

pytestmark = pytest.mark.e2e


def vip(*args, env=None, cwd=None):
    full = {k: v for k, v in os.environ.items() if not k.startswith("VIP_WORKER_")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "vip_worker", *args], env=full, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_scaffolded_plugin_loads_and_its_test_passes(tmp_path):
    created = vip("new-plugin", "shop", "--dir", str(tmp_path))
    assert created.returncode == 0, created.stderr
    # The next steps name programs a user can run (make's .venv/bin is not on the PATH).
    python, vip_worker = vip_worker_command(program="python"), vip_worker_command()
    assert created.stdout.splitlines()[-1] == (
        f"next: {python} -m pytest {tmp_path / 'shop'}/tests   then   {vip_worker} plugins")
    assert (tmp_path / "shop" / "settings.example.toml").read_text().count("[plugins.shop]") == 1
    listed = vip("plugins", "--json", env={"VIP_WORKER_PLUGIN_DIRS": str(tmp_path),
                                           "ARTICLES_QUEUE_URL": "http://127.0.0.1:1/1/a"})
    assert listed.returncode == 0, listed.stderr
    assert {p["name"]: p["types"] for p in json.loads(listed.stdout)} == {"shop": ["shop"]}
    # The generated tests run in a fresh directory, as a plugin author would run them.
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            str(tmp_path / "shop" / "tests")], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "3 passed" in tests.stdout


def test_scaffold_refuses_a_bad_name_and_an_existing_directory(tmp_path):
    bad = vip("new-plugin", "Bad-Name", "--dir", str(tmp_path))
    assert bad.returncode == 64 and "must be lowercase" in bad.stderr
    assert vip("new-plugin", "shop", "--dir", str(tmp_path)).returncode == 0
    again = vip("new-plugin", "shop", "--dir", str(tmp_path))
    assert again.returncode == 64 and "exists already" in again.stderr
