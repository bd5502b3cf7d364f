"""Outcome types a handler raises, and the daemon's own error types.

A handler classifies its failure by the exception it raises:

- ``PermanentError``: retrying cannot help (bad input, a 4xx from a service).
  The message goes to the dead-letter queue at once, with the reason.
- ``RetryLater``: a transient failure with an explicit delay.
- ``DependencyUnavailable`` (a ``RetryLater``): the worker's own dependency, such
  as its job store, is down; retried, and never dead-lettered for ``max_attempts``.
- ``Deferred``: not now, and not the job's fault (a quota, a provider's pause, a user's
  budget or fairness cap): the claim is handed back with its attempt refunded, the
  message waits ``delay_s`` (plus jitter), and SQS's receive count never takes it to
  the dead-letter queue for it.
- ``JobCancelled``: the job's cancellation was asked for (``ctx.raise_if_cancelled()``):
  the message is deleted, never retried nor dead-lettered, and the job ends ``cancelled``.
- any other ``Exception``: transient; retried with exponential backoff until the
  queue's ``max_attempts`` is reached, then dead-lettered.
"""


class PermanentError(Exception):
    """The message can never succeed: dead-letter it now, with this reason."""


class RetryLater(Exception):
    """Transient failure: make the message visible again after ``delay_s``.

    :param delay_s: seconds until the retry; ``None`` uses the queue's backoff.
    """

    def __init__(self, reason: str = "", delay_s: float | None = None):
        super().__init__(reason)
        self.delay_s = delay_s


class DependencyUnavailable(RetryLater):
    """A dependency of the worker itself is down (its job store): not the job's fault.

    Retried with the queue's backoff like any transient failure, but never dead-lettered
    for reaching ``max_attempts``: an outage of our own store must not dead-letter jobs.
    Its receives do raise SQS's ApproximateReceiveCount, so a job that meets a real
    failure after an outage has fewer attempts left (see docs/reliability.md).
    """


class Deferred(Exception):
    """Run this message later, spending no attempt: the handler's slot is freed at once.

    :param reason: why (logged and counted, e.g. ``quota:generation:rpm``).
    :param delay_s: seconds until the message is due again, before jitter.
    """

    def __init__(self, reason: str, delay_s: float):
        super().__init__(reason)
        self.reason = reason
        self.delay_s = delay_s


class ConfigError(Exception):
    """A setting is missing or invalid. ``key`` names it, ``source`` says where it came from."""

    def __init__(self, key: str, problem: str, source: str = ""):
        self.key = key
        self.problem = problem
        self.source = source
        where = f" (from {source})" if source else ""
        super().__init__(f"{key}: {problem}{where}")


class PluginError(Exception):
    """A plugin could not be loaded or registered. ``plugin`` names it."""

    def __init__(self, plugin: str, problem: str):
        self.plugin = plugin
        self.problem = problem
        super().__init__(f"plugin {plugin!r}: {problem}")


class MalformedMessage(PermanentError):
    """The body is not in the app's message format: dead-lettered at once, never retried."""


class UnknownMessageType(PermanentError):
    """No plugin handles the message's ``type``: dead-lettered at once."""


class JobTimedOut(Exception):
    """The handler ran past the queue's ``max_job_time_s`` and was abandoned (transient)."""


class JobCancelled(Exception):
    """The job's cancellation was asked for: stop. Raised by ``ctx.raise_if_cancelled()``
    (a handler may raise it itself), and by the daemon for a handler it stopped or
    abandoned; its message is deleted and the job ends ``cancelled``."""


class HookFailed(Exception):
    """Plugins' implementations of a hook raised.

    :ivar hook: the hook's name (``vip_worker_poller_stop``).
    :ivar failures: ``(plugin name, exception)`` pairs, in call order.
    """

    def __init__(self, hook: str, failures: list[tuple[str, Exception]], detail: str):
        self.hook = hook
        self.failures = failures
        super().__init__(f"{hook} failed: {detail}")
