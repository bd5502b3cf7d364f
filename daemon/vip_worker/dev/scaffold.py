"""``vip-worker new-plugin NAME [--dir DIR]``: a plugin package that works as generated.

It writes ``DIR/NAME/``: the handler for message type NAME with its declared
settings, a ``settings.example.toml`` with the plugin's ``[plugins.NAME]`` table,
and ``tests/test_NAME.py`` (pytest, using ``vip_worker.testing``) that passes as
generated. Nothing is overwritten.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from vip_worker import exitcodes

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

PLUGIN = '''"""The {name} plugin: handles messages of type ``{name}``.

Messages arrive in the app's message format (jobId, userId, type, timestamp, payload).
Delivery is at least once: the handler must be idempotent (doing it twice must
leave the same result as doing it once).
"""

from vip_worker import PermanentError, hookimpl

MESSAGE_TYPE = "{name}"


def handle(message, ctx):
    """Run one job. Raise PermanentError for input that can never work;
    any other exception is retried with backoff."""
    text = message.payload.get("text")
    if not isinstance(text, str) or not text.strip():
        raise PermanentError("payload.text is required")
    if len(text) > ctx.plugin_settings["max_chars"]:
        raise PermanentError(f"payload.text is longer than {{ctx.plugin_settings['max_chars']}}")
    ctx.log.info("{name}.handled", extra={{"chars": len(text)}})


@hookimpl
def vip_worker_register_settings(declare):
    declare("max_chars", 10000, help="longest payload.text accepted")


@hookimpl
def vip_worker_register_handlers(register):
    register(MESSAGE_TYPE, handle)
'''

TEST = '''"""Tests of the {name} plugin (run: python -m pytest {test_path})."""

import importlib.util
from pathlib import Path

from vip_worker.testing import make_message, run_handler

SETTINGS = {{"max_chars": 10000}}


def load_plugin():
    init = Path(__file__).resolve().parents[1] / "__init__.py"
    spec = importlib.util.spec_from_file_location("{name}_plugin_under_test", init)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


plugin = load_plugin()


def test_handles_a_message():
    outcome = run_handler(plugin.handle, make_message("{name}", {{"text": "hello"}}),
                          plugin_settings=SETTINGS)
    assert outcome.succeeded


def test_refuses_a_message_without_text():
    outcome = run_handler(plugin.handle, make_message("{name}", {{}}), plugin_settings=SETTINGS)
    assert outcome.dead_lettered and "payload.text is required" in outcome.reason


def test_through_a_real_poller_on_local_sqs(vip_worker_poller):
    messages = [make_message("{name}", {{"text": "hello"}}), make_message("{name}", {{}})]
    run = vip_worker_poller({{"{name}": plugin.handle}}, messages, plugin_settings=SETTINGS)
    assert run.succeeded == [messages[0].job_id]
    assert list(run.dead_lettered) == [messages[1].job_id]
'''

SETTINGS_EXAMPLE = '''# Add to the daemon's config file (vip-worker.toml). Every key is optional;
# VIP_WORKER_PLUGINS_{upper}_<KEY> overrides it from the environment.
[plugins.{name}]
max_chars = 10000
'''


def create(name: str, directory: str) -> Path:
    """Write the package; raise ValueError for a bad name or an existing directory."""
    if not NAME_RE.match(name):
        raise ValueError(f"plugin name {name!r} must be lowercase [a-z0-9_], starting "
                         f"with a letter")
    root = Path(directory) / name
    if root.exists():
        raise ValueError(f"{root} exists already; nothing was written")
    (root / "tests").mkdir(parents=True)
    test_path = root / "tests" / f"test_{name}.py"
    (root / "__init__.py").write_text(PLUGIN.format(name=name))
    test_path.write_text(TEST.format(name=name, test_path=test_path))
    (root / "settings.example.toml").write_text(
        SETTINGS_EXAMPLE.format(name=name, upper=name.upper()))
    return root


def main(args) -> int:
    from vip_worker.dev.stack import vip_worker_command

    try:
        root = create(args.name, args.dir)
    except (ValueError, OSError) as exc:
        print(f"vip-worker: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    print(f"created {root}/__init__.py, {root}/settings.example.toml and "
          f"{root}/tests/test_{args.name}.py\n"
          f"next: {vip_worker_command(program='python')} -m pytest {root}/tests   then   "
          f"{vip_worker_command()} plugins")
    return exitcodes.OK
