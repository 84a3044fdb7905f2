"""Verified, resumable fetch (orchestrator/ckpt/fetch.py) from local files, no network."""

from __future__ import annotations

import hashlib
import io
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

import pytest
from orchestrate_bloom.fileio import sha256_file

from orchestrator.ckpt import fetch as ckpt_fetch
from orchestrator.errors import CheckpointError


class Source:
    """Serves real files by path; counts opened offsets; can corrupt the first N reads."""

    def __init__(self, corrupt_times: int = 0) -> None:
        self.opened: list[tuple[str, int]] = []
        self.corrupt_times = corrupt_times

    @contextmanager
    def __call__(self, _node: str, path: PurePosixPath, offset: int):  # type: ignore[no-untyped-def]
        self.opened.append((path.name, offset))
        data = Path(path).read_bytes()[offset:]
        if self.corrupt_times > 0 and data:
            self.corrupt_times -= 1
            data = bytes([data[0] ^ 1]) + data[1:]
        yield io.BytesIO(data)


def _item(src: Path, rel: str, sha: str | None = "auto") -> ckpt_fetch.Item:
    data = src.read_bytes()
    digest = hashlib.sha256(data).hexdigest() if sha == "auto" else sha
    remote = PurePosixPath(src)
    return ckpt_fetch.Item("n1", remote, PurePosixPath(rel), len(data), digest, "rank 0")


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    d = tmp_path / "remote"
    d.mkdir()
    (d / "a.ckpt").write_bytes(bytes(range(256)) * 9000)  # ~2.2 MiB: several chunks
    (d / "b.ckpt").write_bytes(b"b" * 1000)
    return d


def test_fetch_verifies_and_rerun_skips_verified(tmp_path: Path, remote: Path) -> None:
    dest = tmp_path / "dest"
    items = [_item(remote / "a.ckpt", "rank_0/a.ckpt"), _item(remote / "b.ckpt", "rank_1/b.ckpt")]
    src = Source()
    seen: list[int] = []
    out = ckpt_fetch.fetch_all(dest, items, src, on_bytes=seen.append)
    assert [o.action for o in out] == ["fetched", "fetched"]
    assert (dest / "rank_0/a.ckpt").read_bytes() == (remote / "a.ckpt").read_bytes()
    assert sum(seen) == sum(i.size for i in items)
    assert not list(dest.rglob("*.part"))
    again = Source()
    out = ckpt_fetch.fetch_all(dest, items, again)
    assert [o.action for o in out] == ["verified earlier"] * 2 and again.opened == []
    assert ckpt_fetch.bytes_to_fetch(dest, items) == 0


def test_partial_file_is_hashed_and_resumed(tmp_path: Path, remote: Path) -> None:
    dest = tmp_path / "dest"
    it = _item(remote / "a.ckpt", "rank_0/a.ckpt")
    (dest / "rank_0").mkdir(parents=True)
    (dest / "rank_0/a.ckpt.part").write_bytes((remote / "a.ckpt").read_bytes()[:1_500_000])
    assert ckpt_fetch.bytes_to_fetch(dest, [it]) == it.size - 1_500_000
    src = Source()
    [o] = ckpt_fetch.fetch_all(dest, [it], src)
    assert o.action == "resumed" and o.fetched == it.size - 1_500_000
    assert src.opened == [("a.ckpt", 1_500_000)]
    assert (dest / "rank_0/a.ckpt").read_bytes() == (remote / "a.ckpt").read_bytes()


def test_corrupt_partial_is_refetched_not_trusted(tmp_path: Path, remote: Path) -> None:
    dest = tmp_path / "dest"
    it = _item(remote / "a.ckpt", "rank_0/a.ckpt")
    (dest / "rank_0").mkdir(parents=True)
    (dest / "rank_0/a.ckpt.part").write_bytes(b"\xff" * 1000)  # wrong bytes
    src = Source()
    [o] = ckpt_fetch.fetch_all(dest, [it], src)
    assert o.action == "refetched" and src.opened == [("a.ckpt", 1000), ("a.ckpt", 0)]
    assert sha256_file(dest / "rank_0/a.ckpt") == it.sha256


def test_transfer_corruption_is_refetched_once_then_refused(tmp_path: Path, remote: Path) -> None:
    it = _item(remote / "b.ckpt", "rank_1/b.ckpt")
    [o] = ckpt_fetch.fetch_all(tmp_path / "d1", [it], Source(corrupt_times=1))
    assert o.action == "refetched"
    with pytest.raises(CheckpointError, match=r"\[n1\] rank 0: .*b.ckpt does not verify after"):
        ckpt_fetch.fetch_all(tmp_path / "d2", [it], Source(corrupt_times=2))
    assert not (tmp_path / "d2/rank_1/b.ckpt").exists()
    assert not list((tmp_path / "d2").rglob("*.part"))


def test_local_file_changed_after_verification_is_rehashed(tmp_path: Path, remote: Path) -> None:
    dest = tmp_path / "dest"
    it = _item(remote / "b.ckpt", "rank_1/b.ckpt")
    ckpt_fetch.fetch_all(dest, [it], Source())
    target = dest / "rank_1/b.ckpt"
    target.chmod(0o644)
    target.write_bytes(b"c" * 1000)  # same size, different content
    src = Source()
    [o] = ckpt_fetch.fetch_all(dest, [it], src)
    assert o.action == "fetched" and target.read_bytes() == b"b" * 1000


def test_free_space_check_names_need_and_free(tmp_path: Path) -> None:
    ckpt_fetch.check_free_space(tmp_path / "new" / "dest", 1, "1 B to download")
    with pytest.raises(CheckpointError, match=r"not enough disk in .*: x need .* free"):
        ckpt_fetch.check_free_space(tmp_path, 1 << 60, "x")
