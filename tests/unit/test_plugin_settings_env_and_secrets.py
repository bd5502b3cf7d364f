"""Plugin settings: names that must make environment variables, secrets, ``vip-worker config``."""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import textwrap
from pathlib import Path

import pytest

from tests.fakes import make_settings
from vip_worker import boot, cli, config, exitcodes
from vip_worker.errors import PluginError
from vip_worker.plugins import settings as plugin_settings
from vip_worker.plugins.manager import NAMESPACE, load_plugins

SECRETS_PLUGIN = """
from vip_worker import hookimpl

@hookimpl
def vip_worker_register_settings(declare):
    declare("api_token", "", secret=True, help="the shop's API token")
    declare("dsn", "", secret=True)
    declare("passwords", [], secret=True)
    declare("region", "eu")
    declare("note", "")

@hookimpl
def vip_worker_register_handlers(register):
    register("orders", lambda message, ctx: None)
"""

WITH_SETTING = """
from vip_worker import hookimpl

@hookimpl
def vip_worker_register_settings(declare):
    declare("{key}", 1)
"""

HANDLER_ONLY = """
from vip_worker import hookimpl

@hookimpl
def vip_worker_register_handlers(register):
    register("{name}", lambda message, ctx: None)
"""

TOKEN = "tok-abcdefghij"
DSN = "postgres://shop:Pg-Pass-77@db.internal/shop"


@pytest.fixture(autouse=True)
def forget_plugin_modules(monkeypatch):
    for name in list(os.environ):
        if name.startswith(("VIP_WORKER_", "ARTICLES_", "IMAGES_", "MONGODB_")):
            monkeypatch.delenv(name)
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name == NAMESPACE or name.startswith(NAMESPACE + "."):
            del sys.modules[name]


def write(root: Path, name: str, code: str, **fields: str) -> None:
    root.mkdir(exist_ok=True)
    (root / f"{name}.py").write_text(textwrap.dedent(code).format(name=name, **fields))


def plugin_error(root: Path) -> PluginError:
    with pytest.raises(PluginError) as raised:
        load_plugins(make_settings(plugin_dirs=[str(root)]))
    return raised.value


# -- plugin names in environment variable names -----------------------------------------------


@pytest.mark.parametrize("name", ["my-shop", "Shop", "shop.v2"])
def test_a_plugin_with_settings_needs_a_name_an_environment_variable_can_hold(tmp_path, name):
    write(tmp_path, name, WITH_SETTING, key="limit")
    error = plugin_error(tmp_path)
    assert error.plugin == name
    assert "VIP_WORKER_PLUGINS_<PLUGIN>_<KEY>" in str(error) and "[a-z][a-z0-9_]*" in str(error)


def test_such_a_name_is_fine_for_a_plugin_without_settings(tmp_path):
    write(tmp_path, "my-wrapper", HANDLER_ONLY)
    assert load_plugins(make_settings(plugin_dirs=[str(tmp_path)])).registry.get("my-wrapper")


def test_two_settings_with_the_same_environment_variable_are_a_boot_error(tmp_path):
    write(tmp_path, "a", WITH_SETTING, key="b_c")  # VIP_WORKER_PLUGINS_A_B_C
    write(tmp_path, "a_b", WITH_SETTING, key="c")  # VIP_WORKER_PLUGINS_A_B_C too
    error = plugin_error(tmp_path)
    assert "VIP_WORKER_PLUGINS_A_B_C" in str(error)
    assert "plugin 'a'" in str(error) and "plugin 'a_b'" in str(error)


# -- secrets --------------------------------------------------------------------------------


def shop_settings(tmp_path: Path, **env: str):
    plugins = tmp_path / "plugins"
    write(plugins, "shop", SECRETS_PLUGIN)
    path = tmp_path / "vip-worker.toml"
    path.write_text(f'plugin_dirs = ["{plugins}"]\n[plugins.shop]\napi_token = "{TOKEN}"\n'
                    'passwords = ["pw-one-1", "pw-two-2"]\n')
    return config.load(str(path), environ=env, require_queues=False)


def test_settings_declared_secret_are_known_to_the_log_masking(tmp_path):
    loaded = load_plugins(shop_settings(tmp_path, VIP_WORKER_PLUGINS_SHOP_DSN=DSN))
    assert sorted(loaded.secrets()) == sorted([TOKEN, DSN, "pw-one-1", "pw-two-2"])


