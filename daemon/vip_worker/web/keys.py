"""API keys: made once, shown once, stored as their SHA-256 in a JSON file.

A key reads ``vwk_<id>_<secret>``: ``id`` (8 hex) finds the entry, the SHA-256 of the
whole key is compared in constant time. The secret has 256 bits of randomness, so a plain
hash suffices (no slow KDF: nothing to brute-force). The file (``web_keys_file``, default
``<state_dir>/web-keys.json``) is written atomically, mode 0600, and ``KeyRing`` re-reads it
when its modification time changes, so a key made or revoked takes effect without a restart.

Roles:

- ``backend``: the app's server; acts for the user it names in ``X-User-Id``.
- ``admin``: sees every user's jobs; may also name a user; signs in to the dashboard
  (web/dashboard/) and acts there.
- ``viewer``: signs in to the dashboard, read-only; refused by the job API (403).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime

from vip_worker import exitcodes

PREFIX = "vwk_"
ROLES = ("backend", "admin", "viewer")
KEYS_FILE = "web-keys.json"


@dataclass(frozen=True)
class Key:
    id: str
    name: str
    role: str


def keys_path(settings) -> str:
    from vip_worker.store.factory import state_dir

    return settings.web_keys_file or os.path.join(state_dir(settings), KEYS_FILE)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def read_entries(path: str) -> list[dict]:
    try:
        with open(path, encoding="utf-8") as handle:
            return list(json.load(handle).get("keys", []))
    except FileNotFoundError:
        return []


def write_entries(path: str, entries: list[dict]) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=folder, prefix=".web-keys.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"keys": entries}, handle, indent=2)
        os.chmod(temp, 0o600)
        os.replace(temp, path)  # readers see the old file or the new one, never half
    except BaseException:
        os.unlink(temp)
        raise


def create_key(path: str, name: str, role: str = "backend") -> tuple[Key, str]:
    """Add a key; returns it and its secret text (the only time it exists in clear)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")
    key_id = secrets.token_hex(4)
    text = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    entries = read_entries(path)
    entries.append({"id": key_id, "name": name, "role": role, "sha256": digest(text),
                    "createdAt": datetime.now(UTC).isoformat(timespec="seconds")})
    write_entries(path, entries)
    return Key(key_id, name, role), text


def revoke_key(path: str, key_id: str) -> bool:
    entries = read_entries(path)
    kept = [e for e in entries if e.get("id") != key_id]
    if len(kept) == len(entries):
        return False
    write_entries(path, kept)
    return True


class KeyRing:
    """The keys of one file, re-read when it changes; ``verify`` is thread-safe enough:
    a reload swaps one dict reference."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._entries: dict[str, dict] = {}

    def entries(self) -> dict[str, dict]:
        try:
            stat = os.stat(self.path)
            stamp = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            self._entries = {e["id"]: e for e in read_entries(self.path)} if stamp else {}
            self._stamp = stamp
        return self._entries

    def __bool__(self) -> bool:
        return bool(self.entries())

    def verify(self, text: str) -> Key | None:
        """The key ``text`` is, or None (unknown, revoked, malformed)."""
        if not text.startswith(PREFIX):
            return None
        key_id = text[len(PREFIX):].partition("_")[0]
        entry = self.entries().get(key_id)
        if entry is None or not hmac.compare_digest(entry["sha256"], digest(text)):
            return None
        return Key(entry["id"], entry.get("name", ""), entry.get("role", "backend"))


def cmd_web_key(args, settings) -> int:
    """``vip-worker web-key create|list|revoke``."""
    path = keys_path(settings)
    if args.web_key_command == "create":
        key, text = create_key(path, args.name, args.role)
        print(f"created {key.role} key {key.id} ({key.name}) in {path}\n"
              f"the key (shown once, store it now):\n{text}")
        return exitcodes.OK
    if args.web_key_command == "revoke":
        if revoke_key(path, args.key_id):
            print(f"revoked key {args.key_id}")
            return exitcodes.OK
        print(f"vip-worker: no key {args.key_id} in {path}", file=sys.stderr)
        return exitcodes.NOT_FOUND
    for entry in read_entries(path):
        print(f"{entry['id']}  {entry.get('role', 'backend'):<8} {entry.get('name', '')}  "
              f"created {entry.get('createdAt', '?')}")
    return exitcodes.OK
