"""HashCache: an unchanged file is not read again; a changed one never gets a stale sha256."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from orchestrator.job import hashcache
from orchestrator.job.hashcache import HashCache


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_unchanged_file_is_not_read_again_and_a_rewrite_is(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hashcache, "RECENT_S", -1.0)  # ctime can't be set back: remember now
    f = tmp_path / "d.bin"
    f.write_bytes(b"a" * 1000)
    cache = HashCache.load(tmp_path / "c.json")
    assert cache.sha256(f) == _sha(b"a" * 1000)
    cache.save()
    again = HashCache.load(tmp_path / "c.json")

    def no_read(path: Path) -> str:
        raise AssertionError(f"read {path}")

    monkeypatch.setattr(hashcache, "sha256_file", no_read)
    assert again.sha256(f) == _sha(b"a" * 1000)  # from the cache file, nothing read
    st = f.stat()
    f.write_bytes(b"b" * 1000)  # same size, mtime put back: ctime still tells
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    monkeypatch.undo()
    assert again.sha256(f) == _sha(b"b" * 1000)


def test_recent_file_is_hashed_but_not_remembered_and_bad_cache_is_empty(tmp_path: Path) -> None:
    f = tmp_path / "d.bin"
    f.write_bytes(b"x")
    cache = HashCache.load(tmp_path / "c.json")
    assert cache.sha256(f) == _sha(b"x") and not cache.entries  # changed just now
    (tmp_path / "bad.json").write_text('{"k": 1, "j": "short"')
    assert HashCache.load(tmp_path / "bad.json").entries == {}
    (tmp_path / "bad.json").write_text('{"k": 1, "j": "short", "ok": "' + "0" * 64 + '"}')
    assert list(HashCache.load(tmp_path / "bad.json").entries) == ["ok"]


def test_cache_file_is_bounded_newest_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    monkeypatch.setattr(hashcache, "RECENT_S", -1.0)
    monkeypatch.setattr(hashcache, "MAX_ENTRIES", 3)
    cache = HashCache.load(tmp_path / "c.json")
    for i in range(5):
        (tmp_path / f"f{i}").write_bytes(bytes([i]))
        cache.sha256(tmp_path / f"f{i}")
    cache.save()
    kept = HashCache.load(tmp_path / "c.json").entries
    assert len(kept) == 3 and all(k.endswith(("f2", "f3", "f4")) for k in kept)
    assert (tmp_path / "c.json").stat().st_mode & 0o777 == 0o600
