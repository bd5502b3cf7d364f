"""The boot's check of the MongoDB job store (in the preflight child, as at each reload):
unreachable is reported and the daemon starts; a URI that cannot be used fails the boot."""

from __future__ import annotations

import socket
import threading

import pytest

from tests.unit.test_plugin_settings_env_and_secrets import shop_settings
from vip_worker import boot
from vip_worker.errors import ConfigError
from vip_worker.testing import capture_logs


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_mongodb_is_reported_at_boot_and_does_not_stop_it(tmp_path):
    uri = f"mongodb://127.0.0.1:{closed_port()}/jobs?serverSelectionTimeoutMS=200"
    settings = shop_settings(tmp_path, VIP_WORKER_MONGODB_URI=uri)
    with capture_logs("vip_worker.boot") as records:
        problem, secrets = boot.preflight(settings)
    assert problem is None and secrets  # the boot goes on
    (line,) = records.events("store.unreachable")
    assert line.backend == "mongodb" and "ServerSelectionTimeoutError" in line.error
    assert "retried" in line.detail


def test_a_mongodb_uri_that_cannot_be_used_fails_the_boot_naming_the_setting(tmp_path):
    settings = shop_settings(tmp_path, VIP_WORKER_MONGODB_URI="mongodb://db:notaport/jobs")
    problem, _ = boot.preflight(settings)
    assert problem is not None and "mongodb_uri" in problem


def test_the_embedded_store_is_not_opened_by_the_check(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = shop_settings(tmp_path)
    with capture_logs("vip_worker.boot") as records:
        assert boot.preflight(settings)[0] is None
    assert not records.events("store.unreachable")
    assert not (tmp_path / "var").exists()  # no jobs.sqlite3 made by a check


def test_a_failed_dns_lookup_of_an_srv_uri_is_an_outage_not_a_bad_setting(tmp_path, monkeypatch):
    # pymongo resolves mongodb+srv:// names in the client's constructor and wraps a DNS
    # failure in ConfigurationError; exit 78 would keep systemd from ever restarting.
    import dns.resolver
    from pymongo.errors import ConfigurationError

    from vip_worker.store import StoreUnavailable, factory, mongo

    def resolving_fails(*args, **kwargs):
        try:
            raise dns.resolver.NoNameservers("All nameservers failed to answer the query")
        except dns.resolver.NoNameservers as exc:
            raise ConfigurationError(str(exc)) from exc

    monkeypatch.setattr(mongo, "MongoStore", resolving_fails)
    settings = shop_settings(tmp_path, VIP_WORKER_MONGODB_URI="mongodb+srv://db.example/jobs")
    with pytest.raises(StoreUnavailable, match="DNS lookup failed"):
        factory.open_store(settings)


def test_a_check_that_does_not_answer_in_time_is_reported_as_such():
    release = threading.Event()
    late = boot.bounded(lambda: release.wait(30), 0.1, "no answer")
    release.set()
    assert late == "no answer"
    assert boot.bounded(lambda: "refused", 5, "no answer") == "refused"
    with pytest.raises(ConfigError):
        boot.bounded(lambda: (_ for _ in ()).throw(ConfigError("mongodb_uri", "x")),
                    5, "no answer")
