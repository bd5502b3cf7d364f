"""vip_worker.testing: the helpers plugin authors use in their own tests."""

from __future__ import annotations

from datetime import UTC, datetime

from vip_worker import PermanentError, RetryLater
from vip_worker.testing import MemoryStore, make_message, run_handler


def test_make_message_builds_the_seed_envelope():
    message = make_message("articles", {"topic": "t"}, job_id="j1", user_id="u1")
    assert (message.job_id, message.user_id, message.type, message.payload) == (
        "j1", "u1", "articles", {"topic": "t"})
    assert '"jobId":"j1"' in message.to_body()


def test_outcomes_are_classified_as_the_daemon_does():
    def ok(message, ctx):
        ctx.progress(50, "half way")

    def permanent(message, ctx):
        raise PermanentError("bad topic")

    def later(message, ctx):
        raise RetryLater("busy", delay_s=7)

    def flaky(message, ctx):
        raise ConnectionError("reset")

    message = make_message("x")
    assert run_handler(ok, message).succeeded
    dead = run_handler(permanent, message)
    assert dead.dead_lettered and dead.reason == "PermanentError: bad topic"
    assert run_handler(later, message).delay_s == 7
    retried = run_handler(flaky, message, receive_count=2, retry_backoff_base_s=10)
    assert retried.retried and retried.delay_s == 20  # the backoff's upper bound
    assert run_handler(flaky, message, receive_count=5, max_attempts=5).dead_lettered


def test_progress_is_recorded_against_an_in_memory_store():
    store = MemoryStore()
    message = make_message("articles", job_id="job-1")

    async def handler(message, ctx):
        ctx.store.claim(message.job_id, user_id=message.user_id, type=message.type,
                        params={}, message_id=ctx.message_id, lease_s=60,
                        now=datetime.now(UTC))
        ctx.progress(10, "Generating content...")
        ctx.progress(80, "Saving content...")

    outcome = run_handler(handler, message, store=store)
    assert outcome.succeeded
    assert outcome.progress == [(10, "Generating content..."), (80, "Saving content...")]
    assert store.get_job("job-1")["progress"] == 80


def test_the_poller_fixture_runs_handlers_through_local_sqs(vip_worker_poller):
    seen = []

    def handler(message, ctx):
        seen.append(ctx.plugin_settings["greeting"])
        if message.payload.get("bad"):
            raise PermanentError("refused")

    messages = [make_message("hello", {}), make_message("hello", {"bad": True})]
    run = vip_worker_poller({"hello": handler}, messages,
                            plugin_settings={"greeting": "hi"})
    assert run.succeeded == [messages[0].job_id]
    assert run.dead_lettered == {messages[1].job_id: "PermanentError: refused"}
    assert seen == ["hi", "hi"]


def test_run_handler_shows_the_plugin_settings_through_the_poller_context_too():
    seen = []

    def handler(message, ctx):
        seen.append((ctx.plugin_settings, ctx.poller.plugin_settings("shop")))

    values = {"greeting": "hi"}
    assert run_handler(handler, make_message("x"), plugin_settings=values,
                       plugin="shop").succeeded
    assert seen == [(values, values)]
    seen.clear()
    run_handler(handler, make_message("x"))
    assert seen == [({}, {})]


def test_the_poller_fixture_keeps_the_job_store_in_the_tests_tmp_path(
        vip_worker_poller, tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    paths = []

    def handler(message, ctx):
        paths.append(ctx.store.path)

    run = vip_worker_poller({"hello": handler}, [make_message("hello", {})])
    assert len(run.succeeded) == 1
    assert paths[0].startswith(str(tmp_path)) and not paths[0].startswith(str(cwd))
    assert not (cwd / "var").exists()


def test_write_config_writes_a_config_the_daemon_loads(tmp_path):
    from vip_worker import config
    from vip_worker.testing import write_config

    path = write_config(tmp_path / "vip-worker.toml",
                        {"work": {"url": "http://127.0.0.1:1/123456789012/work",
                                  "visibility_timeout_s": 30}},
                        plugins={"shop": {"api_key": "k-1"}}, type_limits={"images": 2},
                        processes=3, plugin_dirs=[], log_level="WARNING")
    settings = config.load(str(path), environ={})
    assert (settings.processes, settings.log_level, settings.type_limits) == (
        3, "WARNING", {"images": 2})
    assert settings.queue("work").visibility_timeout_s == 30
    assert settings.plugin_settings["shop"] == {"api_key": "k-1"}
