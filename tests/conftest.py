"""The suite's fixtures, loaded as plugins (pytest reads ``pytest_plugins`` only here).

Fixtures live in ``tests/fixtures/*.py``; helpers that are not fixtures in
``tests/support/*.py``. Tests ask for fixtures by name and import helpers from those
plain modules, never from a conftest.
"""

import pytest

# The helpers assert too: rewrite them so a failure shows the values compared.
pytest.register_assert_rewrite("tests.support")

pytest_plugins = [
    "tests.fixtures.sqs",
    "tests.fixtures.daemon",
    "tests.fixtures.services",
    "tests.fixtures.store",
    "tests.fixtures.localstack",
    "tests.fixtures.web",
    "tests.fixtures.callbacks",
    "tests.fixtures.browser",
]
