"""Step choice, DP dedupe and path safety of orchestrator/ckpt.py (pure logic)."""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath

import pytest

from orchestrator.ckpt import select as ckpt
from orchestrator.errors import CheckpointError

JOB = "/w/jobs/j1"
LAYOUT = {"data_parallel": 2, "model_parallel": 1, "pipeline_stage": 1}


def _manifest(rank: int, step: int, sha: str = "a" * 64, size: int = 10, **extra: object) -> str:
    doc = {"step": step, "rank": rank, "sha256": sha, "size": size, "layout": LAYOUT, **extra}
    return json.dumps(doc)


def _raw(ranks: dict[int, dict[int, dict]], strategy: dict | None = None) -> dict:
    """A node listing as LIST_SCRIPT prints it: rank -> step -> overrides."""
    out: dict = {"job_dir": JOB, "ranks": {}, "strategy": strategy or {}}
    for r, steps in ranks.items():
        files = {}
        for s, o in steps.items():
            size = o.get("file_size", 10)
            files[f"bloom_rank_{r}-{s}.ckpt"] = {"kind": o.get("kind", "file"), "size": size}
            if o.get("manifest", True):
                text = o.get("text", _manifest(r, s, o.get("sha", "a" * 64)))
                files[f"bloom_rank_{r}-{s}.json"] = {"kind": "file", "size": 1, "text": text}
        out["ranks"][str(r)] = {"kind": "dir", "files": files}
    return out


def _listing(node: str, ranks: dict[int, dict[int, dict]]) -> ckpt.NodeListing:
    return ckpt.parse_listing(node, _raw(ranks), ranks)


def test_newest_step_complete_on_every_rank_is_chosen() -> None:
    a = _listing("a", {0: {100: {}, 200: {}}, 1: {100: {}, 200: {}}})
    b = _listing("b", {2: {100: {}, 200: {}}, 3: {100: {}, 200: {"manifest": False}}})
    assert ckpt.choose_step([a, b]) == 100
    assert ckpt.choose_step([a, b], step=100) == 100


def test_step_not_on_every_rank_names_ranks_steps_and_reasons() -> None:
    a = _listing("a", {0: {100: {}, 200: {}}, 1: {200: {"file_size": 9}}})
    b = _listing("b", {2: {100: {}}})
    with pytest.raises(CheckpointError) as err:
        ckpt.choose_step([a, b])
    msg = str(err.value)
    assert "no step is complete on every rank" in msg
    assert "rank 1 on a lacks step 100, 200" in msg and "has 9 bytes, manifest says 10" in msg
    assert "rank 2 on b lacks step 200" in msg and "rank 0" not in msg
    with pytest.raises(CheckpointError, match=r"step 200 is not complete.*\n  rank 1 on a"):
        ckpt.choose_step([a, b], step=200)


def test_bad_manifests_and_symlinks_are_refused_and_named() -> None:
    a = _listing(
        "a",
        {
            0: {
                1: {"text": "{not json"},
                2: {"text": _manifest(0, 3)},
                3: {"kind": "symlink"},
                4: {"sha": "xyz"},
                5: {},
            }
        },
    )
    assert set(a.ckpts[0]) == {5}
    why = " | ".join(a.problems[0])
    assert "bloom_rank_0-1.json: not JSON" in why
    assert "step is 3, file name says 2" in why
    assert "bloom_rank_0-3.ckpt is a symlink, refused" in why
    assert "sha256 is 'xyz'" in why


