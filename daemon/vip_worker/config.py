"""Every setting, declared once: default, environment name, help and validation.

Sources, later ones win: the declared default, the config file (TOML, from
``--config`` or ``VIP_WORKER_CONFIG``), then the environment. Each top-level
setting ``name`` is overridden by ``VIP_WORKER_<NAME>``; a queue setting by
``VIP_WORKER_QUEUE_<QUEUE>_<NAME>``. The names the existing app already uses
(``ARTICLES_QUEUE_URL``, ``IMAGES_QUEUE_URL``, ``AWS_REGION``,
``AWS_ENDPOINT_URL_SQS``, ``AWS_ENDPOINT_URL``) work as they are.

The spine's settings are declared here. Other packages declare theirs as a tuple of
``Setting`` behind an entry point of the group ``vip_worker.settings`` (the job store's
and the pipeline's: ``vip_worker/store/settings.py``, ``vip_worker/pipeline/settings.py``),
so this module finds them without importing those packages; they are read the same way.

This is the only module that reads the environment; ``load()`` takes it as an
argument so tests pass their own.

Over 400 lines because the parsers, the spine's own declarations, loading (with the
settings other packages declare) and showing settings are one vocabulary.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from vip_worker.errors import ConfigError
from vip_worker.sqs.limits import MAX_VISIBILITY_S, MAX_WAIT_S

ENV_PREFIX = "VIP_WORKER_"
QUEUE_ENV_PREFIX = "VIP_WORKER_QUEUE_"
PLUGINS_ENV_PREFIX = "VIP_WORKER_PLUGINS_"
CONFIG_ENV = "VIP_WORKER_CONFIG"
# Queues the existing app names through <NAME>_QUEUE_URL without any config file.
APP_QUEUES = ("articles", "images")
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def default_plugin_dirs() -> list[str]:
    """The project's own ``plugins/`` directory, when running from a checkout."""
    here = Path(__file__).resolve().parent  # daemon/vip_worker
    project = here.parent.parent / "plugins"
    return [str(project)] if project.is_dir() else []


# -- value parsers: each takes a file value (any type) or an env string ----------


def integer(lo: int, hi: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError(f"must be an integer in {lo}..{hi}, got {value!r}")
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"must be an integer in {lo}..{hi}, got {value!r}") from None
        if isinstance(value, float) and value != number:
            raise ValueError(f"must be an integer in {lo}..{hi}, got {value!r}")
        if not lo <= number <= hi:
            raise ValueError(f"must be in {lo}..{hi}, got {number}")
        return number

    parse.kind = f"integer {lo}..{hi}"
    return parse


def number(lo: float, hi: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError(f"must be a number in {lo}..{hi}, got {value!r}")
        try:
            result = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"must be a number in {lo}..{hi}, got {value!r}") from None
        if not lo <= result <= hi:
            raise ValueError(f"must be in {lo}..{hi}, got {result}")
        return result

    parse.kind = f"number {lo}..{hi}"
    return parse


def string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {value!r}")
    return value


string.kind = "string"


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"must be true or false, got {value!r}")


boolean.kind = "boolean"


def identifier(value: Any) -> str:
    """A collection / table name: letters, digits and underscores, not starting with a digit."""
    text = string(value)
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$", text):
        raise ValueError(f"must be a name of letters, digits and _, got {text!r}")
    return text


identifier.kind = "name"


def choice(*options: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).upper() if options[0].isupper() else str(value)
        if text not in options:
            raise ValueError(f"must be one of {', '.join(options)}, got {value!r}")
        return text

    parse.kind = " | ".join(options)
    return parse


def url(value: Any) -> str:
    text = string(value)
    if text and urlsplit(text).scheme not in ("http", "https"):
        raise ValueError(f"must be an http(s) URL, got {mask_url(text)!r}")
    return text


url.kind = "URL"


