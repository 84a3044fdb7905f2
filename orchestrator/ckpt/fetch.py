"""Verified, resumable, parallel download of checkpoint files into DEST (`collect-ckpt`).

Each file lands as `DEST/<rel>.part`, is hashed while it streams, and is renamed to
`DEST/<rel>` only when its sha256 and size match the manifest. A rerun skips files already
verified (recorded in `DEST/.verified.json` with size and mtime; re-hashed if either
changed), resumes a `.part` file after hashing the bytes it already has, and refetches from
zero once when the result does not verify. Nothing is trusted that was not hashed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from orchestrate_bloom.fileio import sha256_file, sha256_update, write_atomic

from orchestrator.ckpt.select import safe_local_path
from orchestrator.errors import CheckpointError

CHUNK = 1 << 20
STATE_FILE = ".verified.json"


@dataclass(frozen=True)
class Item:
    """One file to fetch: from `node`'s `remote` path to `DEST/rel`, expected size and sha256."""

    node: str
    remote: PurePosixPath
    rel: PurePosixPath
    size: int
    sha256: str | None  # None: not in a manifest (strategy files): size only, hash recorded
    label: str  # e.g. "rank 3" for messages


Opener = Callable[[str, PurePosixPath, int], "object"]  # (node, path, offset) -> ctx manager


@dataclass
class Outcome:
    """What happened to one item."""

    item: Item
    sha256: str
    fetched: int  # bytes downloaded this run
    action: str  # "verified earlier", "fetched", "resumed", "refetched"


