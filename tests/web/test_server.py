"""``vip-worker web`` and ``web-key``: the bind refusal, keys shown once and stored hashed."""

from __future__ import annotations

import json

from vip_worker import cli, exitcodes


def run_cli(argv, monkeypatch, tmp_path, capsys, **env):
    monkeypatch.setenv("VIP_WORKER_STATE_DIR", str(tmp_path / "state"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = cli.main(argv)
    return code, capsys.readouterr()


def test_web_refuses_a_public_address_without_authentication(monkeypatch, tmp_path, capsys):
    code, out = run_cli(["web", "--host", "0.0.0.0", "--port", "0"], monkeypatch, tmp_path,
                        capsys)
    assert code == exitcodes.CONFIG
    assert "web_host" in out.err and "0.0.0.0" in out.err


def test_web_key_create_shows_the_key_once_and_stores_its_hash(monkeypatch, tmp_path, capsys):
    code, out = run_cli(["web-key", "create", "--user", "app-backend"], monkeypatch, tmp_path,
                        capsys)
    assert code == exitcodes.OK
    key = out.out.strip().splitlines()[-1]
    assert key.startswith("vwk_")
    stored = (tmp_path / "state" / "web-keys.json").read_text()
    assert key not in stored
    [entry] = json.loads(stored)["keys"]
    assert entry["name"] == "app-backend" and entry["role"] == "backend"
    assert (tmp_path / "state" / "web-keys.json").stat().st_mode & 0o077 == 0
    code, out = run_cli(["web-key", "list"], monkeypatch, tmp_path, capsys)
    assert entry["id"] in out.out and key not in out.out
    assert run_cli(["web-key", "revoke", entry["id"]], monkeypatch, tmp_path, capsys)[0] == 0
    assert run_cli(["web-key", "revoke", entry["id"]], monkeypatch, tmp_path,
                   capsys)[0] == exitcodes.NOT_FOUND


def test_with_a_key_a_public_address_passes_the_bind_check(monkeypatch, tmp_path, capsys):
    from vip_worker import config
    from vip_worker.web.keys import create_key, keys_path
    from vip_worker.web.server import check_bind

    settings = config.load(environ={"VIP_WORKER_STATE_DIR": str(tmp_path / "s"),
                                    "VIP_WORKER_WEB_HOST": "0.0.0.0"}, require_queues=False)
    assert "web_host" in check_bind(settings)
    create_key(keys_path(settings), "app")
    assert check_bind(settings) is None
    assert check_bind(settings.with_values(web_host="127.0.0.1",
                                           web_keys_file=str(tmp_path / "none"))) is None


def test_forwarded_headers_are_trusted_only_from_the_configured_proxies(tmp_path):
    from vip_worker import config
    from vip_worker.web.server import bind, make_server

    settings = config.load(environ={"VIP_WORKER_STATE_DIR": str(tmp_path)},
                           require_queues=False)
    with bind("127.0.0.1", 0) as sock:
        closed = make_server(settings, None, sock).config
        assert closed.proxy_headers is False
        proxied = make_server(settings.with_values(web_forwarded_allow_ips=["10.0.0.7"]),
                              None, sock).config
        assert proxied.proxy_headers is True and proxied.forwarded_allow_ips == ["10.0.0.7"]


def test_the_server_uses_uvloop_and_the_httptools_parser(tmp_path, monkeypatch):
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from vip_worker import config
    from vip_worker.web.server import bind, make_server

    monkeypatch.setenv("VIP_WORKER_STATE_DIR", str(tmp_path / "state"))
    settings = config.load(environ={"VIP_WORKER_STATE_DIR": str(tmp_path / "state")},
                           require_queues=False)
    sock = bind("127.0.0.1", 0)
    try:
        server = make_server(settings, object(), sock)
        server.config.load()
        assert server.config.http_protocol_class is HttpToolsProtocol
        assert server.config.loop == "uvloop" and server.config.access_log is False
    finally:
        sock.close()


def test_the_startup_heap_is_frozen_out_of_the_collector():
    import gc

    from vip_worker.web.server import settle_heap

    before = gc.get_freeze_count()
    try:
        settle_heap()
        assert gc.get_freeze_count() > before + 1000  # every object made so far
    finally:
        if before == 0:
            gc.unfreeze()  # this test process goes on collecting as before