@pytest.fixture
def restore_logging():
    loggers = [logging.getLogger(name) for name in ("vip_worker", "vip_worker_plugins")]
    saved = [(lg, list(lg.handlers), lg.level, lg.propagate) for lg in loggers]
    yield
    for logger, handlers, level, propagate in saved:
        logger.handlers = handlers
        logger.setLevel(level)
        logger.propagate = propagate


@pytest.mark.usefixtures("restore_logging")
def test_the_daemon_masks_secret_plugin_settings_in_its_log(tmp_path):
    settings = shop_settings(tmp_path, VIP_WORKER_PLUGINS_SHOP_DSN=DSN)
    problem, secrets = boot.preflight(settings)  # the check run at boot and on each reload
    assert problem is None and TOKEN in secrets and DSN in secrets
    boot.install_logging(settings, set(config.secrets(settings)) | set(secrets))
    stream = io.StringIO()
    logging.getLogger("vip_worker").handlers[0].setStream(stream)
    logging.getLogger("vip_worker_plugins.shop").warning(f"calling with {TOKEN} and {DSN}")
    assert TOKEN not in stream.getvalue() and "Pg-Pass-77" not in stream.getvalue()


def test_describe_masks_declared_secrets_whole_and_shows_every_source(tmp_path):
    settings = shop_settings(tmp_path, VIP_WORKER_PLUGINS_SHOP_DSN=DSN,
                             VIP_WORKER_PLUGINS_SHOP_NOTE="hello")
    rows = {r["key"]: r for r in plugin_settings.describe(
        settings, load_plugins(settings).settings)}
    assert rows["plugins.shop.api_token"] == {
        "key": "plugins.shop.api_token", "value": "****",
        "source": f"file {tmp_path / 'vip-worker.toml'}"}
    assert rows["plugins.shop.dsn"] == {"key": "plugins.shop.dsn",
                                        "value": "postgres://shop:****@db.internal/shop",
                                        "source": "env VIP_WORKER_PLUGINS_SHOP_DSN"}
    assert rows["plugins.shop.passwords"]["value"] == "****"
    assert rows["plugins.shop.note"] == {"key": "plugins.shop.note", "value": "hello",
                                         "source": "env VIP_WORKER_PLUGINS_SHOP_NOTE"}
    assert rows["plugins.shop.region"] == {"key": "plugins.shop.region", "value": "eu",
                                           "source": "default"}


def run_config(capsys, path: Path) -> tuple[int, dict, str]:
    capsys.readouterr()
    code = cli.main(["config", "--config", str(path), "--json"])
    out, err = capsys.readouterr()
    return code, {r["key"]: r for r in json.loads(out)}, err


def test_config_command_shows_plugin_settings_from_the_environment(tmp_path, monkeypatch,
                                                                   capsys):
    settings = shop_settings(tmp_path)
    monkeypatch.setenv("VIP_WORKER_PLUGINS_SHOP_DSN", DSN)
    monkeypatch.setenv("VIP_WORKER_PLUGINS_SHOP_REGION", "us")
    code, rows, err = run_config(capsys, Path(settings.config_file))
    assert code == exitcodes.OK, err
    assert rows["plugins.shop.region"] == {"key": "plugins.shop.region", "value": "us",
                                           "source": "env VIP_WORKER_PLUGINS_SHOP_REGION"}
    assert rows["plugins.shop.dsn"]["source"] == "env VIP_WORKER_PLUGINS_SHOP_DSN"
    assert rows["plugins.shop.api_token"]["value"] == "****"
    assert "Pg-Pass-77" not in json.dumps(rows) and TOKEN not in json.dumps(rows)


def test_config_command_with_a_plugin_that_does_not_load_masks_every_plugin_value(
        tmp_path, monkeypatch, capsys):
    settings = shop_settings(tmp_path)
    write(tmp_path / "plugins", "broken", "import no_such_module_anywhere\n")
    monkeypatch.setenv("VIP_WORKER_PLUGINS_SHOP_DSN", DSN)
    code, rows, err = run_config(capsys, Path(settings.config_file))
    assert code == exitcodes.CONFIG and "plugin 'broken'" in err
    assert rows["plugins.shop.api_token"]["value"] == "****"
    assert rows["VIP_WORKER_PLUGINS_SHOP_DSN"] == {
        "key": "VIP_WORKER_PLUGINS_SHOP_DSN", "value": "****",
        "source": "env VIP_WORKER_PLUGINS_SHOP_DSN"}
    assert rows["processes"]["value"] == 2  # the daemon's own settings are still shown