def str_list(value: Any) -> list[str]:
    """A TOML list of strings, or a comma-separated env string."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"must be a list of strings, got {value!r}")


str_list.kind = "list of strings (comma-separated in the environment)"


def type_limits(value: Any) -> dict[str, int]:
    """``{"images": 2}`` in TOML, or ``images=2,articles=4`` in the environment."""
    if isinstance(value, str):
        pairs = {}
        for part in filter(None, (p.strip() for p in value.split(","))):
            name, sep, limit = part.partition("=")
            if not sep:
                raise ValueError(f"expected TYPE=N pairs, got {part!r}")
            pairs[name.strip()] = limit.strip()
        value = pairs
    if not isinstance(value, dict):
        raise ValueError(f"must be a table of type = limit, got {value!r}")
    parse = integer(1, 10000)
    return {str(k): parse(v) for k, v in value.items()}


type_limits.kind = "table TYPE = N (TYPE=N,... in the environment)"


# -- declarations -------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    parse: Callable[[Any], Any]
    help: str
    env: tuple[str, ...] = ()  # other environment names accepted, lowest priority first
    secret: bool = False


SPINE_SETTINGS: tuple[Setting, ...] = (
    Setting("processes", 2, integer(1, 256), "Poller processes the master keeps alive."),
    Setting(
        "concurrency", 10, integer(1, 10000),
        "Handlers one poller runs at once; a receive asks only for free slots.",
    ),
    Setting(
        "type_limits", {}, type_limits,
        "Optional per-message-type limit of concurrent handlers in one poller.",
    ),
    Setting(
        "grace_period_s", 30.0, number(0, 43200),
        "On SIGTERM, how long running handlers may finish before they are handed back.",
    ),
    Setting(
        "cancel_grace_s", 30.0, number(0, 43200),
        "How long a blocking handler may go on after its job's cancellation before it is "
        "abandoned.",
    ),
    Setting(
        "plugin_dirs", None, str_list,
        "Directories whose packages are loaded as plugins (default: the project's plugins/).",
    ),
    Setting("disabled_plugins", [], str_list, "Plugin names not to load."),
    Setting(
        "region", "us-east-1", string, "AWS region of the queues.",
        env=("AWS_DEFAULT_REGION", "AWS_REGION"),
    ),
    Setting(
        "sqs_endpoint_url", "", url,
        "SQS endpoint (empty: boto3's default for the region). Point it at 127.0.0.1 for dev.",
        env=("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SQS"),
    ),
    Setting(
        "sqs_transport", "wire", choice("wire", "boto3"),
        "How pollers call SQS: wire (the hot-path calls made on the event loop; boto3 for "
        "the rest) or boto3 (every call through boto3 in a thread).",
    ),
    Setting("log_level", "INFO", choice("DEBUG", "INFO", "WARNING", "ERROR"), "Log level."),
    Setting("log_file", "", string, "Write the JSON log here instead of stdout."),
    Setting(
        "max_messages_per_poller", 0, integer(0, 10**9),
        "Recycle a poller gracefully after this many messages (0: never).",
    ),
    Setting(
        "max_rss_mb", 0, integer(0, 10**6),
        "Recycle a poller gracefully when its resident memory exceeds this (0: never).",
    ),
    Setting(
        "poller_timeout_s", 30.0, number(2, 3600),
        "A poller whose event loop has not ticked for this long is dumped and replaced.",
    ),
    Setting(
        "respawn_backoff_max_s", 30.0, number(0.1, 3600),
        "Longest wait before replacing a poller that keeps dying at start.",
    ),
    Setting(
        "crash_loop_threshold", 5, integer(1, 1000),
        "Consecutive early poller deaths reported as a crash loop.",
    ),
)

# Running it as a service: runtime state, health, metrics, spot interruptions, the lifeline.
OPERATIONS_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "runtime_dir", "", string,
        "Where the master writes status.json for `vip-worker status`. Empty: "
        "$RUNTIME_DIRECTORY (systemd's RuntimeDirectory=) or <state_dir>/run.",
    ),
    Setting("health_port", 0, integer(0, 65535),
            "Port of the loopback health endpoint (/live, /ready, /metrics); 0: off."),
    Setting("health_host", "127.0.0.1", string, "Address the health endpoint binds to."),
    Setting("metrics_interval_s", 60.0, number(0, 3600),
            "Seconds between CloudWatch Embedded Metric Format lines in the log; 0: off."),
    Setting("metrics_namespace", "VipWorker", string, "CloudWatch namespace of the metrics."),
    Setting("spot_watch", False, boolean,
            "Watch the instance metadata service for a spot interruption or an Auto Scaling "
            "termination notice, and stop gracefully in time."),
    Setting("imds_endpoint", "http://169.254.169.254", url,
            "The instance metadata service (point it at a fake on 127.0.0.1 in tests).",
            env=("AWS_EC2_METADATA_SERVICE_ENDPOINT",)),
    Setting("spot_poll_interval_s", 5.0, number(0.1, 60),
            "How often the spot watcher asks the metadata service."),
    Setting("lifeline_interval_s", 30.0, number(0, 86400),
            "Seconds between sweeps for orphaned jobs (on average, jittered), run by "
            "poller 0 of each daemon; 0: off."),
    Setting("lifeline_queued_after_s", 3600.0, number(60, 1209600),
            "A queued job unclaimed this long is re-sent once its queue is empty, or "
            "its backlog no more than poller 0 drained since the job was queued."),
    Setting("lifeline_lease_grace_s", 60.0, number(0, 86400),
            "A lease counts as expired for the sweep only this long after it ran out (the "
            "holder's clock may run behind, its renewals may be late); a job rescued from "
            "it is then held from other claims until its lease ran out twice this long ago."),
    Setting("lifeline_batch", 100, integer(1, 10000),
            "Most jobs each of a sweep's two queries returns."),
)

QUEUE_SETTINGS: tuple[Setting, ...] = (
    Setting("url", "", url, "The queue's URL (required)."),
    Setting(
        "dlq_url", "", url,
        "Dead-letter queue URL (default: the target of the queue's RedrivePolicy).",
    ),
    Setting(
        "visibility_timeout_s", 60, integer(2, MAX_VISIBILITY_S),
        "Visibility asked on receive; heartbeats extend it while a handler runs.",
    ),
    Setting("wait_time_s", 20, integer(0, MAX_WAIT_S), "Long-poll wait of each receive."),
    Setting(
        "max_attempts", 5, integer(1, 1000),
        "Deliveries before a failing message is dead-lettered.",
    ),
    Setting(
        "max_job_time_s", 1800.0, number(1, MAX_VISIBILITY_S - 300),
        "A handler running longer is abandoned and its message retried.",
    ),
    Setting(
        "concurrency", 0, integer(0, 10000),
        "Handlers of this queue one poller runs at once (0: only the poller's limit).",
    ),
    Setting("retry_backoff_base_s", 10.0, number(0, MAX_VISIBILITY_S), "First retry delay."),
    Setting(
        "retry_backoff_max_s", 900.0, number(0, MAX_VISIBILITY_S), "Longest retry delay.",
    ),
    Setting(
        "track_jobs", True, boolean,
        "The job store is the ledger of this queue's jobs: the daemon claims a message's "
        "jobId before its handler starts, counts attempts and settles the job. Off for "
        "queues whose messages are not jobs.",
    ),
)

# Declared here; the rest of the top-level settings come from ``declared_settings()``.
CORE_SETTINGS = SPINE_SETTINGS + OPERATIONS_SETTINGS
QUEUE_BY_NAME = {s.name: s for s in QUEUE_SETTINGS}
TOP_LEVEL_TABLES = ("queues", "plugins")
SETTINGS_ENTRY_POINT_GROUP = "vip_worker.settings"


def collect_declared(entry_points: Iterable[importlib.metadata.EntryPoint]
                     ) -> tuple[Setting, ...]:
    """The settings the entry points declare, in their order.

    Raises ``ConfigError`` for an entry point that does not load or is not a tuple of
    ``Setting``, and for a name declared twice (naming both declarations) or unfit for
    a setting.
    """
    origin = {s.name: "vip_worker.config" for s in CORE_SETTINGS}
    found: list[Setting] = []
    for ep in entry_points:
        where = f"entry point {ep.name} = {ep.value}"
        try:
            declared = ep.load()
        except Exception as exc:  # noqa: BLE001 - any import failure is a boot error
            raise ConfigError(ep.name, f"{where} does not load: "
                                       f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(declared, tuple | list) or not all(
                isinstance(s, Setting) for s in declared):
            raise ConfigError(ep.name, f"{where} is not a tuple of vip_worker.config.Setting")
        for setting in declared:
            if not NAME_RE.match(setting.name) or hasattr(Settings, setting.name) \
                    or setting.name in TOP_LEVEL_TABLES:
                raise ConfigError(setting.name, f"not a usable setting name ({where})")
            if setting.name in origin:
                raise ConfigError(setting.name, f"declared twice: by {origin[setting.name]} "
                                                f"and by {where}")
            origin[setting.name] = where
            found.append(setting)
    return tuple(found)


@functools.cache
def declared_settings() -> tuple[Setting, ...]:
    """The top-level settings declared through ``vip_worker.settings`` entry points.

    Read once per process, like the plugins' entry points: the installed distributions
    do not change under a running process.
    """
    return collect_declared(importlib.metadata.entry_points(group=SETTINGS_ENTRY_POINT_GROUP))


def worker_settings() -> tuple[Setting, ...]:
    """Every top-level setting: this module's, then the declared ones."""
    return CORE_SETTINGS + declared_settings()


