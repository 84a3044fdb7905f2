"""File helpers every part shares: the one sha256 of a file, the one atomic write.

    sha256_file(Path("x.ckpt"))                      # hex digest, read in 1 MiB blocks
    write_atomic(Path("a.json"), "{}\\n", mode=0o644)  # temp file beside it, fsync, rename
    with atomic_target(Path("out.ckpt")) as tmp:     # for writers that need a path
        save_checkpoint(..., str(tmp))               # renamed over out.ckpt on success

Standard library only, so the control plane (orchestrator/) imports it as well as the model
code and the node-side tools. A failed write leaves the destination as it was and no temp file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BLOCK = 1 << 20


def sha256_update(h: hashlib._Hash, path: Path, limit: int | None = None) -> hashlib._Hash:
    """Feed the first `limit` bytes of `path` (all when None) into `h`; returns `h`."""
    left = limit
    with open(path, "rb") as f:
        while left is None or left > 0:
            chunk = f.read(BLOCK if left is None else min(BLOCK, left))
            if not chunk:
                break
            h.update(chunk)
            if left is not None:
                left -= len(chunk)
    return h


def sha256_file(path: Path) -> str:
    """Hex sha256 of a local file."""
    return sha256_update(hashlib.sha256(), path).hexdigest()


@contextmanager
def atomic_target(path: Path, mode: int | None = None, create: bool = False) -> Iterator[Path]:
    """A temp path beside `path` (same folder, so the rename is atomic) for a writer to fill.

    On success it is chmod'ed to `mode` (when given) and renamed over `path`; on any error it
    is removed. The temp name keeps `path`'s suffix (MindSpore's save_checkpoint wants .ckpt).

    Args:
        create: leave the temp file created (empty); by default it does not exist yet, for
            writers that refuse to overwrite (MindSpore's save_checkpoint writes read-only
            files and will not replace one).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix or ".tmp",
                                dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    if not create:
        tmp.unlink()
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, data: str | bytes, mode: int = 0o644, fsync: bool = True) -> None:
    """Write `data` (text as UTF-8) to `path` with `mode`, through a temp file and os.replace."""
    raw = data.encode() if isinstance(data, str) else data
    with atomic_target(path, mode, create=True) as tmp:
        with open(tmp, "wb") as f:
            f.write(raw)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
