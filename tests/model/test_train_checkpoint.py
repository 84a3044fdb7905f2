"""Checkpoint manifest, atomic save, keep-last-K and resume selection (pure filesystem logic)."""

from __future__ import annotations

from pathlib import Path

from orchestrate_bloom import checkpoint as ck

LAYOUT = {"data_parallel": 2, "model_parallel": 1, "pipeline_stage": 1}


def _save(out: Path, rank: int, step: int, payload: bytes = b"weights") -> Path:
    return ck.save(lambda p: p.write_bytes(payload * 100), out, rank, step, {"layout": LAYOUT})


def test_save_writes_checkpoint_then_manifest(tmp_path: Path) -> None:
    path = _save(tmp_path, 1, 20)
    assert path == tmp_path / "checkpoint" / "rank_1" / "bloom_rank_1-20.ckpt"
    manifest = ck.read_manifest(tmp_path, 1, 20)
    assert manifest is not None
    assert manifest["step"] == 20 and manifest["rank"] == 1 and manifest["size"] == 700
    assert manifest["sha256"] == ck.sha256_of(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["bloom_rank_1-20.ckpt",
                                                             "bloom_rank_1-20.json"]
    assert ck.is_complete(tmp_path, 1, 20, LAYOUT)
    assert not ck.is_complete(tmp_path, 1, 20, {**LAYOUT, "data_parallel": 4})


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    def boom(p: Path) -> None:
        p.write_bytes(b"half")
        raise OSError("disk full")

    try:
        ck.save(boom, tmp_path, 0, 5, {"layout": LAYOUT})
    except OSError:
        pass
    assert list(ck.rank_dir(tmp_path, 0).iterdir()) == []


def test_truncated_or_manifestless_steps_are_not_complete(tmp_path: Path) -> None:
    for step in (10, 20, 30):
        _save(tmp_path, 0, step)
    truncated = ck.ckpt_path(tmp_path, 0, 30)
    truncated.write_bytes(truncated.read_bytes()[:100])
    ck.manifest_path(tmp_path, 0, 20).unlink()
    assert ck.complete_steps(tmp_path, 0, LAYOUT) == [10]


def test_resume_takes_newest_step_complete_on_every_rank(tmp_path: Path) -> None:
    for step in (10, 20, 30):
        _save(tmp_path, 0, step)
    for step in (10, 20):
        _save(tmp_path, 1, step)
    per_rank = [ck.complete_steps(tmp_path, r, LAYOUT) for r in (0, 1)]
    assert ck.newest_common(per_rank) == 20
    assert ck.newest_common([[10, 20], []]) is None
    assert ck.newest_common([]) is None


def test_prune_keeps_the_newest(tmp_path: Path) -> None:
    for step in (10, 20, 30, 40):
        _save(tmp_path, 0, step)
    assert ck.prune(tmp_path, 0, keep=2) == [10, 20]
    assert ck.listed_steps(tmp_path, 0) == [30, 40]
    assert not ck.ckpt_path(tmp_path, 0, 10).exists()