def test_unsafe_remote_names_never_become_candidates() -> None:
    raw = _raw({0: {7: {}}})
    files = raw["ranks"]["0"]["files"]
    files["../../etc/passwd"] = {"kind": "file", "size": 1}
    files["bloom_rank_0-8.ckpt/../x"] = {"kind": "file", "size": 1}
    files["bloom_rank_1-7.ckpt"] = {"kind": "file", "size": 10}
    raw["strategy"] = {
        "../ckpt_strategy_rank_0.ckpt": {"kind": "file", "size": 1},
        "ckpt_strategy_rank_0.ckpt": {"kind": "symlink", "size": 1},
    }
    lst = ckpt.parse_listing("a", raw, [0])
    assert set(lst.ckpts[0]) == {7}
    assert lst.strategies == {}
    assert any("'bloom_rank_0-8.ckpt/../x'" in p for p in lst.problems[0])
    assert any("belongs to rank 1" in p for p in lst.problems[0])


def test_rank_folder_that_is_a_symlink_or_missing_is_named() -> None:
    raw = _raw({0: {7: {}}})
    raw["ranks"]["0"]["kind"] = "symlink"
    lst = ckpt.parse_listing("a", raw, [0, 1])
    assert lst.ckpts == {0: {}, 1: {}}
    assert lst.problems[0] == (f"{JOB}/output/checkpoint/rank_0 is symlink",)
    assert lst.problems[1] == (f"{JOB}/output/checkpoint/rank_1 is missing",)


def test_pure_dp_fetches_one_replica_and_counts_saved_bytes() -> None:
    a = _listing("a", {r: {5: {"sha": f"{r}" * 64}} for r in range(4)})
    plan = ckpt.plan_fetch(ckpt.rank_ckpts([a], 5), None)
    assert [c.rank for c in plan.fetch] == [0]
    assert plan.skipped == (1, 2, 3) and plan.saved_bytes == 30


def test_needed_ranks_with_identical_files_are_fetched_once() -> None:
    sha = {0: "a", 1: "b", 2: "a", 3: "b", 4: "c", 5: "d"}
    a = _listing("a", {r: {5: {"sha": s * 64}} for r, s in sha.items()})
    plan = ckpt.plan_fetch(ckpt.rank_ckpts([a], 5), [0, 1, 2, 3])
    assert [c.rank for c in plan.fetch] == [0, 1]
    assert plan.copies == {2: 0, 3: 1} and plan.skipped == (4, 5) and plan.saved_bytes == 40
    with pytest.raises(CheckpointError, match=r"needs ranks \[9\]"):
        ckpt.plan_fetch(ckpt.rank_ckpts([a], 5), [0, 9])


def test_manifests_disagreeing_on_layout_are_refused() -> None:
    raw = _raw({0: {5: {}}, 1: {5: {}}})
    other = {**LAYOUT, "data_parallel": 4}
    raw["ranks"]["1"]["files"]["bloom_rank_1-5.json"]["text"] = json.dumps(
        {"step": 5, "rank": 1, "sha256": "a" * 64, "size": 10, "layout": other}
    )
    lst = ckpt.parse_listing("a", raw, [0, 1])
    with pytest.raises(CheckpointError, match="rank 1 on a: manifest says"):
        ckpt.job_layout(ckpt.rank_ckpts([lst], 5))
    layout, _ = ckpt.job_layout({0: lst.ckpts[0][5]})
    assert layout == ckpt.Layout(2, 1, 1) and layout.pure_dp


@pytest.mark.parametrize("rel", ["../x", "/etc/passwd", "a/../../x", ""])
def test_safe_local_path_refuses_escapes(tmp_path: Path, rel: str) -> None:
    with pytest.raises(CheckpointError, match="refusing"):
        ckpt.safe_local_path(tmp_path, PurePosixPath(rel) if rel else PurePosixPath("."))


def test_safe_local_path_refuses_symlinked_folder(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(outside, dest / "rank_0")
    with pytest.raises(CheckpointError, match="symlink"):
        ckpt.safe_local_path(dest, PurePosixPath("rank_0/bloom_rank_0-1.ckpt"))
    ok = ckpt.safe_local_path(dest, PurePosixPath("rank_1/bloom_rank_1-1.ckpt"))
    assert ok == dest.resolve() / "rank_1" / "bloom_rank_1-1.ckpt"
