"""Start LocalStack's runtime bound to 127.0.0.1 only (run by the LocalStack venv's Python).

LocalStack's twisted gateway ignores the host of ``GATEWAY_LISTEN`` for IPv4 and binds
every interface; the benchmark must stay on loopback, so the IPv4 listening endpoint is
given the interface here before the runtime starts.
"""

from __future__ import annotations

import runpy

from twisted.internet import endpoints

_TCP4 = endpoints.TCP4ServerEndpoint


def loopback_only(reactor, port, backlog=50, interface=""):
    return _TCP4(reactor, port, backlog=backlog, interface="127.0.0.1")


endpoints.TCP4ServerEndpoint = loopback_only

if __name__ == "__main__":
    runpy.run_module("localstack.runtime.main", run_name="__main__", alter_sys=True)
