"""An in-memory job store for plugin authors' tests (``vip_worker.testing.MemoryStore``).

It is the embedded SQLite store on an in-memory database, so it behaves exactly
as the daemon's default store does (claims, idempotent saves, progress), and it
runs the same contract tests. One process only: nothing survives a fork.
"""

from __future__ import annotations

from vip_worker.store.sqlite import MEMORY, SqliteStore


class MemoryStore(SqliteStore):
    def __init__(self, jobs_collection: str = "jobs",
                 content_collection: str = "generated_content",
                 media_collection: str = "media") -> None:
        super().__init__(MEMORY, jobs_collection, content_collection, media_collection)
