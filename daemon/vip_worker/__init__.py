"""vip-worker: a pre-fork SQS worker daemon with pluggy handler plugins.

The public surface for plugin authors is re-exported here: the hook marker,
the error types that classify outcomes, and the message type handed to handlers.
"""

from vip_worker.errors import DependencyUnavailable, PermanentError, RetryLater
from vip_worker.message import Envelope
from vip_worker.plugins.hookspecs import hookimpl

__all__ = [
    "DependencyUnavailable", "Envelope", "PermanentError", "RetryLater", "hookimpl",
    "__version__",
]
__version__ = "0.1.0"
