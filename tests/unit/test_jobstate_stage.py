"""Staging on this machine through LocalTransport (real files, real bash; no SSH)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.inventory import parse_inventory
from orchestrator.jobs.stage import (
    COMMAND_MAX,
    INLINE_MAX,
    NodeBusyError,
    Tree,
    code_tree,
    data_tree,
    first_command,
    stage_node,
    tree_manifest,
)
from orchestrator.remote.local import LocalTransport
from orchestrator.render import RenderedFile


def _transport(workdir: Path) -> LocalTransport:
    inv = parse_inventory(f"defaults: {{connection: local, workdir: {workdir}}}\n"
                          "nodes: [{host: 127.0.0.1, name: n}]\n", "inv.yaml")
    return LocalTransport(inv.nodes[0])


def _rendered(text: str = "echo hi 'quoted' $(not run)\n") -> dict[str, RenderedFile]:
    return {"launch.sh": RenderedFile(text, 0o755), "job.yaml": RenderedFile("a: 1\n", 0o644)}


def test_cold_then_warm_stage(tmp_path: Path) -> None:
    work = tmp_path / "work"
    data = tmp_path / "mr"
    data.mkdir()
    (data / "x.bin").write_bytes(os.urandom(1000))
    trees = [code_tree(), data_tree(data)]
    t = _transport(work)
    cold = stage_node(t, "j-1", str(work), trees, _rendered(), {"env.sh": b"export S='x'\n"},
                      tmp_path)
    job = Path(cold.job_dir)
    assert cold.sent == len({f.sha256 for tr in trees for f in tr.files}) and cold.reused == 0
    assert (job / "launch.sh").read_text() == "echo hi 'quoted' $(not run)\n"
    assert (job / "code" / "model" / "train.py").is_file()
    assert (job / "data" / "mr" / "x.bin").read_bytes() == (data / "x.bin").read_bytes()
    assert (job / "env.sh").stat().st_mode & 0o777 == 0o600
    warm = stage_node(t, "j-2", str(work), trees, _rendered("v2\n"), {}, tmp_path)
    assert warm.sent == 0 and warm.reused == 2
    job2 = Path(warm.job_dir)
    assert (job2 / "launch.sh").read_text() == "v2\n"
    # the same inode: hard links from the node's tree cache, nothing copied
    inode = (job / "code/model/train.py").stat().st_ino
    assert (job2 / "code/model/train.py").stat().st_ino == inode
    again = stage_node(t, "j-2", str(work), trees, _rendered("v3\n"), {}, tmp_path)  # re-stage
    assert again.reused == 2 and (job2 / "launch.sh").read_text() == "v3\n"


def test_changed_file_makes_a_new_tree(tmp_path: Path) -> None:
    work, src = tmp_path / "work", tmp_path / "pkg"
    src.mkdir()
    (src / "a.py").write_text("1\n")
    (src / "b.py").write_text("2\n")
    t = _transport(work)
    first = stage_node(t, "j-1", str(work), [Tree.of(tree_manifest(src, "pkg"), "code")], {},
                       {}, tmp_path)
    (src / "b.py").write_text("3\n")
    second = stage_node(t, "j-2", str(work), [Tree.of(tree_manifest(src, "pkg"), "code")], {},
                        {}, tmp_path)
    assert first.sent == 2 and second.sent == 1 and second.reused == 0
    assert (Path(second.job_dir) / "code/pkg/b.py").read_text() == "3\n"
    assert (Path(first.job_dir) / "code/pkg/b.py").read_text() == "2\n"


def test_busy_node_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "jobs").mkdir(parents=True)
    stat = Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(") ", 1)[1].split()
    (work / "jobs" / "ACTIVE").write_text(f"other-job {os.getpid()} {stat[19]}\n")
    with pytest.raises(NodeBusyError, match="job other-job is running there"):
        stage_node(_transport(work), "j-1", str(work), [code_tree()], _rendered(), {}, tmp_path)
    assert not (work / "jobs" / "j-1" / "launch.sh").exists()
    # a stale ACTIVE (pid alive but another start time) does not block
    (work / "jobs" / "ACTIVE").write_text(f"other-job {os.getpid()} 1\n")
    stage_node(_transport(work), "j-1", str(work), [], _rendered(), {}, tmp_path)


def test_first_command_fits_one_argument() -> None:
    big = {"rank_table.json": RenderedFile("x" * INLINE_MAX, 0o644), **_rendered()}
    assert len(first_command("~/w", "j-1", [code_tree()], big)) < COMMAND_MAX


def test_large_rendered_file_is_uploaded(tmp_path: Path) -> None:
    work = tmp_path / "work"
    table = '{"server_list": [' + ", ".join(['"s"'] * 100000) + "]}\n"  # ~500 KB
    staged = stage_node(_transport(work), "j-1", str(work), [],
                        {"rank_table.json": RenderedFile(table, 0o644)}, {}, tmp_path)
    path = Path(staged.job_dir) / "rank_table.json"
    assert path.read_text() == table and path.stat().st_mode & 0o777 == 0o644
