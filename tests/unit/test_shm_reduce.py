"""The shared-memory gradient mean of ranks on one node (orchestrate_bloom.train.shm_reduce).

    python -m pytest tests/unit/test_shm_reduce.py -q

Real processes (fork) on a real /dev/shm file: the mean over ranks of several steps, the same
step in its parts (reduce_scatter, all_sum, all_gather) with the shared state rows, a rank
that never arrives, and the agreement (every rank or none, the file removed after mapping).
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np
import pytest
from orchestrate_bloom.train import shm_reduce
from orchestrate_bloom.train.shm_reduce import ShmMean

pytestmark = pytest.mark.skipif(
    platform.machine() not in ("x86_64", "aarch64") or not shm_reduce.SHM_DIR.is_dir(),
    reason="futex numbers known for x86_64/aarch64; needs /dev/shm")


def _in_children(ranks: int, body: str, path: Path) -> list[int]:
    """Run `body(rank)` (a function of this module) in `ranks` forked processes; exit codes."""
    pids = []
    for rank in range(ranks):
        pid = os.fork()
        if pid == 0:  # the child never returns into pytest
            code = 1
            try:
                code = globals()[body](rank, ranks, path)
            finally:
                os._exit(code)
        pids.append(pid)
    return [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]


def _mapped(path: Path, rank: int, ranks: int, total: int, state_rows: int = 0,
            **kw: object) -> ShmMean:
    """Rank `rank`'s ShmMean over the file the test created at `path`."""
    fd = shm_reduce.open_existing(path, shm_reduce.file_size(ranks, total, state_rows))
    assert fd is not None, path
    try:
        return ShmMean(fd, rank, ranks, total, state_rows=state_rows, **kw)  # type: ignore[arg-type]
    finally:
        os.close(fd)


def _created(path: Path, ranks: int, total: int, state_rows: int = 0) -> None:
    fd = shm_reduce.create(path, shm_reduce.file_size(ranks, total, state_rows))
    assert fd is not None, path
    os.close(fd)


def _steps(rank: int, ranks: int, path: Path) -> int:
    mean = _mapped(path, rank, ranks, 1001, wait_s=30)
    total = _mapped(Path(f"{path}-sum"), rank, ranks, 2, wait_s=30, divide=False)
    for step in range(5):  # both parities twice: a fast rank must not overwrite a slow one
        parts = [np.full((7, 11), rank + step, np.float32), np.full(924, rank * 2.0, np.float32)]
        out = mean(parts)
        want = np.concatenate([np.full(77, (ranks - 1) / 2 + step), np.full(924, ranks - 1.0)])
        if out.shape != (1001,) or not np.allclose(out, want):
            return 3
        if not np.array_equal(total([np.array([1.0, rank], np.float32)]), [ranks, 3.0]):
            return 6
    return 0


