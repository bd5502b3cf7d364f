"""Operator commands that work from a shell, with or without a running daemon:
``status``, ``dlq peek|redrive`` (and the redrive journal), ``enqueue`` and ``jobs``."""
