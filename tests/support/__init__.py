"""Plain helpers the tests import (``from tests.support.wait import wait_until``), and the
loopback servers the suite keeps (a LocalStack runner, HTTP servers that misbehave as real
networks do).

Fixtures live in ``tests/fixtures/`` and reach every test through ``pytest_plugins`` in
``tests/conftest.py``; nothing is imported from a conftest.
"""
