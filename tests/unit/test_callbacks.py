"""Completion callbacks: signing, the SSRF checks, the backoff (services/callbacks.py)."""

from __future__ import annotations

import http.server
import json
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from vip_worker.services.callbacks import AllowList, Refused, backoff_s, sign, verify

SECRET = "whsec-test"
BODY = b'{"id":"job-1:completed","status":"completed"}'
API_DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def test_a_signature_verifies_and_a_changed_body_or_secret_does_not():
    header = sign(SECRET, BODY, 1_700_000_000)
    assert re.fullmatch(r"t=1700000000,v1=[0-9a-f]{64}", header)
    assert verify(SECRET, header, BODY, now=1_700_000_010)
    assert not verify(SECRET, header, BODY + b" ", now=1_700_000_010)
    assert not verify("other", header, BODY, now=1_700_000_010)
    assert not verify(SECRET, "garbage", BODY, now=1_700_000_010)


def test_an_old_signature_is_refused_as_a_replay():
    header = sign(SECRET, BODY, 1_700_000_000)
    assert not verify(SECRET, header, BODY, now=1_700_000_000 + 301)


def test_the_documented_python_snippet_verifies_a_signature():
    text = API_DOC.read_text()
    snippet = re.search(r"```python\n(# verify a vip-worker callback.*?)```", text, re.S).group(1)
    scope: dict = {}
    exec(snippet, scope)  # noqa: S102 - the documentation's own example, run as written
    header = sign(SECRET, BODY, int(time.time()))
    assert scope["verify_vip_signature"](SECRET, header, BODY) is True
    assert scope["verify_vip_signature"](SECRET, header, BODY + b"x") is False
    old = sign(SECRET, BODY, 1_000)
    assert scope["verify_vip_signature"](SECRET, old, BODY) is False


def test_backoff_doubles_from_one_second_up_to_the_cap():
    assert [backoff_s(n, 30) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


@pytest.mark.parametrize("address", [
    "169.254.169.254", "fd00:ec2::254", "127.0.0.1", "127.9.9.9", "::1", "10.1.2.3",
    "172.16.0.1", "172.31.255.255", "192.168.1.1", "0.0.0.0", "::ffff:127.0.0.1"])
def test_each_internal_address_is_refused(address):
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(Refused):
        AllowList([]).check(f"http://{host}/hook")
    with pytest.raises(Refused):  # a name that resolves to it, at send time
        AllowList([]).check("https://hooks.example.com/x", lambda h, p: ["93.184.216.34", address])


def test_a_public_address_passes_and_a_listed_cidr_allows_an_internal_one():
    AllowList([]).check("https://hooks.example.com/x", lambda h, p: ["93.184.216.34"])
    AllowList(["127.0.0.1"]).check("http://127.0.0.1:8080/x")
    AllowList(["10.0.0.0/8"]).check("http://hooks.internal/x", lambda h, p: ["10.2.3.4"])


def test_the_allow_list_limits_the_hosts():
    allowed = AllowList(["app.example.com", "*.vip.example.com"])
    allowed.check("https://app.example.com/x", lambda h, p: ["93.184.216.34"])
    allowed.check("https://eu.vip.example.com/x", lambda h, p: ["93.184.216.34"])
    with pytest.raises(Refused, match="callback_allowed_hosts"):
        allowed.check("https://evil.example.net/x", lambda h, p: ["93.184.216.34"])
    with pytest.raises(Refused):  # a listed name never unlocks an internal address
        allowed.check("https://app.example.com/x", lambda h, p: ["127.0.0.1"])


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "http:///x",
                                 "https://user:pw@example.com/x"])
def test_other_schemes_and_credentials_are_refused(url):
    with pytest.raises(Refused):
        AllowList([]).check(url)


class Redirecting(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        self.send_response(302)
        self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_redirect_is_refused_not_followed(tmp_path):
    from vip_worker import config
    from vip_worker.services.callbacks import Callbacks

    settings = config.load(environ={"VIP_WORKER_STATE_DIR": str(tmp_path)},
                           require_queues=False).with_values(
        callback_secret=SECRET, callback_allowed_hosts=["127.0.0.1"], callback_timeout_s=2.0)
    server = http.server.HTTPServer(("127.0.0.1", 0), Redirecting)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        callbacks = Callbacks(settings, store_of=lambda: None)
        ok, error, final = callbacks.post(f"http://127.0.0.1:{server.server_port}/hook", BODY,
                                          "job-1:completed")
        callbacks.close()
    finally:
        server.shutdown()
        server.server_close()
    assert not ok and "redirect refused" in error and not final


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node")
def test_the_documented_node_snippet_verifies_a_signature(tmp_path):
    snippet = re.search(r"```js\n(.*?)```", API_DOC.read_text(), re.S).group(1)
    now = int(time.time())
    cases = {"good": (sign(SECRET, BODY, now), BODY), "changed": (sign(SECRET, BODY, now),
                                                                  BODY + b"x"),
             "replayed": (sign(SECRET, BODY, now - 301), BODY)}
    script = tmp_path / "verify.mjs"
    script.write_text(snippet + "\nconst cases = " + json.dumps(
        {k: [h, b.decode()] for k, (h, b) in cases.items()}) + ";\n"
        f"for (const [name, [h, b]] of Object.entries(cases)) "
        f"console.log(name, verifyVipSignature({json.dumps(SECRET)}, h, b));\n")
    out = subprocess.run(["node", str(script)], capture_output=True, text=True, timeout=30,
                         check=True).stdout.split("\n")
    assert out[:3] == ["good true", "changed false", "replayed false"]
