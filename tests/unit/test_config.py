"""config.load: defaults, the file, the environment, legacy names, errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from vip_worker import config
from vip_worker.errors import ConfigError

URL = "https://sqs.us-east-1.amazonaws.com/123456789012/"
WORK = {"VIP_WORKER_QUEUE_WORK_URL": URL + "work"}


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "vip-worker.toml"
    path.write_text(text)
    return str(path)


def load_error(*args, **kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as raised:
        config.load(*args, **kwargs)
    return raised.value


# -- sources and their order ----------------------------------------------------------


def test_defaults_apply_when_nothing_is_set():
    settings = config.load(environ=WORK)
    assert (settings.processes, settings.concurrency, settings.grace_period_s) == (2, 10, 30.0)
    assert (settings.region, settings.sqs_endpoint_url, settings.log_level) == (
        "us-east-1", "", "INFO")
    queue = settings.queue("work")
    assert (queue.url, queue.visibility_timeout_s, queue.wait_time_s, queue.max_attempts) == (
        URL + "work", 60, 20, 5)
    assert not queue.fifo
    assert settings.sources["processes"] == "default"
    assert settings.sources["queues.work.url"] == "env VIP_WORKER_QUEUE_WORK_URL"


def test_file_values_are_read_and_relative_plugin_dirs_follow_the_file(tmp_path):
    path = write(tmp_path, f"""
processes = 4
type_limits = {{ images = 2 }}
plugin_dirs = ["myplugins"]
disabled_plugins = ["images"]

[queues.articles]
url = "{URL}articles.fifo"
visibility_timeout_s = 120
max_job_time_s = 600