def worker_by_name() -> dict[str, Setting]:
    return {s.name: s for s in worker_settings()}


def __getattr__(name: str) -> Any:
    # WORKER_SETTINGS and WORKER_BY_NAME were constants before settings could be declared
    # elsewhere; they stay readable, computed on first use (not at import).
    if name == "WORKER_SETTINGS":
        return worker_settings()
    if name == "WORKER_BY_NAME":
        return worker_by_name()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- the loaded settings --------------------------------------------------------


@dataclass(frozen=True)
class QueueSettings:
    name: str
    url: str
    dlq_url: str
    visibility_timeout_s: int
    wait_time_s: int
    max_attempts: int
    max_job_time_s: float
    concurrency: int
    retry_backoff_base_s: float
    retry_backoff_max_s: float
    track_jobs: bool = True

    @property
    def fifo(self) -> bool:
        return self.url.endswith(".fifo")


@dataclass(frozen=True)
class Settings:
    processes: int
    concurrency: int
    type_limits: dict[str, int]
    grace_period_s: float
    cancel_grace_s: float
    plugin_dirs: list[str]
    disabled_plugins: list[str]
    region: str
    sqs_endpoint_url: str
    sqs_transport: str
    log_level: str
    log_file: str
    max_messages_per_poller: int
    max_rss_mb: int
    poller_timeout_s: float
    respawn_backoff_max_s: float
    crash_loop_threshold: int
    runtime_dir: str
    health_port: int
    health_host: str
    metrics_interval_s: float
    metrics_namespace: str
    spot_watch: bool
    imds_endpoint: str
    spot_poll_interval_s: float
    lifeline_interval_s: float
    lifeline_queued_after_s: float
    lifeline_lease_grace_s: float
    lifeline_batch: int
    # The values of the settings declared outside this module (``declared_settings()``),
    # read as attributes like the others: ``settings.fastapi_url``.
    declared: dict[str, Any] = field(default_factory=dict)
    queues: tuple[QueueSettings, ...] = ()
    plugin_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    # VIP_WORKER_PLUGINS_<PLUGIN>_<KEY> variables, validated when plugins load.
    plugin_env: dict[str, str] = field(default_factory=dict)
    config_file: str = ""
    # "key" -> "default" | "file <path>" | "env <NAME>"
    sources: dict[str, str] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        # Called only when no field has the name. Through __dict__, not self.declared,
        # so that copy and pickle (which probe before __init__ ran) cannot recurse.
        declared = self.__dict__.get("declared", {})
        if name in declared:
            return declared[name]
        raise AttributeError(f"{type(self).__name__!r} has no setting {name!r} (declared "
                             f"neither in vip_worker.config nor by a "
                             f"{SETTINGS_ENTRY_POINT_GROUP!r} entry point)")

    def with_values(self, **changes: Any) -> Settings:
        """``dataclasses.replace`` that also takes the declared settings; like it, the
        values are not validated (tests set values out of range on purpose)."""
        names = {f.name for f in dataclasses.fields(self)}
        declared = dict(changes.pop("declared", self.declared))
        for key in [k for k in changes if k not in names]:
            if key not in declared:
                raise TypeError(f"{key!r} is not a setting")
            declared[key] = changes.pop(key)
        return dataclasses.replace(self, declared=declared, **changes)

    def queue(self, name: str) -> QueueSettings:
        for queue in self.queues:
            if queue.name == name:
                return queue
        raise KeyError(name)


