"""The generation-service client against the stub service, over HTTP on 127.0.0.1.

Every outcome the daemon must classify: the happy paths, refusals before any
call, 4xx/422 (permanent), 5xx/429/timeouts/refused/reset (transient), garbage.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
import requests

from vip_worker.dev.stubservice import StubGenerationService
from vip_worker.errors import PermanentError, RetryLater
from vip_worker.pipeline.generation import (
    MAX_FIELD_CHARS,
    GenerationClient,
    GenerationUnavailable,
    camel_to_snake,
)

pytestmark = pytest.mark.usefixtures("loopback_only")

MODES = ("topic", "keywords", "trends", "spin")
SEED_PAYLOAD = {
    "mode": "topic", "topic": "Fantasy Football Strategies", "wordCount": 300,
    "tone": "Professional", "seoOptimization": True, "includeImages": False,
    "keywords": ["waiver wire", "draft"], "targetAudience": "league managers",
    "language": "en", "customInstructions": {"maxHeadings": 3},
}



@pytest.fixture
def stub():
    with StubGenerationService(seed=7) as service:
        yield service


def make_client(base_url, modes=MODES, read_timeout_s=5.0, **kwargs):
    return GenerationClient(
        base_url, article_path="/api/generation/{mode}", image_path="/api/generation/image",
        modes=modes, connect_timeout_s=1.0, read_timeout_s=read_timeout_s, **kwargs)


@pytest.fixture
def client(stub):
    with make_client(stub.url) as generation:
        yield generation


def closed_port() -> int:
    """A loopback port nothing listens on (bound, never listened, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- happy paths ------------------------------------------------------------------


def test_article_sends_the_seed_payload_in_snake_case(client, stub):
    result = client.article(SEED_PAYLOAD)

    assert stub.last_path == "/api/generation/topic"
    assert stub.last_body == {
        "topic": "Fantasy Football Strategies", "word_count": 300, "tone": "Professional",
        "seo_optimization": True, "include_images": False,
        "keywords": ["waiver wire", "draft"], "target_audience": "league managers",
        "language": "en", "custom_instructions": {"max_headings": 3},
    }
    assert result["mode"] == "topic" and result["tone"] == "Professional"
    assert "Fantasy Football Strategies" in result["title"]
    assert result["word_count"] == len(result["content"].split()) == 300
    assert result["content"].count("\n\n") >= 2  # several paragraphs
    assert result["seo"]["keywords"] == ["waiver wire", "draft"]


@pytest.mark.parametrize("mode", MODES)
def test_every_known_mode_reaches_its_endpoint(client, stub, mode):
    result = client.article({"mode": mode, "topic": "Sourdough baking", "wordCount": 60})
    assert stub.last_path == f"/api/generation/{mode}"
    assert result["mode"] == mode and result["word_count"] == 60


def test_image_sends_prompt_and_options(client, stub):
    result = client.image({"prompt": "A stadium at dusk", "width": 512, "aspectRatio": "1:1"})

    assert stub.last_path == "/api/generation/image"
    assert stub.last_body == {"prompt": "A stadium at dusk", "width": 512, "aspect_ratio": "1:1"}
    assert result["prompt"] == "A stadium at dusk"
    assert (result["width"], result["height"]) == (512, 1024)
    assert result["url"].startswith(f"{stub.url}/media/") and result["url"].endswith(".png")
    assert requests.get(result["url"], timeout=5).content.startswith(b"\x89PNG")


def test_article_path_without_mode_sends_the_mode_in_the_body(stub):
    with GenerationClient(stub.url, article_path="/api/generation/topic", image_path="/x",
                          modes=["topic"], connect_timeout_s=1, read_timeout_s=5) as client:
        client.article({"mode": "topic", "topic": "Tides", "wordCount": 50})
    assert stub.last_body == {"mode": "topic", "topic": "Tides", "word_count": 50}


@pytest.mark.parametrize(("name", "snake"), [
    ("wordCount", "word_count"), ("seoOptimization", "seo_optimization"),
    ("targetAudience", "target_audience"), ("topic", "topic"), ("word_count", "word_count"),
    ("imageURL", "image_url"), ("HTMLContent", "html_content"), ("step2Words", "step2_words"),
])
def test_camel_to_snake(name, snake):
    assert camel_to_snake(name) == snake


def test_call_read_timeout_never_exceeds_the_clients():
    client = make_client("http://127.0.0.1:1", read_timeout_s=900)
    assert client.timeouts(None) == (1.0, 900)
    assert client.timeouts(30) == (1.0, 30)
    assert client.timeouts(5000) == (1.0, 900)


# -- refused before any HTTP call ---------------------------------------------------


@pytest.mark.parametrize("mode", ["no-such-mode", "../../admin", "", 7, None])
def test_unknown_mode_is_refused_before_any_call(client, stub, mode):
    with pytest.raises(PermanentError, match="unknown generation mode"):
        client.article({"mode": mode, "topic": "x"})
    assert stub.total_calls == 0


def test_mode_is_quoted_into_the_path(stub):
    with make_client(stub.url, modes=["odd mode/x"]) as client:
        with pytest.raises(PermanentError):
            client.article({"mode": "odd mode/x", "topic": "x"})
    assert stub.last_path == "/api/generation/odd%20mode%2Fx"


def test_oversized_field_is_refused_before_any_call(client, stub):
    with pytest.raises(PermanentError, match=r"payload\.topic is 20001 characters"):
        client.article({"topic": "x" * (MAX_FIELD_CHARS + 1)})
    with pytest.raises(PermanentError, match=r"payload\.keywords\[2\] is"):
        client.article({"topic": "x", "keywords": ["a", "b", "k" * 30000]})
    assert stub.total_calls == 0


def test_oversized_body_is_refused_naming_the_largest_field(client, stub):
    keywords = ["k" * 10_000] * 30  # each field within limits, ~300 KB together
    with pytest.raises(PermanentError, match=r"bytes \(limit 262144\).*payload\.keywords"):
        client.article({"topic": "x", "keywords": keywords})
    assert stub.total_calls == 0


def test_keys_that_collide_in_snake_case_are_refused(client, stub):
    with pytest.raises(PermanentError, match="wordCount and payload.word_count"):
        client.article({"topic": "x", "wordCount": 100, "word_count": 200})
    assert stub.total_calls == 0


def test_a_payload_that_is_not_an_object_is_refused(client):
    with pytest.raises(PermanentError, match="payload must be an object"):
        client.article(["topic"])


# -- the service's answers ------------------------------------------------------------


def test_server_error_is_transient(client, stub):
    stub.mode = "error500"
    with pytest.raises(GenerationUnavailable) as caught:
        client.article({"topic": "x"})
    assert caught.value.status == 500
    assert "internal server error (injected)" in str(caught.value)
    assert isinstance(caught.value, RetryLater) and not isinstance(caught.value, PermanentError)


def test_too_many_requests_is_transient_with_the_services_delay(client, stub):
    stub.mode = "error429"
    with pytest.raises(GenerationUnavailable) as caught:
        client.article({"topic": "x"})
    assert (caught.value.status, caught.value.delay_s) == (429, 2.0)


def test_client_error_is_permanent_with_the_services_detail(stub):
    with make_client(stub.url, modes=[*MODES, "legacy"]) as client:
        with pytest.raises(PermanentError) as caught:
            client.article({"mode": "legacy", "topic": "x"})
    assert str(caught.value) == ("generation service refused the request (HTTP 404): "
                                 "unknown generation mode 'legacy'")


def test_validation_errors_are_rendered_one_per_field(client):
    with pytest.raises(PermanentError) as caught:
        client.article({"mode": "topic", "wordCount": 0})
    assert str(caught.value) == (
        "generation service refused the request (HTTP 422): body.topic: Field required; "
        "body.word_count: Input should be between 1 and 20000")


def test_garbage_answer_is_permanent(client, stub):
    stub.mode = "garbage"
    with pytest.raises(PermanentError, match=r"non-JSON response \(HTTP 200, not JSON\): "
                                             r"'<html><body>Bad Gateway"):
        client.article({"topic": "x"})


def test_json_that_is_not_an_object_is_permanent(client):
    response = requests.Response()
    response.status_code, response._content = 200, b"[1, 2]"
    with pytest.raises(PermanentError, match=r"HTTP 200, a JSON list, not an object"):
        client.outcome(response)


def test_failure_rate_one_answers_503_every_time(stub, client):
    stub.failure_rate = 1.0
    for _ in range(5):
        with pytest.raises(GenerationUnavailable, match="model overloaded") as caught:
            client.article({"topic": "x"})
        assert caught.value.status == 503
    assert stub.calls == {"/api/generation/topic": 5}


# -- no answer at all ------------------------------------------------------------------


def test_read_timeout_is_transient(client, stub):
    stub.mode = "hang"
    started = time.monotonic()
    with pytest.raises(GenerationUnavailable, match=r"read timed out after 0\.3s") as caught:
        client.article({"topic": "x"}, read_timeout_s=0.3)
    assert caught.value.status is None
    assert time.monotonic() - started < 3


def test_connection_refused_is_transient():
    with make_client(f"http://127.0.0.1:{closed_port()}") as client:
        with pytest.raises(GenerationUnavailable, match="connection refused"):
            client.article({"topic": "x"})


def test_connection_reset_is_transient(client, stub):
    stub.mode = "reset"
    with pytest.raises(GenerationUnavailable, match="connection reset by peer"):
        client.article({"topic": "x"})
    stub.mode = "ok"
    assert client.article({"topic": "after the reset", "wordCount": 50})["word_count"] == 50


def test_credentials_in_the_base_url_never_reach_an_error(stub):
    port = closed_port()
    with make_client(f"http://svc:s3cr3t@127.0.0.1:{port}") as client:
        with pytest.raises(GenerationUnavailable) as caught:
            client.article({"topic": "x"})
    assert "s3cr3t" not in str(caught.value) and "svc:" not in str(caught.value)
    assert f"http://***@127.0.0.1:{port}" in str(caught.value)

    stub.mode = "garbage"
    with make_client(stub.url.replace("http://", "http://svc:s3cr3t@")) as client:
        with pytest.raises(PermanentError) as caught:
            client.article({"topic": "x"})
    assert "s3cr3t" not in str(caught.value)


# -- the stub itself --------------------------------------------------------------------


def test_stub_health_and_unknown_paths(stub):
    assert requests.get(f"{stub.url}/health", timeout=5).json() == {"ok": True}
    missing = requests.post(f"{stub.url}/api/other", json={}, timeout=5)
    assert (missing.status_code, missing.json()) == (404, {"detail": "Not Found"})
    assert stub.calls == {"/health": 1, "/api/other": 1}


def test_stub_stop_cuts_a_hanging_call(stub):
    stub.mode = "hang"
    outcome = []
    with make_client(stub.url, read_timeout_s=30) as client:
        def call():
            try:
                client.article({"topic": "x"})
            except GenerationUnavailable as exc:
                outcome.append(exc)

        caller = threading.Thread(target=call)
        caller.start()
        assert stub.wait_for_calls(1, "/api/generation/topic")
        started = time.monotonic()
        stub.stop()
        caller.join(timeout=5)
    assert time.monotonic() - started < 3
    assert len(outcome) == 1 and outcome[0].status is None


def test_stub_rejects_an_unknown_fault_mode(stub):
    with pytest.raises(ValueError, match="fault mode"):
        stub.mode = "explode"
