"""sha256 of local files remembered by stat identity, so `up` does not re-read unchanged data.

    cache = HashCache.load(store.state_dir / HASH_CACHE)
    digest = cache.sha256(path)         # read and hashed only when the file changed
    cache.save()                        # atomic; at most MAX_ENTRIES, newest kept

An entry is keyed on the file's path, device, inode, size, mtime_ns and ctime_ns: any write,
truncation, rename over it or chmod changes ctime, so a changed file never matches a stale
entry. Files changed within RECENT_S of now are hashed but not remembered (a write in the
same timestamp tick as our stat would otherwise leave ctime unchanged), and an entry is kept
only when the file's stat is the same after reading as before. A missing, unreadable or
malformed cache file is an empty cache; a cache that cannot be written is not an error.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from orchestrate_bloom.fileio import sha256_file, write_atomic

HASH_CACHE = "sha256-cache.json"  # its name in the state dir
MAX_ENTRIES = 4096
RECENT_S = 2.0  # a file whose ctime is this close to now is hashed, never remembered


def _identity(path: Path, st: os.stat_result) -> str:
    return (f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:"
            f"{os.path.abspath(path)}")


class HashCache:
    """File identity -> sha256 hex, loaded from and saved to one JSON file."""

    def __init__(self, path: Path | None, entries: dict[str, str] | None = None) -> None:
        self.path = path
        self.entries: dict[str, str] = dict(entries or {})
        self.dirty = False

    @classmethod
    def load(cls, path: Path) -> HashCache:
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            raw = {}
        entries = {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, str)
                   and len(v) == 64} if isinstance(raw, dict) else {}
        return cls(path, entries)

    def sha256(self, path: Path) -> str:
        """The file's sha256 hex: remembered if its identity is unchanged, else read."""
        before = path.stat()
        key = _identity(path, before)
        known = self.entries.get(key)
        if known is not None:
            return known
        digest = sha256_file(path)
        after = path.stat()
        if (_identity(path, after) == key
                and time.time() - after.st_ctime_ns / 1e9 > RECENT_S):
            self.entries.pop(key, None)
            self.entries[key] = digest  # newest last: save() keeps the tail
            self.dirty = True
        return digest

    def save(self) -> None:
        """Write the newest MAX_ENTRIES entries atomically (best effort)."""
        if not self.dirty or self.path is None:
            return
        keep = dict(list(self.entries.items())[-MAX_ENTRIES:])
        try:
            write_atomic(self.path, json.dumps(keep), 0o600, fsync=False)
        except OSError:
            return
        self.dirty = False