def load(
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    require_queues: bool = True,
) -> Settings:
    """Build the effective settings; raise ``ConfigError`` naming the bad key.

    :param config_file: TOML file; ``None`` uses ``VIP_WORKER_CONFIG`` if set.
    :param environ: the environment (default ``os.environ``).
    :param overrides: command-line values (e.g. ``--processes``), highest priority.
    :param require_queues: the daemon needs a queue; the producer and ``jobs``
        commands do not (without one, the producer runs handlers inline).
    """
    env = dict(os.environ if environ is None else environ)
    path = config_file or env.get(CONFIG_ENV) or ""
    doc = read_file(path) if path else {}
    file_src = f"file {path}"

    by_name = worker_by_name()
    for key in doc:
        if key not in by_name and key not in TOP_LEVEL_TABLES:
            raise ConfigError(key, "unknown setting", file_src)
    for name in env:
        if name.startswith(ENV_PREFIX) and name != CONFIG_ENV:
            if name.startswith((QUEUE_ENV_PREFIX, PLUGINS_ENV_PREFIX)):
                continue  # checked per queue below, and per plugin when plugins load
            if name[len(ENV_PREFIX):].lower() not in by_name:
                raise ConfigError(name, "unknown setting", "environment")

    sources: dict[str, str] = {}
    values: dict[str, Any] = {}
    for setting in by_name.values():
        candidates = [(setting.default, "default")]
        if setting.name in doc:
            candidates.append((doc[setting.name], file_src))
        for name in (*setting.env, ENV_PREFIX + setting.name.upper()):
            if name in env:
                candidates.append((env[name], f"env {name}"))
        if overrides and overrides.get(setting.name) is not None:
            candidates.append((overrides[setting.name], "command line"))
        values[setting.name], sources[setting.name] = resolve(setting, candidates)
    if values["plugin_dirs"] is None:
        values["plugin_dirs"] = default_plugin_dirs()
    if sources["plugin_dirs"].startswith("file "):
        # Relative to the config file, as a reader of the file expects.
        base = Path(path).resolve().parent
        values["plugin_dirs"] = [str(base / d) for d in values["plugin_dirs"]]
    else:
        values["plugin_dirs"] = [os.path.abspath(d) for d in values["plugin_dirs"]]

    queues = load_queues(doc.get("queues", {}), env, file_src, sources)
    if not queues and require_queues:
        raise ConfigError(
            "queues",
            "no queue configured: set ARTICLES_QUEUE_URL / IMAGES_QUEUE_URL, "
            "VIP_WORKER_QUEUE_<NAME>_URL, or a [queues.<name>] table",
        )
    for queue in queues:
        # A job waiting out its retry delay would look lost to the lifeline's sweep.
        if values["lifeline_interval_s"] and \
                queue.retry_backoff_max_s >= values["lifeline_queued_after_s"]:
            raise ConfigError(
                f"queues.{queue.name}.retry_backoff_max_s",
                f"must be < lifeline_queued_after_s ({values['lifeline_queued_after_s']:g}): "
                "the lifeline would re-send a job still waiting out its retry delay",
                sources.get(f"queues.{queue.name}.retry_backoff_max_s"))
    plugin_settings = doc.get("plugins", {})
    if not isinstance(plugin_settings, dict) or not all(
        isinstance(v, dict) for v in plugin_settings.values()
    ):
        raise ConfigError("plugins", "must be tables [plugins.<name>]", file_src)
    core = {s.name for s in CORE_SETTINGS}
    return Settings(
        **{k: v for k, v in values.items() if k in core},
        declared={k: v for k, v in values.items() if k not in core},
        queues=tuple(queues),
        plugin_settings=plugin_settings,
        plugin_env={k: v for k, v in env.items() if k.startswith(PLUGINS_ENV_PREFIX)},
        config_file=path,
        sources=sources,
    )


