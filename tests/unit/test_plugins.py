"""Loading plugins from directories, and the handler registry: every mistake fails at boot."""

from __future__ import annotations

import dataclasses
import sys
import textwrap
from pathlib import Path

import pytest

from tests.fakes import make_settings
from vip_worker.errors import ConfigError, PluginError
from vip_worker.plugins.manager import NAMESPACE, discover, load_plugins
from vip_worker.plugins.registry import HandlerRegistry

OK = """
from vip_worker import hookimpl

def handle(message, ctx):
    return None

async def handle_async(message, ctx):
    return None

@hookimpl
def vip_worker_register_handlers(register):
    register("{name}", handle)
    register("{name}_async", handle_async)
"""


@pytest.fixture(autouse=True)
def forget_plugin_modules():
    """Plugins are imported as vip_worker_plugins.<name>: do not leak them between tests."""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name == NAMESPACE or name.startswith(NAMESPACE + "."):
            del sys.modules[name]


def write_plugin(root: Path, name: str, code: str = OK, **files: str) -> Path:
    package = root / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(code).replace("{name}", name))
    for filename, text in files.items():
        (package / f"{filename}.py").write_text(textwrap.dedent(text))
    return package


def load(root: Path, **worker):
    return load_plugins(make_settings(plugin_dirs=[str(root)], **worker))


def plugin_error(root: Path, **worker) -> PluginError:
    with pytest.raises(PluginError) as raised:
        load(root, **worker)
    return raised.value


def test_a_good_plugin_lists_its_types(tmp_path):
    write_plugin(tmp_path, "alpha")
    (tmp_path / "beta.py").write_text(OK.replace("{name}", "beta"))
    loaded = load(tmp_path)
    assert [(i.name, i.types) for i in loaded.infos] == [
        ("alpha", ["alpha", "alpha_async"]), ("beta", ["beta", "beta_async"])]
    assert loaded.infos[0].origin == str(tmp_path / "alpha")
    handler = loaded.registry.get("alpha_async")
    assert (handler.plugin, handler.is_async) == ("alpha", True)
    assert loaded.registry.get("alpha").is_async is False
    assert sys.modules[f"{NAMESPACE}.alpha"].handle is loaded.registry.get("alpha").fn


def test_private_entries_and_non_python_files_are_not_plugins(tmp_path):
    write_plugin(tmp_path, "_helpers")
    (tmp_path / ".hidden.py").write_text("raise ImportError")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "data").mkdir()
    assert discover([str(tmp_path)]) == []


def test_a_plugin_dir_that_does_not_exist_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as raised:
        load(tmp_path / "missing")
    assert raised.value.key == "plugin_dirs"


def test_a_plugin_that_raises_on_import_is_named_with_its_file(tmp_path):
    write_plugin(tmp_path, "alpha")
    package = write_plugin(tmp_path, "broken", "import os\nraise ImportError('no module foo')\n")
    error = plugin_error(tmp_path)
    assert error.plugin == "broken"
    assert "ImportError: no module foo" in error.problem
    assert f"{package / '__init__.py'}:2" in error.problem
    assert f"{NAMESPACE}.broken" not in sys.modules


def test_a_syntax_error_is_named_with_file_and_line(tmp_path):
    package = write_plugin(tmp_path, "typo", "x = 1\ndef f(:\n    pass\n")
    error = plugin_error(tmp_path)
    assert error.plugin == "typo"
    assert "SyntaxError" in error.problem
    assert f"{package / '__init__.py'}:2" in error.problem


def test_a_type_registered_by_two_plugins_names_both(tmp_path):
    write_plugin(tmp_path, "first", OK.replace('"{name}"', '"shared"'))
    write_plugin(tmp_path, "second", OK.replace('"{name}"', '"shared"'))
    error = plugin_error(tmp_path)
    assert error.plugin == "second"
    assert "'shared'" in error.problem and "'first'" in error.problem


@pytest.mark.parametrize("marker", ["@hookimpl\n", ""])
def test_a_misspelled_hook_is_refused(tmp_path, marker):
    write_plugin(tmp_path, "oops", f"""
from vip_worker import hookimpl

{marker}def vip_worker_register_handler(register):
    register("oops", lambda message, ctx: None)
""")
    error = plugin_error(tmp_path)
    assert error.plugin == "oops"
    assert "'vip_worker_register_handler' is not a vip-worker hook" in error.problem


def test_a_hook_without_hookimpl_is_refused(tmp_path):
    write_plugin(tmp_path, "nomark", """
def vip_worker_register_handlers(register):
    register("nomark", lambda message, ctx: None)
""")
    error = plugin_error(tmp_path)
    assert error.plugin == "nomark"


def test_a_hook_with_a_wrong_argument_name_is_refused(tmp_path):
    write_plugin(tmp_path, "argy", """
from vip_worker import hookimpl

@hookimpl
def vip_worker_register_handlers(registrar):
    registrar("argy", lambda message, ctx: None)
""")
    error = plugin_error(tmp_path)
    assert error.plugin == "argy"
    assert "registrar" in error.problem


