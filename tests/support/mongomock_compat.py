"""mongomock 4.3 against pymongo 4.9+: pymongo's bulk operations (``UpdateOne``,
``ReplaceOne``) pass a ``sort`` keyword that mongomock's bulk builder does not accept, so
``bulk_write`` raises ``TypeError`` on the stand-in only. ``allow_bulk_sort()`` makes the
builder drop a ``sort`` of None (what every operation of ours sends); a real sort still
fails loudly. Idempotent; call it before using ``bulk_write`` on mongomock."""

from __future__ import annotations

import functools


def allow_bulk_sort() -> None:
    from mongomock.collection import BulkOperationBuilder

    for name in ("add_update", "add_replace"):
        method = getattr(BulkOperationBuilder, name)
        if getattr(method, "drops_sort", False):
            continue

        @functools.wraps(method)
        def without_sort(self, *args, _method=method, sort=None, **kwargs):
            if sort is not None:
                raise NotImplementedError("mongomock's bulk builder cannot sort")
            return _method(self, *args, **kwargs)

        without_sort.drops_sort = True
        setattr(BulkOperationBuilder, name, without_sort)
