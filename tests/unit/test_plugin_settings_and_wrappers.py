"""Per-plugin settings (vip_worker_register_settings) and handler wrappers."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest

from tests.fakes import make_settings
from vip_worker.errors import ConfigError, PluginError
from vip_worker.plugins import load_plugins

SETTINGS_PLUGIN = """
from vip_worker import hookimpl

@hookimpl
def vip_worker_register_settings(declare):
    declare("model", "small", help="which model")
    declare("max_words", 2000)
    declare("enabled", True)
    declare("ratio", 0.5, parse=lambda v: float(v) if 0 <= float(v) <= 1 else 1 / 0)

@hookimpl
def vip_worker_register_handlers(register):
    register("shop", lambda message, ctx: None)
"""


def write(root: Path, name: str, code: str) -> None:
    (root / f"{name}.py").write_text(textwrap.dedent(code))


def load(root: Path, env=None, **worker):
    return load_plugins(make_settings(plugin_dirs=[str(root)], plugin_env=env or {}, **worker))


def test_declared_defaults_then_file_then_environment(tmp_path):
    write(tmp_path, "shop", SETTINGS_PLUGIN)
    assert load(tmp_path).registry.plugin_settings["shop"] == {
        "model": "small", "max_words": 2000, "enabled": True, "ratio": 0.5}
    loaded = load(tmp_path, plugin_settings={"shop": {"model": "large", "max_words": 10}},
                  env={"VIP_WORKER_PLUGINS_SHOP_MAX_WORDS": "99",
                       "VIP_WORKER_PLUGINS_SHOP_ENABLED": "false"})
    assert loaded.registry.plugin_settings["shop"] == {
        "model": "large", "max_words": 99, "enabled": False, "ratio": 0.5}


def test_an_undeclared_key_names_the_plugin_and_the_key(tmp_path):
    write(tmp_path, "shop", SETTINGS_PLUGIN)
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, plugin_settings={"shop": {"modle": "x"}})
    assert raised.value.key == "plugins.shop.modle"
    assert "declared: enabled, max_words, model, ratio" in str(raised.value)


def test_an_invalid_value_names_the_key_and_its_source(tmp_path):
    write(tmp_path, "shop", SETTINGS_PLUGIN)
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, env={"VIP_WORKER_PLUGINS_SHOP_MAX_WORDS": "many"})
    assert raised.value.key == "plugins.shop.max_words"
    assert raised.value.source == "env VIP_WORKER_PLUGINS_SHOP_MAX_WORDS"


def test_an_unknown_plugin_environment_variable_is_an_error(tmp_path):
    write(tmp_path, "shop", SETTINGS_PLUGIN)
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, env={"VIP_WORKER_PLUGINS_SHOP_COLOUR": "red"})
    assert raised.value.key == "VIP_WORKER_PLUGINS_SHOP_COLOUR"


def test_a_setting_declared_twice_is_a_plugin_error(tmp_path):
    write(tmp_path, "dup", """
        from vip_worker import hookimpl
        @hookimpl
        def vip_worker_register_settings(declare):
            declare("a", 1)
            declare("a", 2)
    """)
    with pytest.raises(PluginError) as raised:
        load(tmp_path)
    assert raised.value.plugin == "dup" and "declared twice" in str(raised.value)


WRAPPER = """
from vip_worker import hookimpl

@hookimpl{marker}
def vip_worker_wrap_handler(handler):
    inner = handler.fn
    if handler.is_async:
        async def wrapped(message, ctx):
            ctx.append("{name}>")
            await inner(message, ctx)
            ctx.append("<{name}")
    else:
        def wrapped(message, ctx):
            ctx.append("{name}>")
            inner(message, ctx)
            ctx.append("<{name}")
    return wrapped
"""

HANDLERS = """
from vip_worker import hookimpl

def sync_handler(message, ctx):
    ctx.append("sync")

async def async_handler(message, ctx):
    ctx.append("async")

@hookimpl
def vip_worker_register_handlers(register):
    register("s", sync_handler)
    register("a", async_handler)
"""


def test_wrappers_wrap_sync_and_async_handlers_in_a_defined_order(tmp_path):
    write(tmp_path, "handlers", HANDLERS)
    write(tmp_path, "outer", WRAPPER.format(name="outer", marker="(tryfirst=True)"))
    write(tmp_path, "inner", WRAPPER.format(name="inner", marker="(trylast=True)"))
    registry = load(tmp_path).registry
    calls: list[str] = []
    registry.get("s").fn(None, calls)
    assert calls == ["outer>", "inner>", "sync", "<inner", "<outer"]
    calls.clear()
    assert registry.get("a").is_async
    asyncio.run(registry.get("a").fn(None, calls))
    assert calls == ["outer>", "inner>", "async", "<inner", "<outer"]


def test_without_wrappers_the_handler_is_the_plugins_own_function(tmp_path):
    write(tmp_path, "handlers", HANDLERS)
    registry = load(tmp_path).registry
    assert registry.get("s").fn.__name__ == "sync_handler"  # nothing on the per-message path


def test_a_wrapper_that_changes_the_handler_kind_is_refused(tmp_path):
    write(tmp_path, "handlers", HANDLERS)
    write(tmp_path, "bad", """
        from vip_worker import hookimpl
        @hookimpl
        def vip_worker_wrap_handler(handler):
            return lambda message, ctx: None
    """)
    with pytest.raises(PluginError) as raised:
        load(tmp_path)
    assert raised.value.plugin == "bad" and "async callable for 'a'" in str(raised.value)