def test_a_hook_that_raises_is_named(tmp_path):
    write_plugin(tmp_path, "angry", """
from vip_worker import hookimpl

@hookimpl
def vip_worker_register_handlers(register):
    raise KeyError("endpoint")
""")
    error = plugin_error(tmp_path)
    assert error.plugin == "angry"
    assert "vip_worker_register_handlers failed: KeyError" in error.problem


@pytest.mark.parametrize("handler", ["lambda message: None", "lambda: None",
                                     "lambda message, ctx, extra: None", "'not callable'"])
def test_a_handler_that_cannot_take_message_and_ctx_is_refused(tmp_path, handler):
    write_plugin(tmp_path, "shape", f"""
from vip_worker import hookimpl

@hookimpl
def vip_worker_register_handlers(register):
    register("shape", {handler})
""")
    error = plugin_error(tmp_path)
    assert error.plugin == "shape"
    assert "handler for 'shape'" in error.problem


def test_disabled_plugins_are_not_even_imported(tmp_path):
    write_plugin(tmp_path, "alpha")
    write_plugin(tmp_path, "broken", "raise ImportError('never imported')\n")
    loaded = load(tmp_path, disabled_plugins=["broken"])
    assert [i.name for i in loaded.infos] == ["alpha"]
    assert loaded.registry.get("alpha") is not None


def test_a_relative_import_inside_a_plugin_package_works(tmp_path):
    write_plugin(tmp_path, "pkg", """
from vip_worker import hookimpl
from .handlers import handle
from . import settings

@hookimpl
def vip_worker_register_handlers(register):
    register(settings.TYPE, handle)
""", handlers="def handle(message, ctx):\n    return 'handled'\n", settings="TYPE = 'pkgtype'\n")
    loaded = load(tmp_path)
    assert loaded.infos[0].types == ["pkgtype"]
    assert loaded.registry.get("pkgtype").fn(None, None) == "handled"


def test_the_same_plugin_name_in_two_dirs_is_refused(tmp_path):
    write_plugin(tmp_path / "one", "alpha")
    write_plugin(tmp_path / "two", "alpha")
    settings = make_settings(plugin_dirs=[str(tmp_path / "one"), str(tmp_path / "two")])
    with pytest.raises(PluginError) as raised:
        load_plugins(settings)
    assert raised.value.plugin == "alpha" and "found twice" in raised.value.problem


def test_type_limits_for_an_unhandled_type_is_a_config_error(tmp_path):
    write_plugin(tmp_path, "alpha")
    assert load(tmp_path, type_limits={"alpha": 2}).registry.get("alpha") is not None
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, type_limits={"images": 2})
    assert raised.value.key == "type_limits.images"


def test_settings_for_a_plugin_that_is_not_loaded_are_an_error(tmp_path):
    write_plugin(tmp_path, "alpha")
    assert load(tmp_path, plugin_settings={"alpha": {}}).infos
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, plugin_settings={"alpah": {"x": 1}})
    assert raised.value.key == "plugins.alpah"


def test_the_bundled_plugins_load():
    root = Path(__file__).resolve().parents[2] / "plugins"
    settings = dataclasses.replace(make_settings(), plugin_dirs=[str(root)])
    loaded = load_plugins(settings)
    assert {"articles", "images"} <= set(loaded.registry.handlers)


# -- the registry on its own -------------------------------------------------------------


def test_registry_accepts_handlers_with_defaults_or_varargs():
    registry = HandlerRegistry()
    register = registry.registrar("p")
    register("a", lambda message, ctx, extra=None: None)
    register("b", lambda *args: None)
    assert registry.types_of("p") == ["a", "b"]
    assert registry.types_of("other") == []


@pytest.mark.parametrize("message_type", ["", None, "x" * 257, 5])
def test_registry_refuses_bad_type_names(message_type):
    with pytest.raises(PluginError) as raised:
        HandlerRegistry().add("p", message_type, lambda message, ctx: None)
    assert raised.value.plugin == "p" and "message type" in raised.value.problem


@pytest.mark.parametrize("target", ["dir", "module", "package_file"])
def test_plugin_code_others_can_write_is_refused(tmp_path, target):
    write_plugin(tmp_path, "pkg", helper="X = 1\n")
    (tmp_path / "single.py").write_text("")
    path = {"dir": tmp_path, "module": tmp_path / "single.py",
            "package_file": tmp_path / "pkg" / "helper.py"}[target]
    path.chmod(path.stat().st_mode | 0o002)
    with pytest.raises(ConfigError) as raised:
        load(tmp_path)
    assert str(path) in str(raised.value) and "writable by every user" in str(raised.value)


@pytest.mark.skipif(__import__("os").geteuid() != 0, reason="chown needs root")
def test_plugin_code_of_another_owner_is_refused(tmp_path):
    import os

    write_plugin(tmp_path, "pkg")
    os.chown(tmp_path / "pkg" / "__init__.py", 12345, -1)
    with pytest.raises(ConfigError) as raised:
        load(tmp_path)
    assert "owned by another user (uid 12345)" in str(raised.value)