class VerifiedState:
    """DEST/.verified.json: rel -> {sha256, size, mtime_ns}; written atomically."""

    def __init__(self, dest: Path) -> None:
        self.path = dest / STATE_FILE
        self.lock = threading.Lock()
        try:
            self.data: dict[str, dict[str, object]] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.data = {}

    def is_verified(self, path: Path, rel: PurePosixPath, sha: str | None, size: int) -> bool:
        e = self.data.get(str(rel))
        if not e or not path.is_file():
            return False
        st = path.stat()
        same = e.get("size") == st.st_size == size and e.get("mtime_ns") == st.st_mtime_ns
        return same and (sha is None or e.get("sha256") == sha)

    def record(self, path: Path, rel: PurePosixPath, sha: str) -> None:
        st = path.stat()
        with self.lock:
            self.data[str(rel)] = {"sha256": sha, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
            write_atomic(self.path, json.dumps(self.data, indent=1, sort_keys=True),
                         fsync=False)

    def sha(self, rel: PurePosixPath) -> str | None:
        e = self.data.get(str(rel))
        return str(e["sha256"]) if e else None


def bytes_to_fetch(dest: Path, items: Sequence[Item]) -> int:
    """Bytes still to download (verified files and `.part` prefixes not counted)."""
    state = VerifiedState(dest)
    need = 0
    for it in items:
        path = dest / it.rel
        if state.is_verified(path, it.rel, it.sha256, it.size):
            continue
        part = path.with_name(path.name + ".part")
        have = part.stat().st_size if part.is_file() and not part.is_symlink() else 0
        need += it.size - min(have, it.size)
    return need


def check_free_space(dest: Path, need: int, what: str) -> None:
    """Refuse before downloading when the filesystem of `dest` lacks `need` bytes."""
    probe = dest
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need:
        raise CheckpointError(
            f"not enough disk in {dest}: {what} need {_mib(need)}, {_mib(free)} free"
        )


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def fetch_all(
    dest: Path,
    items: Sequence[Item],
    opener: Opener,
    *,
    jobs: int = 8,
    on_bytes: Callable[[int], None] = lambda _n: None,
    on_done: Callable[[Outcome], None] = lambda _o: None,
) -> list[Outcome]:
    """Fetch every item in parallel (at most `jobs` streams); raise on the first failure.

    `stop` is honoured between chunks: on KeyboardInterrupt the other streams stop and keep
    their `.part` files for the next run.
    """
    dest.mkdir(parents=True, exist_ok=True)
    state = VerifiedState(dest)
    stop = threading.Event()

    def one(it: Item) -> Outcome:
        out = _fetch_one(dest, it, opener, state, stop, on_bytes)
        on_done(out)
        return out

    pool = ThreadPoolExecutor(max_workers=max(1, min(jobs, len(items) or 1)))
    futures = [pool.submit(one, it) for it in items]
    try:
        return [f.result() for f in futures]
    except BaseException:
        stop.set()
        for f in futures:
            f.cancel()
        raise
    finally:
        pool.shutdown(wait=True)


def _fetch_one(
    dest: Path,
    it: Item,
    opener: Opener,
    state: VerifiedState,
    stop: threading.Event,
    on_bytes: Callable[[int], None],
) -> Outcome:
    path = safe_local_path(dest, it.rel)
    if state.is_verified(path, it.rel, it.sha256, it.size):
        on_bytes(it.size)
        return Outcome(it, state.sha(it.rel) or "", 0, "verified earlier")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():  # present but not recorded: hash it, never trust it
        digest = sha256_file(path)
        if path.stat().st_size == it.size and (it.sha256 is None or digest == it.sha256):
            state.record(path, it.rel, digest)
            on_bytes(it.size)
            return Outcome(it, digest, 0, "verified earlier")
        path.unlink()
    part = safe_local_path(dest, it.rel.with_name(it.rel.name + ".part"))
    action = "fetched"
    fetched = 0
    for attempt in (1, 2):
        have = part.stat().st_size if part.is_file() else 0
        if have > it.size:
            part.unlink()
            have = 0
        h = sha256_update(hashlib.sha256(), part) if have else hashlib.sha256()
        if have:
            action = "resumed"
            on_bytes(have)
        fetched += _stream(it, opener, part, have, h, stop, on_bytes)
        digest = h.hexdigest()
        size = part.stat().st_size
        if size == it.size and (it.sha256 is None or digest == it.sha256):
            os.chmod(part, 0o444)
            os.replace(part, path)
            state.record(path, it.rel, digest)
            return Outcome(it, digest, fetched, action if attempt == 1 else "refetched")
        part.unlink()
        on_bytes(-size)
        if attempt == 2:
            got = f"sha256 {digest[:12]}…, {size} bytes"
            raise CheckpointError(
                f"[{it.node}] {it.label}: {it.remote} does not verify after a refetch "
                f"({got}; manifest: sha256 {(it.sha256 or '-')[:12]}…, {it.size} bytes)"
            )
        action = "refetched"
    raise AssertionError("unreachable")


def _stream(
    it: Item,
    opener: Opener,
    part: Path,
    offset: int,
    h: hashlib._Hash,
    stop: threading.Event,
    on_bytes: Callable[[int], None],
) -> int:
    """Append the node's bytes from `offset` to `part`: at most `it.size - offset` of them.

    The node's stream is read at most one byte past the manifest size: a longer (or endless)
    stream stops there with a CheckpointError and nothing past the manifest size is written.
    """
    n, limit = 0, it.size - offset
    # O_NOFOLLOW: a symlink planted at the `.part` name is refused, never written through
    try:
        fd = os.open(part, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        raise CheckpointError(f"[{it.node}] {it.label}: cannot write {part}: {e.strerror}") from e
    with os.fdopen(fd, "ab") as out, opener(it.node, it.remote, offset) as src:  # type: ignore[attr-defined]
        while True:
            if stop.is_set():
                raise CheckpointError(f"[{it.node}] {it.label}: stopped, {part} kept to resume")
            chunk = src.read(min(CHUNK, limit - n + 1))
            if not chunk:
                return n
            if n + len(chunk) > limit:
                out.flush()
                os.truncate(part, offset + n)  # keep only what may be a prefix of the file
                raise CheckpointError(
                    f"[{it.node}] {it.label}: {it.remote} is longer than its manifest entry "
                    f"({it.size} bytes); stopped after {offset + n} bytes")
            out.write(chunk)
            h.update(chunk)
            n += len(chunk)
            on_bytes(len(chunk))
