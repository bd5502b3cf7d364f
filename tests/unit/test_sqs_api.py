"""The SQS interface: every client implements ``SqsApi`` with real methods, and only the
sqs package talks to boto3."""

from __future__ import annotations

import ast
import asyncio
import inspect
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.fakes import AsyncFakeSqs, FakeSqs
from vip_worker.sqs.api import SqsApi
from vip_worker.sqs.boto import AsyncSqs, SqsClient
from vip_worker.sqs.wire import WireSqs

PACKAGE = Path(__file__).resolve().parents[2] / "daemon" / "vip_worker"
API_METHODS = [name for name, member in vars(SqsApi).items()
               if inspect.isfunction(member) and not name.startswith("_")]


def parameters(function) -> list[tuple[str, object, object]]:
    """(name, kind, default) of each parameter but ``self``."""
    return [(p.name, p.kind, p.default)
            for p in list(inspect.signature(function).parameters.values())[1:]]


def test_the_protocol_has_the_pollers_calls():
    assert sorted(API_METHODS) == sorted([
        "receive", "delete_batch", "change_visibility_batch", "send", "queue_attributes",
        "queue_url", "close"])


@pytest.mark.parametrize("client", [AsyncSqs, WireSqs, AsyncFakeSqs])
@pytest.mark.parametrize("name", API_METHODS)
def test_each_async_client_has_the_protocols_method(client, name):
    expected = getattr(SqsApi, name)
    method = getattr(client, name, None)
    assert method is not None, f"{client.__name__} has no {name}"
    assert inspect.iscoroutinefunction(method) == inspect.iscoroutinefunction(expected)
    assert parameters(method) == parameters(expected)


@pytest.mark.parametrize("client", [SqsClient, FakeSqs])
@pytest.mark.parametrize("name", [n for n in API_METHODS if n != "close"])
def test_each_blocking_client_has_the_same_calls_blocking(client, name):
    # AsyncSqs runs these in its threads, with the same arguments.
    method = getattr(client, name)
    assert not inspect.iscoroutinefunction(method)
    assert parameters(method) == parameters(getattr(SqsApi, name))


def test_no_client_keeps_a_call_by_name():
    for client in (AsyncSqs, WireSqs, AsyncFakeSqs):
        assert not hasattr(client, "call")


class Blocking:
    """A blocking client that notes the thread each call ran in."""

    def __init__(self):
        self.threads = {}

    def note(self, name):
        self.threads[name] = threading.current_thread().name

    def receive(self, *args):
        self.note("receive")
        return []

    def delete_batch(self, *args):
        self.note("delete_batch")
        return []

    def change_visibility_batch(self, *args):
        self.note("change_visibility_batch")
        return []

    def send(self, *args):
        self.note("send")
        return "m1"

    def queue_attributes(self, *args):
        self.note("queue_attributes")
        return {}

    def queue_url(self, *args):
        self.note("queue_url")
        return "https://q/1/x"


def test_async_sqs_runs_long_polls_in_their_own_pool():
    blocking = Blocking()

    async def main():
        sqs = AsyncSqs(blocking, max_workers=2, receivers=1)
        try:
            await sqs.receive("u", 10, 0, 30)
            await sqs.delete_batch("u", [("0", "rh")])
            await sqs.change_visibility_batch("u", [("0", "rh", 0)])
            assert await sqs.send("u", "body") == "m1"
            await sqs.queue_attributes("u", ["QueueArn"])
            await sqs.queue_url("x")
        finally:
            sqs.close()

    asyncio.run(main())
    threads = blocking.threads
    assert threads.pop("receive").startswith("sqs-receive")
    assert all(name.startswith("sqs_") for name in threads.values()), threads


class AsyncRecorder:
    """The fallback's stand-in: records what the wire client hands it."""

    executor = None

    def __init__(self):
        self.calls = []

    async def queue_attributes(self, *args):
        self.calls.append(("queue_attributes", *args))
        return {"QueueArn": "arn"}

    async def queue_url(self, *args):
        self.calls.append(("queue_url", *args))
        return "https://q/1/x"

    def close(self):
        pass


def test_the_wire_client_leaves_the_other_calls_to_its_fallback():
    fallback = AsyncRecorder()
    sqs = WireSqs(fallback, "http://127.0.0.1:9", "us-east-1", lambda: ("AKID", "s", None))

    async def main():
        return (await sqs.queue_attributes("https://q/1/w", ["QueueArn"]),
                await sqs.queue_url("x", "123456789012"))

    try:
        assert asyncio.run(main()) == ({"QueueArn": "arn"}, "https://q/1/x")
    finally:
        sqs.close()
    assert fallback.calls == [("queue_attributes", "https://q/1/w", ["QueueArn"]),
                              ("queue_url", "x", "123456789012")]


# -- boundaries ------------------------------------------------------------------------------


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_only_the_sqs_package_imports_boto3():
    offenders = [str(path.relative_to(PACKAGE)) for path in sorted(PACKAGE.rglob("*.py"))
                 if path.parent.name != "sqs" and any(
                     name.split(".")[0] in ("boto3", "botocore")
                     for name in imported_modules(path))]
    assert offenders == []


@pytest.mark.parametrize("module", ["__init__.py", "limits.py", "local.py"])
def test_the_leaf_modules_of_sqs_import_nothing(module):
    assert imported_modules(PACKAGE / "sqs" / module) == set()


def test_config_loads_without_boto3():
    code = ("import sys, vip_worker.config, vip_worker.sqs.limits; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('boto3', 'botocore')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
