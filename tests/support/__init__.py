"""Plain helpers the tests import (``from tests.support.wait import wait_until``).

Fixtures live in ``tests/fixtures/`` and reach every test through ``pytest_plugins`` in
``tests/conftest.py``; nothing is imported from a conftest.
"""
