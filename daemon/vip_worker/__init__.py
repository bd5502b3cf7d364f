"""vip-worker: a pre-fork SQS worker daemon with pluggy handler plugins.

The public surface for plugin authors is re-exported here: the hook marker,
the error types that classify outcomes, and the message type handed to handlers.
``hookimpl`` is resolved on first use, so that the master (which imports
``vip_worker.arbiter``) never loads the plugin system.
"""

from vip_worker.errors import (
    Deferred,
    DependencyUnavailable,
    JobCancelled,
    PermanentError,
    RetryLater,
)
from vip_worker.message import Envelope

__all__ = [
    "Deferred", "DependencyUnavailable", "Envelope", "JobCancelled", "PermanentError",
    "RetryLater", "hookimpl", "__version__",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "hookimpl":
        from vip_worker.plugins.hookspecs import hookimpl

        return hookimpl
    raise AttributeError(f"module 'vip_worker' has no attribute {name!r}")
