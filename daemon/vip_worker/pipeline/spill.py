"""A generated result kept on local disk while the store cannot take its checkpoint.

The checkpoint of a paid generation normally goes to the job store (``ctx.checkpoint``).
When the store is down at that moment, the runner retries the write, holding the result
in memory; if its poller dies meanwhile (a SIGKILL, an OOM), the memory is gone and the
next attempt would pay again. So the result is also written here, one file per job under
``<state_dir>/checkpoints/`` (the name a hash of the jobId; written to a temporary file
and renamed, so a reader never sees half of one): the next attempt on the same host finds
it when the store has no checkpoint, and the file is removed once the result is saved.

A host that is lost takes its files with it: another host's attempt pays again. Files of
jobs completed elsewhere stay until a later attempt of theirs on this host (rare: only
results generated during a store outage are spilled).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

SPILL_DIR = "checkpoints"


def path_of(ctx, job_id: str) -> Path | None:
    """The job's spill file, or None without a ``state_dir`` (no place to keep it)."""
    state_dir = getattr(ctx.settings, "state_dir", "") or ""
    if not state_dir:
        return None
    name = hashlib.sha256(job_id.encode()).hexdigest()[:32]
    return Path(state_dir) / SPILL_DIR / f"{name}.json"


def spill(ctx, job_id: str, result: dict[str, Any]) -> bool:
    """Keep ``result`` on disk for the job; False when there is no place or it failed."""
    path = path_of(ctx, job_id)
    if path is None:
        return False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_suffix(f".{os.getpid()}.tmp")
        temp.write_text(json.dumps({"jobId": job_id, "result": result}), encoding="utf-8")
        os.replace(temp, path)
    except (OSError, TypeError, ValueError) as exc:
        ctx.log.warning("job.checkpoint_spill_failed", extra={"error": str(exc)[:300]})
        return False
    ctx.log.info("job.checkpoint_spilled")
    return True


def recover(ctx, job_id: str) -> dict[str, Any] | None:
    """The result spilled for the job on this host, or None."""
    path = path_of(ctx, job_id)
    if path is None:
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    result = doc.get("result") if isinstance(doc, dict) and doc.get("jobId") == job_id \
        else None
    return result if isinstance(result, dict) else None


def clear(ctx, job_id: str) -> None:
    """Remove the job's spill file (its result is saved)."""
    path = path_of(ctx, job_id)
    if path is not None:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass  # a file left behind is only disk: the job is completed