def read_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("config file", f"{path} does not exist") from None
    except PermissionError:
        raise ConfigError("config file", f"{path} is not readable") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config file", f"{path} is not valid TOML: {exc}") from None


def resolve(setting: Setting, candidates: list[tuple[Any, str]]) -> tuple[Any, str]:
    value, source = candidates[-1]
    if source == "default":
        return value, source
    try:
        return setting.parse(value), source
    except ValueError as exc:
        raise ConfigError(setting.name, str(exc), source) from None


def load_queues(
    tables: Any, env: Mapping[str, str], file_src: str, sources: dict[str, str]
) -> list[QueueSettings]:
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        raise ConfigError("queues", "must be tables [queues.<name>]", file_src)
    names = set(tables)
    names.update(n for n in APP_QUEUES if f"{n.upper()}_QUEUE_URL" in env)
    for key in env:
        if key.startswith(QUEUE_ENV_PREFIX) and key.endswith("_URL") and not key.endswith(
            "_DLQ_URL"
        ):
            names.add(key[len(QUEUE_ENV_PREFIX):-len("_URL")].lower())
    for key in env:
        if key.startswith(QUEUE_ENV_PREFIX):
            rest = key[len(QUEUE_ENV_PREFIX):].lower()
            if not any(rest.startswith(n + "_") and rest[len(n) + 1:] in QUEUE_BY_NAME
                       for n in names):
                raise ConfigError(key, "unknown queue setting", "environment")

    queues = []
    for name in sorted(names):
        if not NAME_RE.match(name):
            raise ConfigError(f"queues.{name}", "queue names are lowercase [a-z0-9_]", file_src)
        table = tables.get(name, {})
        for key in table:
            if key not in QUEUE_BY_NAME:
                raise ConfigError(f"queues.{name}.{key}", "unknown queue setting", file_src)
        values = {}
        for setting in QUEUE_SETTINGS:
            candidates = [(setting.default, "default")]
            if setting.name in table:
                candidates.append((table[setting.name], file_src))
            legacy = {"url": f"{name.upper()}_QUEUE_URL", "dlq_url": f"{name.upper()}_DLQ_URL"}
            for env_name in (legacy.get(setting.name), f"{QUEUE_ENV_PREFIX}{name.upper()}_"
                             f"{setting.name.upper()}"):
                if env_name and env_name in env:
                    candidates.append((env[env_name], f"env {env_name}"))
            key = f"queues.{name}.{setting.name}"
            try:
                values[setting.name], sources[key] = resolve(setting, candidates)
            except ConfigError as exc:
                raise ConfigError(key, exc.problem, exc.source) from None
        if not values["url"]:
            raise ConfigError(
                f"queues.{name}.url", f"required (or set {name.upper()}_QUEUE_URL)", file_src
            )
        queue = QueueSettings(name=name, **values)
        if queue.retry_backoff_max_s < queue.retry_backoff_base_s:
            raise ConfigError(
                f"queues.{name}.retry_backoff_max_s", "must be >= retry_backoff_base_s"
            )
        queues.append(queue)
    return queues


