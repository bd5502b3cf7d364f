"""LocalStack (without Docker) as a second SQS endpoint for the integration tests.

Built and started the way ``bench.endpoint`` does it (its own venv under
``bench/.venvs/localstack``, made from PyPI on first use with a Python >= 3.13;
listening on 127.0.0.1 only). When that cannot be done here, the tests that asked
for it are skipped with the reason.
"""

from __future__ import annotations

import subprocess

import pytest


def start_or_skip(workdir: str):
    """A running ``bench.endpoint.Endpoint`` of kind ``localstack``, or ``pytest.skip``."""
    from bench import endpoint

    if not endpoint.localstack_available():
        pytest.skip("LocalStack needs Python >= 3.13 (pyenv install 3.13) to build "
                    f"{endpoint.LOCALSTACK_VENV}")
    try:
        endpoint.ensure_localstack()
    except (OSError, subprocess.CalledProcessError, RuntimeError) as exc:
        pytest.skip(f"LocalStack could not be installed from PyPI: {exc}")
    try:
        return endpoint.start("localstack", workdir)
    except (OSError, RuntimeError, TimeoutError) as exc:
        pytest.skip(f"LocalStack did not start: {exc}")
