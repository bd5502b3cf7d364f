"""The no-op task PyQS runs for bench/ (imported by name: ``pyqs_tasks.noop``)."""


def noop(*args, **kwargs):
    return None