# -- showing settings -------------------------------------------------------------

SECRET_WORDS = ("password", "secret", "token", "key")


def mask_url(text: str) -> str:
    """``https://user:pw@host/x`` -> ``https://user:****@host/x``; other text unchanged."""
    try:
        parts = urlsplit(text)
    except ValueError:
        return text
    if parts.password is None:
        return text
    netloc = parts.netloc.replace(f":{parts.password}@", ":****@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def mask(key: str, value: Any) -> Any:
    """A secret-looking key's value becomes ``****`` whole (no character of it shown);
    any other string has its URL password masked."""
    if isinstance(value, str):
        if any(word in key.lower() for word in SECRET_WORDS) and value:
            return "****"
        return mask_url(value)
    return value


SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


def secrets(settings: Settings, environ: Mapping[str, str] | None = None) -> list[str]:
    """Values the logs must never show: secret settings, URL passwords, AWS secrets."""
    env = os.environ if environ is None else environ
    found = [env[name] for name in SECRET_ENV if env.get(name)]
    for setting in worker_settings():
        value = getattr(settings, setting.name)
        if not isinstance(value, str) or not value:
            continue
        if setting.secret:
            found.append(value)
        try:
            password = urlsplit(value).password
        except ValueError:
            password = None
        if password:
            found.append(password)
    for queue in settings.queues:
        for value in (queue.url, queue.dlq_url):
            password = urlsplit(value).password if value else None
            if password:
                found.append(password)
    return found


def mask_secret(value: Any) -> Any:
    """A secret setting: a URL keeps its shape with the password masked, else all masked."""
    if not value:
        return value
    masked = mask_url(str(value))
    return masked if masked != value else "****"


def describe(settings: Settings, environ: Mapping[str, str] | None = None) -> list[dict]:
    """Rows of (key, value, source) for ``vip-worker config``, secrets masked.

    The plugins' settings are not among them: their declarations come from the plugins
    (``vip_worker.plugins.settings.describe``).
    """
    env = os.environ if environ is None else environ
    rows = []
    for setting in worker_settings():
        value = getattr(settings, setting.name)
        shown = mask_secret(value) if setting.secret else mask(setting.name, value)
        rows.append({"key": setting.name, "value": shown,
                     "source": settings.sources.get(setting.name, "default")})
    for queue in settings.queues:
        for setting in QUEUE_SETTINGS:
            key = f"queues.{queue.name}.{setting.name}"
            rows.append({"key": key, "value": mask(key, getattr(queue, setting.name)),
                         "source": settings.sources.get(key, "default")})
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE", "AWS_EC2_METADATA_DISABLED"):
        if name in env:
            rows.append({"key": f"aws.{name}", "value": mask(name, env[name]),
                         "source": f"env {name}"})
    return rows