[plugins.articles]
endpoint = "http://127.0.0.1:8000"
""")
    settings = config.load(path, environ={})
    assert settings.processes == 4
    assert settings.type_limits == {"images": 2}
    assert settings.plugin_dirs == [str(tmp_path.resolve() / "myplugins")]
    assert settings.disabled_plugins == ["images"]
    queue = settings.queue("articles")
    assert (queue.visibility_timeout_s, queue.max_job_time_s, queue.fifo) == (120, 600.0, True)
    assert settings.plugin_settings == {"articles": {"endpoint": "http://127.0.0.1:8000"}}
    assert settings.sources["processes"] == f"file {path}"
    assert settings.sources["queues.articles.visibility_timeout_s"] == f"file {path}"
    assert settings.config_file == path


def test_the_file_can_come_from_the_environment(tmp_path):
    path = write(tmp_path, f'concurrency = 7\n[queues.work]\nurl = "{URL}work"\n')
    assert config.load(environ={"VIP_WORKER_CONFIG": path}).concurrency == 7


def test_environment_beats_file_and_command_line_beats_both(tmp_path):
    path = write(tmp_path, f'processes = 4\n[queues.work]\nurl = "{URL}work"\n'
                           "visibility_timeout_s = 90\n")
    env = {"VIP_WORKER_PROCESSES": "8", "VIP_WORKER_QUEUE_WORK_VISIBILITY_TIMEOUT_S": "300"}
    settings = config.load(path, environ=env)
    assert settings.processes == 8
    assert settings.sources["processes"] == "env VIP_WORKER_PROCESSES"
    assert settings.queue("work").visibility_timeout_s == 300
    assert settings.sources["queues.work.visibility_timeout_s"] == (
        "env VIP_WORKER_QUEUE_WORK_VISIBILITY_TIMEOUT_S")
    settings = config.load(path, environ=env, overrides={"processes": 3, "concurrency": None})
    assert (settings.processes, settings.sources["processes"]) == (3, "command line")
    assert settings.concurrency == 10


def test_the_apps_own_names_work_as_they_are():
    env = {
        "ARTICLES_QUEUE_URL": URL + "articles",
        "IMAGES_QUEUE_URL": URL + "images",
        "ARTICLES_DLQ_URL": URL + "articles-dlq",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_REGION": "eu-central-1",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:1111",
        "AWS_ENDPOINT_URL_SQS": "http://127.0.0.1:4566",
    }
    settings = config.load(environ=env)
    assert [q.name for q in settings.queues] == ["articles", "images"]
    assert settings.queue("images").url == URL + "images"
    assert settings.queue("articles").dlq_url == URL + "articles-dlq"
    assert settings.region == "eu-central-1"
    assert settings.sqs_endpoint_url == "http://127.0.0.1:4566"
    assert settings.sources["region"] == "env AWS_REGION"
    assert config.load(environ={**env, "VIP_WORKER_REGION": "ap-south-1"}).region == "ap-south-1"


def test_per_queue_environment_defines_a_queue_and_its_settings():
    env = {"VIP_WORKER_QUEUE_REPORTS_URL": URL + "reports",
           "VIP_WORKER_QUEUE_REPORTS_MAX_ATTEMPTS": "9",
           "VIP_WORKER_QUEUE_REPORTS_DLQ_URL": URL + "reports-dlq",
           "VIP_WORKER_QUEUE_REPORTS_CONCURRENCY": "2"}
    queue = config.load(environ=env).queue("reports")
    assert (queue.url, queue.max_attempts, queue.dlq_url, queue.concurrency) == (
        URL + "reports", 9, URL + "reports-dlq", 2)


def test_list_and_table_settings_parse_from_the_environment():
    settings = config.load(environ={
        **WORK, "VIP_WORKER_DISABLED_PLUGINS": "images, articles,",
        "VIP_WORKER_TYPE_LIMITS": "images=2, articles=4", "VIP_WORKER_LOG_LEVEL": "debug"})
    assert settings.disabled_plugins == ["images", "articles"]
    assert settings.type_limits == {"images": 2, "articles": 4}
    assert settings.log_level == "DEBUG"


def test_no_queue_is_an_error_unless_queues_are_optional():
    error = load_error(environ={})
    assert error.key == "queues"
    assert "ARTICLES_QUEUE_URL" in str(error)
    assert config.load(environ={}, require_queues=False).queues == ()


# -- errors name the key and where it came from ------------------------------------------


def test_unknown_key_in_the_file(tmp_path):
    path = write(tmp_path, "procesess = 4\n")
    error = load_error(path, environ=WORK)
    assert (error.key, error.source) == ("procesess", f"file {path}")
    assert "procesess" in str(error) and path in str(error)


def test_unknown_worker_environment_variable():
    error = load_error(environ={**WORK, "VIP_WORKER_PROCESES": "4"})
    assert (error.key, error.source) == ("VIP_WORKER_PROCESES", "environment")


def test_unknown_queue_key_in_the_file(tmp_path):
    path = write(tmp_path, f'[queues.work]\nurl = "{URL}work"\nvisiblity_timeout_s = 5\n')
    error = load_error(path, environ={})
    assert (error.key, error.source) == ("queues.work.visiblity_timeout_s", f"file {path}")


def test_unknown_queue_key_in_the_environment():
    error = load_error(environ={**WORK, "VIP_WORKER_QUEUE_WORK_VISIBILITY": "5"})
    assert (error.key, error.source) == ("VIP_WORKER_QUEUE_WORK_VISIBILITY", "environment")


@pytest.mark.parametrize(("env", "key", "words"), [
    ({"VIP_WORKER_PROCESSES": "four"}, "processes", "integer"),
    ({"VIP_WORKER_PROCESSES": "0"}, "processes", "1..256"),
    ({"VIP_WORKER_CONCURRENCY": "2.5"}, "concurrency", "integer"),
    ({"VIP_WORKER_GRACE_PERIOD_S": "-1"}, "grace_period_s", "0..43200"),
    ({"VIP_WORKER_LOG_LEVEL": "LOUD"}, "log_level", "DEBUG"),
    ({"VIP_WORKER_SQS_ENDPOINT_URL": "ftp://x"}, "sqs_endpoint_url", "http"),
    ({"VIP_WORKER_TYPE_LIMITS": "images"}, "type_limits", "TYPE=N"),
    ({"VIP_WORKER_TYPE_LIMITS": "images=0"}, "type_limits", "1..10000"),
    ({"VIP_WORKER_QUEUE_WORK_VISIBILITY_TIMEOUT_S": "43201"},
     "queues.work.visibility_timeout_s", "2..43200"),
    ({"VIP_WORKER_QUEUE_WORK_WAIT_TIME_S": "x"}, "queues.work.wait_time_s", "integer"),
    ({"VIP_WORKER_QUEUE_WORK_MAX_JOB_TIME_S": "43000"}, "queues.work.max_job_time_s", "1..42900"),
])
def test_bad_environment_values_name_the_key(env, key, words):
    error = load_error(environ={**WORK, **env})
    assert error.key == key
    assert words in error.problem
    assert error.source == f"env {next(iter(env))}"


@pytest.mark.parametrize(("line", "key"), [
    ("processes = true", "processes"),
    ("processes = 2.5", "processes"),
    ('disabled_plugins = "a"', None),  # a string is a one-item list: accepted
    ("disabled_plugins = [1]", "disabled_plugins"),
    ('region = 5', "region"),
])
def test_bad_file_values_name_the_key(tmp_path, line, key):
    path = write(tmp_path, line + "\n")
    if key is None:
        assert config.load(path, environ=WORK).disabled_plugins == ["a"]
        return
    error = load_error(path, environ=WORK)
    assert (error.key, error.source) == (key, f"file {path}")


def test_backoff_max_below_base_is_refused():
    error = load_error(environ={**WORK, "VIP_WORKER_QUEUE_WORK_RETRY_BACKOFF_BASE_S": "60",
                                "VIP_WORKER_QUEUE_WORK_RETRY_BACKOFF_MAX_S": "30"})
    assert error.key == "queues.work.retry_backoff_max_s"


def test_a_queue_without_url_and_a_bad_queue_name(tmp_path):
    error = load_error(write(tmp_path, "[queues.work]\nmax_attempts = 3\n"), environ={})
    assert error.key == "queues.work.url"
    error = load_error(write(tmp_path, f'[queues.Work-1]\nurl = "{URL}w"\n'), environ={})
    assert error.key == "queues.Work-1"


def test_a_missing_or_broken_file_is_named(tmp_path):
    error = load_error(str(tmp_path / "nope.toml"), environ=WORK)
    assert error.key == "config file" and "nope.toml" in error.problem
    error = load_error(write(tmp_path, "processes = \n"), environ=WORK)
    assert error.key == "config file" and "not valid TOML" in error.problem


def test_tables_must_be_tables(tmp_path):
    assert load_error(write(tmp_path, "queues = 5\n"), environ=WORK).key == "queues"
    assert load_error(write(tmp_path, "plugins = 5\n"), environ=WORK).key == "plugins"


# -- describe -----------------------------------------------------------------------------


def rows_by_key(settings, environ):
    return {row["key"]: row for row in config.describe(settings, environ)}


def test_describe_masks_secrets_and_reports_sources():
    env = {
        **WORK,
        "VIP_WORKER_SQS_ENDPOINT_URL": "http://admin:hunter2@127.0.0.1:4566",
        "MONGODB_URI": "mongodb://app:s3cretpw@db.internal:27017/vip",
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY",
    }
    settings = config.load(environ=env)
    rows = rows_by_key(settings, env)
    text = repr(config.describe(settings, env))
    for secret in ("hunter2", "s3cretpw", "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"):
        assert secret not in text
    assert rows["sqs_endpoint_url"]["value"] == "http://admin:****@127.0.0.1:4566"
    assert rows["sqs_endpoint_url"]["source"] == "env VIP_WORKER_SQS_ENDPOINT_URL"
    assert rows["mongodb_uri"]["value"] == "mongodb://app:****@db.internal:27017/vip"
    assert rows["aws.AWS_SECRET_ACCESS_KEY"]["source"] == "env AWS_SECRET_ACCESS_KEY"
    # Masked whole: not even a prefix of a secret is shown.
    assert rows["aws.AWS_SECRET_ACCESS_KEY"]["value"] == "****"
    assert rows["aws.AWS_ACCESS_KEY_ID"]["value"] == "****"
    assert rows["processes"] == {"key": "processes", "value": 2, "source": "default"}
    assert rows["queues.work.url"]["value"] == URL + "work"


def test_mask_shows_no_character_of_a_secret_looking_value():
    assert config.mask("plugins.articles.api_token", "tok-1234567890") == "****"
    assert config.mask("password", "short") == "****"
    assert config.mask("mode", "fast") == "fast"
    assert config.mask("endpoint", "http://u:pw1@h/") == "http://u:****@h/"


def test_a_bad_url_error_does_not_echo_its_password():
    error = load_error(environ={**WORK, "VIP_WORKER_SQS_ENDPOINT_URL": "ftp://u:pw123@h/"})
    assert error.key == "sqs_endpoint_url"
    assert "pw123" not in str(error)


def test_a_secret_setting_without_a_password_in_it_is_masked_whole():
    env = {**WORK, "MONGODB_URI": "mongodb+srv://cluster0.example.net/?authMechanism=X509"}
    rows = rows_by_key(config.load(environ=env), env)
    assert rows["mongodb_uri"] == {"key": "mongodb_uri", "value": "****",
                                   "source": "env MONGODB_URI"}


def test_a_retry_backoff_as_long_as_the_lifelines_stale_age_is_refused():
    env = {"VIP_WORKER_QUEUE_WORK_URL": "https://sqs.example/q/work",
           "VIP_WORKER_QUEUE_WORK_RETRY_BACKOFF_MAX_S": "3600",
           "VIP_WORKER_LIFELINE_QUEUED_AFTER_S": "3600"}
    error = load_error(environ=env)
    assert error.key == "queues.work.retry_backoff_max_s"
    assert "lifeline_queued_after_s" in str(error)
    # With the lifeline off nothing re-sends a waiting job.
    config.load(environ={**env, "VIP_WORKER_LIFELINE_INTERVAL_S": "0"})
    config.load(environ={**env, "VIP_WORKER_QUEUE_WORK_RETRY_BACKOFF_MAX_S": "3599"})