def _parts(rank: int, ranks: int, path: Path) -> int:
    """Each rank doubles its chunk of the mean and adds its rank; every rank gets all chunks."""
    mean = _mapped(path, rank, ranks, 1001, state_rows=2, wait_s=30)
    bounds = [k * 1001 // ranks for k in range(ranks + 1)]
    owner = np.repeat(np.arange(ranks), np.diff(bounds))  # the rank whose chunk a value is in
    for step in range(5):  # both parities twice
        chunk = mean.reduce_scatter([np.full(1001, rank + step, np.float32)])
        if chunk.size != bounds[rank + 1] - bounds[rank] or not np.allclose(
                chunk, (ranks - 1) / 2 + step):
            return 3
        if mean.all_sum(rank + 0.25) != sum(k + 0.25 for k in range(ranks)):
            return 4
        chunk[:] = chunk * 2 + rank
        mean.state[1, mean.chunk] = step * 10 + rank  # this rank's part of the node's state
        out = mean.all_gather()
        if not np.allclose(out, (ranks - 1) + 2 * step + owner):
            return 5
        if not np.array_equal(mean.state[1], step * 10 + owner) or mean.state[0].any():
            return 6
    return 0


def _turns(rank: int, ranks: int, path: Path) -> int:
    """Ranks 0-1 on "core" 4, 2-3 on "core" 6, rank 4 on a core of its own: a group's ranks
    enter turn() one at a time, in rank order, every round; the lone rank never waits."""
    mean = _mapped(path, rank, ranks, 8, state_rows=1, wait_s=30)
    mean.share_core([4, 4, 6, 6, 9][rank])
    if (mean.group is None) != (rank == 4):
        return 3
    for step in range(6):
        with mean.turn():
            if rank != 4:
                first, place, size = mean.group or (0, 0, 0)
                if mean.state[0, first] != step * size + place:  # the group's entries so far
                    return 4
                time.sleep(0.002)  # a peer that entered too early would see the old count
                mean.state[0, first] += 1
        mean.all_sum(0.0)  # the step's barrier
    return 0


def _exchanges(rank: int, ranks: int, path: Path) -> int:
    """Many exchanges in a row, no step between them: each one's values are its own."""
    mean = _mapped(path, rank, ranks, 8, wait_s=30)
    for k in range(200):
        if mean.exchange(rank + k * 10.0) != [r + k * 10.0 for r in range(ranks)]:
            return 3
    return 0


def _alone(rank: int, ranks: int, path: Path) -> int:
    mean = _mapped(path, rank, ranks + 1, 8, wait_s=0.3)  # rank 1 never comes
    try:
        mean([np.zeros(8, np.float32)])
    except RuntimeError as e:
        return 0 if "rank 1 did not reach the gradient barrier" in str(e) else 4
    return 5


def test_ranks_get_the_mean_of_every_step() -> None:
    path = shm_reduce.SHM_DIR / f"orchestrate-test-{os.getpid()}"
    try:
        _created(path, 3, 1001)
        _created(Path(f"{path}-sum"), 3, 2)
        assert _in_children(3, "_steps", path) == [0, 0, 0]
    finally:
        path.unlink(missing_ok=True)
        Path(f"{path}-sum").unlink(missing_ok=True)


def test_a_step_in_parts_shares_each_ranks_chunk_and_the_state() -> None:
    path = shm_reduce.SHM_DIR / f"orchestrate-test-parts-{os.getpid()}"
    try:
        _created(path, 3, 1001, state_rows=2)
        assert _in_children(3, "_parts", path) == [0, 0, 0]
    finally:
        path.unlink(missing_ok=True)


def test_ranks_on_one_core_take_turns_in_rank_order() -> None:
    path = shm_reduce.SHM_DIR / f"orchestrate-test-turns-{os.getpid()}"
    try:
        _created(path, 5, 8, state_rows=1)
        assert _in_children(5, "_turns", path) == [0] * 5
    finally:
        path.unlink(missing_ok=True)


def test_exchanges_in_a_row_do_not_overwrite_each_other() -> None:
    path = shm_reduce.SHM_DIR / f"orchestrate-test-exchanges-{os.getpid()}"
    try:
        _created(path, 4, 8)
        assert _in_children(4, "_exchanges", path) == [0] * 4
    finally:
        path.unlink(missing_ok=True)


def test_a_rank_that_never_arrives_fails_the_others(tmp_path: Path) -> None:
    _created(tmp_path / "shm", 2, 8)
    assert _in_children(1, "_alone", tmp_path / "shm") == [0]


def test_every_rank_or_none_and_the_name_is_removed() -> None:
    seen: list[list[float]] = []

    def reduce(values: list[float]) -> np.ndarray:  # a one-rank "job": the sum is the input
        seen.append(list(values))
        return np.asarray(values, np.float32)

    assert shm_reduce.open_means(0, 1, 16, reduce, ok=False) is None  # 0 of 1 ranks can
    means = shm_reduce.open_means(0, 1, 16, reduce, ok=True)
    assert means is not None and len(seen) == 3  # agree + mapped, after the refused one
    name = f"orchestrate-grads-{os.getuid()}-{int(seen[1][1]):06x}"
    for path in (name, f"{name}-small"):
        assert not (shm_reduce.SHM_DIR / path).exists()  # rank 0 removed it once mapped
    grads, small = means
    assert np.array_equal(grads([np.arange(16, dtype=np.float32)]), np.arange(16))
    assert small.total == shm_reduce.SMALL and not small.divide


def test_usable_only_when_every_rank_is_on_this_node() -> None:
    env = {"ORCHESTRATE_LOCAL_RANKS": "8"}
    assert shm_reduce.usable(8, 164_000, env)
    assert not shm_reduce.usable(16, 164_000, env)  # 2 nodes x 8: MindSpore's AllReduce
    assert not shm_reduce.usable(8, 164_000, {})  # started by hand
    assert not shm_reduce.usable(8, shm_reduce.MAX_BYTES, env)  # too large
    assert not shm_reduce.usable(8, 164_000, {**env, "ORCHESTRATE_SHM_REDUCE": "0"})  # off
    assert shm_reduce.usable(8, 164_000, {**env, "ORCHESTRATE_SHM_REDUCE": "1"})


def test_a_planted_name_or_symlink_is_never_used(tmp_path: Path) -> None:
    """Rank 0 creates the file exclusively; the others open only their own regular file of the
    expected size, never through a symlink (/dev/shm is shared by every user)."""
    size = shm_reduce.file_size(2, 16)
    planted, target = tmp_path / "planted", tmp_path / "target"
    planted.write_bytes(b"x" * size)
    target.write_bytes(b"")
    (tmp_path / "link").symlink_to(target)
    assert shm_reduce.create(planted, size) is None  # exists: not reused, not truncated
    assert planted.read_bytes() == b"x" * size
    assert shm_reduce.create(tmp_path / "link", size) is None and target.read_bytes() == b""
    assert shm_reduce.open_existing(tmp_path / "link", 0) is None  # a symlink, even to ours
    assert shm_reduce.open_existing(planted, size + 4) is None  # not the size rank 0 made
    fd = shm_reduce.create(tmp_path / "new", size)
    assert fd is not None and (tmp_path / "new").stat().st_mode & 0o777 == 0o600
    os.close(fd)
    ours = shm_reduce.open_existing(tmp_path / "new", size)
    assert ours is not None
    os.close(ours)
