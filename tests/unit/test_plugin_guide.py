"""The plugin guide's worked example runs: docs/plugins.md is the source of its code.

Each code block in docs/plugins.md preceded by ``<!-- example: PATH -->`` is written to PATH
under a temporary directory, loaded the way the daemon loads plugins
(``vip_worker.plugins.load_plugins``) and run with ``vip_worker.testing.run_handler``; the
guide's own test file for the example is run with pytest. The wrapper the guide shows is the
shipped ``examples/plugins/timing.py`` (run by tests/e2e/test_example_wrapper.py) and must stay
identical to it. An edit to the guide that breaks the example fails here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from vip_worker import config
from vip_worker.errors import ConfigError
from vip_worker.plugins import load_plugins
from vip_worker.testing import MemoryStore, capture_logs, make_message, run_handler

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "plugins.md"
EXAMPLE = re.compile(r"^<!-- example: (\S+) -->\n```[a-z]+\n(.*?)^```$", re.MULTILINE | re.DOTALL)
PLUGIN_FILES = ("summaries/__init__.py", "summaries/tests/test_summaries.py")
SHIPPED_WRAPPER = "examples/plugins/timing.py"


def examples() -> dict[str, str]:
    """PATH -> code of every marked block of the guide."""
    found: dict[str, str] = {}
    for path, code in EXAMPLE.findall(GUIDE.read_text(encoding="utf-8")):
        assert path not in found, f"docs/plugins.md marks {path} twice"
        found[path] = code
    return found


@pytest.fixture
def plugin_dir(tmp_path) -> Path:
    """The guide's plugin files, written as a plugin author would lay them out."""
    root = tmp_path / "plugins"
    code = examples()
    for name in PLUGIN_FILES:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(code[name], encoding="utf-8")
    return root


def load(plugin_dir: Path, config_file: str | None = None, **env):
    settings = config.load(config_file,
                           environ={"VIP_WORKER_PLUGIN_DIRS": str(plugin_dir), **env},
                           require_queues=False)
    return load_plugins(settings)


def summaries(plugin_dir: Path, config_file: str | None = None, **env):
    registry = load(plugin_dir, config_file, **env).registry
    return registry.get("summaries").fn, registry.plugin_settings["summaries"]


@pytest.fixture
def plugin_log():
    """The plugins' log records (the daemon's logging may not propagate them)."""
    with capture_logs("vip_worker_plugins") as lines:
        yield lines


def test_the_guide_marks_the_example_files():
    assert set(examples()) == {*PLUGIN_FILES, "vip-worker.toml", SHIPPED_WRAPPER}


def test_the_wrapper_shown_is_the_shipped_example():
    shipped = (ROOT / SHIPPED_WRAPPER).read_text(encoding="utf-8")
    assert examples()[SHIPPED_WRAPPER].rstrip("\n") == shipped.rstrip("\n"), (
        f"docs/plugins.md: copy {SHIPPED_WRAPPER} into the guide again")


def test_the_example_loads_as_a_plugin(plugin_dir):
    loaded = load(plugin_dir)
    assert {info.name: info.types for info in loaded.infos} == {"summaries": ["summaries"]}
    assert loaded.registry.plugin_settings["summaries"] == {
        "sentences": 3, "max_chars": 100_000, "collection": "summaries"}


def test_the_guides_config_table_and_the_environment_set_its_settings(plugin_dir, tmp_path):
    toml = tmp_path / "vip-worker.toml"
    toml.write_text(examples()["vip-worker.toml"], encoding="utf-8")
    _, values = summaries(plugin_dir, str(toml))
    assert values == {"sentences": 2, "max_chars": 20000, "collection": "summaries"}
    _, values = summaries(plugin_dir, str(toml), VIP_WORKER_PLUGINS_SUMMARIES_SENTENCES="5")
    assert values["sentences"] == 5


def test_a_bad_setting_names_the_plugin_and_the_key(plugin_dir):
    with pytest.raises(ConfigError) as raised:
        summaries(plugin_dir, VIP_WORKER_PLUGINS_SUMMARIES_COLLECTION="no-dashes")
    assert raised.value.key == "plugins.summaries.collection"
    assert raised.value.source == "env VIP_WORKER_PLUGINS_SUMMARIES_COLLECTION"


def test_a_message_is_summarized_with_progress_and_logged(plugin_dir, plugin_log):
    handle, values = summaries(plugin_dir)
    message = make_message("summaries", {"text": "First. Second! Third? Fourth.",
                                         "sentences": 3})
    outcome = run_handler(handle, message, plugin_settings=values)
    assert outcome.succeeded, outcome.reason
    assert outcome.progress == [(50, "Summarizing...")]
    [doc] = outcome.store.get_content("summaries", message.job_id)
    assert doc["summary"] == "First. Second! Third?" and doc["sentences"] == 3
    job = outcome.store.get_job(message.job_id)
    assert (job["status"], job["progress"], job["attempts"]) == ("completed", 100, 1)
    assert plugin_log.names() == ["summaries.done"]
    assert plugin_log.records[0].job_id == message.job_id


def test_a_redelivery_of_a_completed_job_does_nothing(plugin_dir, plugin_log):
    handle, values = summaries(plugin_dir)
    store = MemoryStore()
    message = make_message("summaries", {"text": "One. Two."})
    assert run_handler(handle, message, plugin_settings=values, store=store).succeeded
    again = run_handler(handle, message, plugin_settings=values, store=store,
                        message_id="msg-2", receive_count=2)
    assert again.succeeded and again.progress == []
    assert len(store.get_content("summaries", message.job_id)) == 1
    assert "summaries.already_done" in plugin_log.names()


def test_a_job_another_delivery_is_running_is_retried_later(plugin_dir):
    handle, values = summaries(plugin_dir)
    store = MemoryStore()
    message = make_message("summaries", {"text": "One."})
    store.claim(message.job_id, user_id=message.user_id, type=message.type, params={},
                message_id="other-delivery", lease_s=600, now=datetime.now(UTC))
    outcome = run_handler(handle, message, plugin_settings=values, store=store)
    assert outcome.retried and outcome.delay_s == 60


@pytest.mark.parametrize(("payload", "reason"), [
    ({}, "payload.text must be a non-empty string"),
    ({"text": 5}, "payload.text must be a non-empty string"),
    ({"text": "One.", "sentences": 0}, "payload.sentences must be an integer in 1..20, got 0"),
    ({"text": "One.", "sentences": True}, "payload.sentences must be an integer in 1..20"),
])
def test_bad_input_is_dead_lettered_and_the_job_marked_failed(plugin_dir, payload, reason):
    handle, values = summaries(plugin_dir)
    message = make_message("summaries", payload)
    outcome = run_handler(handle, message, plugin_settings=values)
    assert outcome.dead_lettered
    assert outcome.reason.startswith(f"PermanentError: {reason}")
    job = outcome.store.get_job(message.job_id)
    assert job["status"] == "failed" and job["error"].startswith(reason)


def test_the_guides_own_tests_pass(plugin_dir, tmp_path):
    # In a fresh directory and process, as a plugin author runs them (the vip_worker
    # pytest plugin, with its poller fixture, comes from the installed entry point).
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIP_WORKER_")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         str(plugin_dir / "summaries" / "tests")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 passed" in result.stdout, result.stdout
