"""Checkpoint manifest, atomic save, keep-last-K and resume selection (pure filesystem logic)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from orchestrate_bloom.ckpt import layout as ck
from orchestrate_bloom.fileio import sha256_file

LAYOUT = {"data_parallel": 2, "model_parallel": 1, "pipeline_stage": 1}


def _save(out: Path, rank: int, step: int, payload: bytes = b"weights") -> Path:
    return ck.save(lambda p: p.write_bytes(payload * 100), out, rank, step, {"layout": LAYOUT})


def test_save_writes_checkpoint_then_manifest(tmp_path: Path) -> None:
    path = _save(tmp_path, 1, 20)
    assert path == tmp_path / "checkpoint" / "rank_1" / "bloom_rank_1-20.ckpt"
    manifest = ck.read_manifest(tmp_path, 1, 20)
    assert manifest is not None
    assert manifest["step"] == 20 and manifest["rank"] == 1 and manifest["size"] == 700
    assert manifest["sha256"] == sha256_file(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["bloom_rank_1-20.ckpt",
                                                             "bloom_rank_1-20.json"]
    assert ck.is_complete(tmp_path, 1, 20, LAYOUT)
    assert not ck.is_complete(tmp_path, 1, 20, {**LAYOUT, "data_parallel": 4})


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    def boom(p: Path) -> None:
        p.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        ck.save(boom, tmp_path, 0, 5, {"layout": LAYOUT})
    assert list(ck.rank_dir(tmp_path, 0).iterdir()) == []


def test_truncated_or_manifestless_steps_are_not_complete(tmp_path: Path) -> None:
    for step in (10, 20, 30):
        _save(tmp_path, 0, step)
    truncated = ck.ckpt_path(tmp_path, 0, 30)
    truncated.write_bytes(truncated.read_bytes()[:100])
    ck.manifest_path(tmp_path, 0, 20).unlink()
    assert ck.complete_steps(tmp_path, 0, LAYOUT) == [10]


def _node_cli(*args: str) -> dict[str, object]:
    """`python -m orchestrate_bloom.ckpt.layout ...`, as `resume --exclude-node` runs it."""
    run = subprocess.run([sys.executable, "-m", "orchestrate_bloom.ckpt.layout", *args],
                         capture_output=True, text=True, timeout=60, check=True)
    doc: dict[str, object] = json.loads(run.stdout)
    return doc


def test_newest_step_complete_on_every_rank(tmp_path: Path) -> None:
    """The node command lists each rank's complete steps; newest_common picks 20, not 30 (rank
    1 never saved it) nor a step whose file is a link."""
    out = tmp_path / "output"
    for step in (10, 20, 30):
        _save(out, 0, step)
    for step in (10, 20):
        _save(out, 1, step)
    link = ck.ckpt_path(out, 1, 10)
    target = tmp_path / "elsewhere.ckpt"
    link.rename(target)
    link.symlink_to(target)  # same bytes, but a link: not complete
    found = _node_cli("steps", "--job-dir", str(tmp_path), "--layout", json.dumps(LAYOUT),
                      "--rank", "0", "--rank", "1")
    assert found == {"0": [10, 20, 30], "1": [20]}
    assert ck.newest_common(found.values()) == 20  # type: ignore[arg-type]
    assert ck.newest_common([[10, 20], []]) is None


def test_trainer_resumes_from_its_newest_complete_step(tmp_path: Path) -> None:
    """agree_resume_step (single rank): the newest complete step not beyond train.steps."""
    from orchestrate_bloom.train.trainer import Dist, Layout, agree_resume_step

    for step in (10, 20, 30):
        _save(tmp_path, 0, step)
    ck.manifest_path(tmp_path, 0, 30).unlink()
    layout = Layout(2, 1, 1, 1, 1, (2,))
    assert agree_resume_step(tmp_path, Dist("single", 0, 1), layout, 100, None) == 20
    assert agree_resume_step(tmp_path, Dist("single", 0, 1), layout, 15, None) == 10


def test_adopt_copies_a_replica_for_renumbered_ranks(tmp_path: Path) -> None:
    out = tmp_path / "output"
    _save(out, 0, 20, b"replica")
    new_layout = {**LAYOUT, "data_parallel": 3}
    doc = _node_cli("adopt", "--job-dir", str(tmp_path), "--step", "20", "--layout",
                    json.dumps(new_layout), "--old-layout", json.dumps(LAYOUT),
                    "--pair", "0:0", "--pair", "2:0")
    assert doc == {"adopted": 2}
    copy = ck.ckpt_path(out, 2, 20)
    assert copy.read_bytes() == ck.ckpt_path(out, 0, 20).read_bytes()
    assert copy.stat().st_mode & 0o777 == 0o400
    assert ck.complete_steps(out, 2, new_layout) == [20]
    assert ck.read_manifest(out, 2, 20)["converted_from"] == {"rank": 0, "layout": LAYOUT}  # type: ignore[index]
    assert ck.complete_steps(out, 0, new_layout) == [20]
    bad = subprocess.run([sys.executable, "-m", "orchestrate_bloom.ckpt.layout", "adopt",
                          "--job-dir", str(tmp_path), "--step", "30", "--layout", "{}",
                          "--old-layout", "{}", "--pair", "1:0"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 1 and "rank 0: no readable manifest for step 30" in bad.stderr


def test_prune_keeps_the_newest(tmp_path: Path) -> None:
    for step in (10, 20, 30, 40):
        _save(tmp_path, 0, step)
    assert ck.prune(tmp_path, 0, keep=2) == [10, 20]
    assert ck.listed_steps(tmp_path, 0) == [30, 40]
    assert not ck.ckpt_path(tmp_path, 0, 10).exists()
