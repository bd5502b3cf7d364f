"""Settings declared outside config.py: the job store's and the pipeline's, found through the
``vip_worker.settings`` entry-point group and read from the same names as before."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import EntryPoint

import pytest

from tests.unit.test_layout import PACKAGE, offending
from vip_worker import config
from vip_worker.errors import ConfigError
from vip_worker.pipeline import settings as pipeline_settings
from vip_worker.services import callback_settings
from vip_worker.store import settings as store_settings
from vip_worker.web import settings as web_settings
from vip_worker.web.dashboard import settings as dashboard_settings

QUEUE = {"ARTICLES_QUEUE_URL": "http://127.0.0.1:1/1/articles"}
GROUP = config.SETTINGS_ENTRY_POINT_GROUP

# Declarations the fake entry points below point at.
EXTRA = (config.Setting("shop_url", "", config.url, "A third party's setting."),)
AGAIN = (config.Setting("fastapi_url", "", config.url, "Declared a second time."),)
CORE_AGAIN = (config.Setting("processes", 1, config.integer(1, 2), "A core name."),)
NOT_SETTINGS = ("fastapi_url",)


def entry_point(name: str, attr: str) -> EntryPoint:
    return EntryPoint(name=name, value=f"{__name__}:{attr}", group=GROUP)


def test_config_does_not_import_the_pipeline_or_the_store():
    assert offending([PACKAGE / "config.py"], ("vip_worker.pipeline", "vip_worker.store")) == []
    code = ("import sys, vip_worker.config; print([m for m in sys.modules "
            "if m.startswith(('vip_worker.pipeline', 'vip_worker.store', 'vip_worker.web'))])")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=60).stdout.strip()
    assert loaded == "[]"


def test_the_store_and_pipeline_declarations_are_found_through_entry_points():
    declared = config.declared_settings()
    # The very objects the two modules declare (Setting is unhashable: its default may be
    # a list), each once.
    assert sorted(map(id, declared)) == sorted(
        map(id, store_settings.SETTINGS + pipeline_settings.SETTINGS + web_settings.SETTINGS
            + callback_settings.SETTINGS + dashboard_settings.SETTINGS))
    names = [s.name for s in config.worker_settings()]
    assert len(names) == len(set(names))
    assert {"fastapi_url", "mongodb_uri", "jobs_collection", "state_dir"} <= set(names)
    assert config.WORKER_BY_NAME["mongodb_uri"].secret  # the old module attribute still works


def test_declared_settings_read_their_environment_names_and_file_keys(tmp_path):
    path = tmp_path / "w.toml"
    path.write_text('content_collection = "articles_out"\nimage_path = "/img"\n')
    settings = config.load(str(path), environ={
        **QUEUE, "FASTAPI_URL": "http://127.0.0.1:9", "MONGODB_URI": "mongodb://u:pw@h/db",
        "MONGODB_DATABASE": "app", "VIP_WORKER_JOBS_COLLECTION": "queue_jobs",
        "VIP_WORKER_ARTICLE_MODES": "topic,spin", "VIP_WORKER_IMAGE_PATH": "/env-img"})
    assert settings.fastapi_url == "http://127.0.0.1:9"
    assert settings.mongodb_uri == "mongodb://u:pw@h/db"
    assert settings.mongodb_database == "app"
    assert settings.jobs_collection == "queue_jobs"
    assert settings.content_collection == "articles_out"
    assert settings.article_modes == ["topic", "spin"]
    assert settings.image_path == "/env-img"  # the environment wins over the file
    assert settings.media_collection == "media"
    assert settings.sources["fastapi_url"] == "env FASTAPI_URL"
    assert settings.sources["content_collection"] == f"file {path}"
    rows = {r["key"]: r for r in config.describe(settings, environ={})}
    assert rows["mongodb_uri"]["value"] == "mongodb://u:****@h/db"
    assert "pw" in config.secrets(settings, environ={})


def test_a_declared_setting_is_validated_naming_it():
    with pytest.raises(ConfigError, match=r"^jobs_collection: .*\(from env "
                                          r"VIP_WORKER_JOBS_COLLECTION\)"):
        config.load(environ={**QUEUE, "VIP_WORKER_JOBS_COLLECTION": "no-dashes"})


@pytest.mark.parametrize(("doc", "env", "key"), [
    ("fastapi_uri = 'http://x'\n", {}, "fastapi_uri"),
    ("", {"VIP_WORKER_MONGODB_URL": "mongodb://h"}, "VIP_WORKER_MONGODB_URL"),
])
def test_an_undeclared_key_is_refused_naming_it(tmp_path, doc, env, key):
    path = tmp_path / "w.toml"
    path.write_text(doc)
    with pytest.raises(ConfigError, match="unknown setting") as caught:
        config.load(str(path), environ={**QUEUE, **env})
    assert caught.value.key == key


def test_reading_an_undeclared_setting_names_it():
    settings = config.load(environ=QUEUE)
    with pytest.raises(AttributeError, match="'fastapi_uri'"):
        _ = settings.fastapi_uri


def test_with_values_sets_core_and_declared_settings():
    settings = config.load(environ=QUEUE)
    changed = settings.with_values(processes=3, fastapi_url="http://127.0.0.1:7")
    assert (changed.processes, changed.fastapi_url) == (3, "http://127.0.0.1:7")
    assert settings.fastapi_url == "http://127.0.0.1:8000"  # the original is unchanged
    with pytest.raises(TypeError, match="'fastapi_uri'"):
        settings.with_values(fastapi_uri="http://x")


def test_a_third_party_declaration_is_collected():
    assert config.collect_declared([entry_point("shop", "EXTRA")]) == EXTRA


def test_a_setting_declared_twice_is_refused_naming_both_declarations():
    first = EntryPoint(name="pipeline", value="vip_worker.pipeline.settings:SETTINGS",
                       group=GROUP)
    with pytest.raises(ConfigError, match="declared twice") as caught:
        config.collect_declared([first, entry_point("shop", "AGAIN")])
    assert caught.value.key == "fastapi_url"
    assert "entry point pipeline = vip_worker.pipeline.settings:SETTINGS" in str(caught.value)
    assert f"entry point shop = {__name__}:AGAIN" in str(caught.value)


def test_a_declaration_of_a_core_name_is_refused():
    with pytest.raises(ConfigError, match="declared twice: by vip_worker.config and by "
                                          "entry point shop") as caught:
        config.collect_declared([entry_point("shop", "CORE_AGAIN")])
    assert caught.value.key == "processes"


@pytest.mark.parametrize(("attr", "problem"), [
    ("NOT_SETTINGS", "is not a tuple of vip_worker.config.Setting"),
    ("MISSING", "does not load: AttributeError"),
])
def test_a_bad_declaration_is_refused_naming_its_entry_point(attr, problem):
    with pytest.raises(ConfigError, match=problem) as caught:
        config.collect_declared([entry_point("shop", attr)])
    assert caught.value.key == "shop"


def test_an_installed_distribution_declares_settings_through_the_entry_point_group(tmp_path):
    site = tmp_path / "site"
    (site / "shop_settings").mkdir(parents=True)
    (site / "shop_settings" / "__init__.py").write_text(
        "from vip_worker.config import Setting, string\n"
        "SETTINGS = (Setting('shop_token', '', string, 'Shop API token.', secret=True),)\n")
    dist = site / "shop_settings-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: shop-settings\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{GROUP}]\nshop = shop_settings:SETTINGS\n")
    code = ("import json; from vip_worker import config\n"
            "s = config.load(environ={'ARTICLES_QUEUE_URL': 'http://127.0.0.1:1/1/a', "
            "'VIP_WORKER_SHOP_TOKEN': 'tok3n'})\n"
            "rows = {r['key']: r for r in config.describe(s, environ={})}\n"
            "print(json.dumps([s.shop_token, rows['shop_token'], s.fastapi_url]))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, env={"PYTHONPATH": str(site), "PATH": ""})
    assert result.returncode == 0, result.stderr
    token, row, fastapi_url = json.loads(result.stdout)
    assert token == "tok3n"
    assert row == {"key": "shop_token", "value": "****", "source": "env VIP_WORKER_SHOP_TOKEN"}
    assert fastapi_url == "http://127.0.0.1:8000"


def test_every_dashboard_setting_is_declared_in_the_dashboards_module():
    # One place for the dashboard's settings: web/dashboard/settings.py, none in the API's.
    declared = {s.name for s in config.declared_settings() if s.name.startswith("dashboard_")}
    assert declared == {s.name for s in dashboard_settings.SETTINGS}
    assert {"dashboard_refresh_s", "dashboard_history_h", "dashboard_rate_window_min",
            "dashboard_session_secret", "dashboard_session_max_age_s"} <= declared
    assert not [s.name for s in web_settings.SETTINGS if s.name.startswith("dashboard_")]
