"""``vip-worker enqueue`` and ``vip-worker jobs`` in this process: exit codes, one-line errors."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

from vip_worker import cli, exitcodes
from vip_worker.ops.jobs import payloads_from
from vip_worker.plugins.manager import NAMESPACE
from vip_worker.store.factory import open_store

PROJECT_PLUGINS = Path(__file__).resolve().parents[2] / "plugins"

FAILING = """
from vip_worker import PermanentError, hookimpl

def handle(message, ctx):
    raise PermanentError("no way")

@hookimpl
def vip_worker_register_handlers(register):
    register("boom", handle)
"""

START_FAILS = """
from vip_worker import hookimpl

@hookimpl
def vip_worker_register_handlers(register):
    register("fragile", lambda message, ctx: None)

@hookimpl
def vip_worker_poller_start(context):
    raise ConnectionError("cannot reach the database")
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No setting from the caller's environment; the job store under tmp_path."""
    for name in list(os.environ):
        if name.startswith(("VIP_WORKER_", "ARTICLES_", "IMAGES_", "MONGODB_", "FASTAPI_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("VIP_WORKER_STATE_DIR", str(tmp_path / "state"))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name == NAMESPACE or name.startswith(NAMESPACE + "."):
            del sys.modules[name]


def run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def plugin_dir(tmp_path: Path, monkeypatch, **plugins: str) -> None:
    root = tmp_path / "plugins"
    root.mkdir()
    for name, code in plugins.items():
        (root / f"{name}.py").write_text(textwrap.dedent(code))
    monkeypatch.setenv("VIP_WORKER_PLUGIN_DIRS", str(root))


def one_line(err: str) -> str:
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    return err


# -- jobs -----------------------------------------------------------------------------------


def test_jobs_with_a_store_that_cannot_be_opened_exits_69(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("VIP_WORKER_STATE_DIR", str(blocker / "state"))  # not a directory
    for argv in (("jobs", "list"), ("jobs", "show", "abc")):
        code, out, err = run(capsys, *argv)
        assert code == exitcodes.UNAVAILABLE == 69
        assert one_line(err).startswith("vip-worker: job store unavailable: ")


def test_jobs_with_a_store_setting_it_cannot_use_exits_78(monkeypatch, capsys):
    monkeypatch.setenv("VIP_WORKER_JOBS_COLLECTION", "media")  # the same as media_collection
    code, _, err = run(capsys, "jobs", "list")
    assert code == exitcodes.CONFIG
    assert one_line(err).startswith("vip-worker: configuration error: jobs_collection: ")


# -- enqueue without SQS: the inline run ------------------------------------------------------


def test_enqueue_inline_with_a_failing_handler_is_one_line_and_exit_1(tmp_path, monkeypatch,
                                                                     capsys):
    plugin_dir(tmp_path, monkeypatch, failing=FAILING)
    code, out, err = run(capsys, "enqueue", "boom", "--job-id", "job-1", "--payload", "{}")
    assert code == exitcodes.FAILED == 1
    assert out == ""
    # The inline-run warning keeps its fields (it was a bare "producer.inline"), then the error.
    warning, err = err.split("\n", 1)
    assert warning == ("vip-worker: warning: producer.inline: no SQS queue configured for "
                       "'boom': running the handler in this process (job_id=job-1 type=boom)")
    assert one_line(err).startswith("vip-worker: job job-1 failed in the inline run")
    assert "PermanentError: no way" in err


def test_enqueue_inline_of_a_type_no_plugin_handles_exits_64_and_creates_no_job(
        tmp_path, monkeypatch, capsys):
    plugin_dir(tmp_path, monkeypatch, failing=FAILING)
    code, _, err = run(capsys, "enqueue", "nobody", "--job-id", "job-2")
    assert code == exitcodes.USAGE
    assert "no plugin handles type 'nobody'" in one_line(err)
    store = open_store(cli.config.load(require_queues=False))
    assert store.get_job("job-2") is None
    store.close()


def test_enqueue_inline_with_a_failing_start_hook_names_the_plugin(tmp_path, monkeypatch,
                                                                   capsys):
    plugin_dir(tmp_path, monkeypatch, startfails=START_FAILS)
    code, _, err = run(capsys, "enqueue", "fragile")
    assert code == exitcodes.FAILED
    assert "vip_worker_poller_start failed: plugin 'startfails': ConnectionError" in (
        one_line(err))


def test_enqueue_inline_with_a_broken_plugin_exits_78(tmp_path, monkeypatch, capsys):
    plugin_dir(tmp_path, monkeypatch, broken="import no_such_module_anywhere\n")
    code, _, err = run(capsys, "enqueue", "boom")
    assert code == exitcodes.CONFIG
    assert "plugin 'broken'" in one_line(err)


# -- --keywords -------------------------------------------------------------------------------


def test_keywords_flag_sends_a_list():
    args = cli.build_parser().parse_args(["enqueue", "articles", "--keywords", "fantasy, nfl,"])
    assert payloads_from(args) == [{"keywords": ["fantasy", "nfl"]}]


def test_a_keywords_article_enqueued_inline_is_generated(tmp_path, monkeypatch, capsys):
    from vip_worker.dev.stubservice import StubGenerationService

    monkeypatch.setenv("VIP_WORKER_PLUGIN_DIRS", str(PROJECT_PLUGINS))
    with StubGenerationService() as service:
        monkeypatch.setenv("FASTAPI_URL", service.url)
        code, out, err = run(capsys, "enqueue", "articles", "--mode", "keywords",
                             "--keywords", "fantasy,draft", "--word-count", "50")
    assert code == exitcodes.OK, err
    store = open_store(cli.config.load(require_queues=False))
    job_id = out.strip()
    assert store.get_job(job_id)["status"] == "completed"
    [content] = store.get_content("generated_content", job_id)
    assert content["seo"]["keywords"] == ["fantasy", "draft"]  # the stub echoes the list
    store.close()


# -- bad input names the flag (and the file) ----------------------------------------------------


def test_enqueue_payload_that_is_not_json_names_the_flag(capsys):
    code, out, err = run(capsys, "enqueue", "articles", "--payload", "not json")
    assert code == exitcodes.USAGE and out == ""
    assert one_line(err) == ("vip-worker: --payload: not JSON: Expecting value: line 1 "
                             "column 1 (char 0)\n")


def test_enqueue_file_that_cannot_be_read_names_the_flag_and_the_file(tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"
    code, _, err = run(capsys, "enqueue", "articles", "--file", str(missing))
    assert code == exitcodes.USAGE
    assert one_line(err) == (f"vip-worker: --file {missing}: cannot read it: "
                             "No such file or directory\n")


def test_enqueue_file_with_a_bad_line_names_the_line(tmp_path, capsys):
    path = tmp_path / "jobs.jsonl"
    path.write_text('{"topic": "a"}\n\n[1]\n')
    code, _, err = run(capsys, "enqueue", "articles", "--file", str(path))
    assert code == exitcodes.USAGE
    assert one_line(err) == f"vip-worker: --file {path}, line 3: not a JSON object\n"


def test_jobs_list_with_an_unknown_status_lists_the_valid_ones(capsys):
    with pytest.raises(SystemExit) as exit_:
        run(capsys, "jobs", "list", "--status", "done")
    assert exit_.value.code == 2
    assert ("argument --status: invalid status 'done' (choose from queued, processing, "
            "completed, failed, cancelled)") in capsys.readouterr().err


# -- the command table -------------------------------------------------------------------------


def test_every_command_resolves_and_the_cli_imports_no_command_module():
    import subprocess

    for target in [*cli.COMMANDS.values(), *cli.STANDALONE_COMMANDS.values()]:
        assert callable(cli.resolve(target)), target
    # A fresh interpreter: what importing the CLI and building its parser loads.
    code = ("import sys, vip_worker.cli as c; c.build_parser(); "
            "print(' '.join(sorted(sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.split()
    assert not [m for m in loaded if m.startswith(("vip_worker.ops", "vip_worker.dev",
                                                   "vip_worker.arbiter", "boto3"))]
    assert set(cli.COMMANDS) | set(cli.STANDALONE_COMMANDS) == set(
        cli.build_parser()._subparsers._group_actions[0].choices)
