"""`orchestrate prune`: the kept-job rule, the node program on a real workdir laid out as
staging lays it out (hard links), the node command through a local node (busy test,
leftover rule, lock), the reading of a node's answer, the local data cache."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath

import pytest

from orchestrator.config.inventory import Connection, Node
from orchestrator.errors import JobError
from orchestrator.job import prune_node
from orchestrator.job.prune import Selection, prune_local, prune_on, read_answer, select
from orchestrator.job.state import JobRecord, JobStatus
from orchestrator.remote.local import LocalTransport

OLD = time.time() - 3 * 3600


def _record(job_id: str, status: JobStatus, created: float, cleaned: bool = True,
            local_data: str | None = None) -> JobRecord:
    return JobRecord(job_id=job_id, status=status, created_at=created, updated_at=created,
                     inventory_path="/x/inv.yaml", inventory_digest="d" * 64, preset="tiny",
                     overrides=(), mode="msrun", world_size=1, nodes=(), cleaned=cleaned,
                     local_data=local_data)


def test_kept_jobs_are_live_ones_newest_ended_and_pinned() -> None:
    records = [_record("j-old", JobStatus.SUCCEEDED, 1), _record("j-mid", JobStatus.CANCELLED, 2),
               _record("j-new", JobStatus.SUCCEEDED, 3), _record("j-run", JobStatus.RUNNING, 0),
               _record("j-dirty", JobStatus.FAILED, 0.5, cleaned=False),
               _record("j-pend", JobStatus.PENDING, 0.1)]
    sel = select(records, keep=1)
    assert sel.keep == {"j-new", "j-run", "j-dirty", "j-pend"}
    assert sel.known == {r.job_id for r in records} and sel.drop == {}
    assert select(records, keep=0).keep == {"j-run", "j-dirty", "j-pend"}
    assert select(records, keep=2, pinned=["j-old"]).keep == {"j-new", "j-mid", "j-old",
                                                                "j-run", "j-dirty", "j-pend"}
    with pytest.raises(JobError, match="--keep-job j-typo: no such job"):
        select(records, keep=1, pinned=["j-typo"])
    # --job-folders: the other ended jobs' folders, each with whether its checkpoints may go
    sel = select(records, keep=1, drop_jobs=True, may_drop_output=lambda j: j == "j-mid")
    assert sel.drop == {"j-old": False, "j-mid": True}


def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _age(path: Path) -> None:
    """Everything under `path` (and it) modified 3 hours ago; ctime cannot be set, so tests
    of the inode rule run with grace 0 and this only serves the leftover rule."""
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(p, (OLD, OLD), follow_symlinks=False)


class Workdir:
    """A node workdir as staging makes it: blobs, trees of hard links, job folders of hard
    links to the trees, skeletons."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for d in ("blobs", "trees", "jobs"):
            (root / d).mkdir(parents=True, exist_ok=True)

    def blob(self, content: str) -> str:
        sha = _key(content)
        path = self.root / "blobs" / sha
        if not path.exists():
            path.write_text(content)
        return sha

    def tree(self, files: dict[str, str]) -> str:
        key = _key(repr(sorted(files.items())))
        for rel, content in files.items():
            dest = self.root / "trees" / key / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.link(self.root / "blobs" / self.blob(content), dest)
        return key

    def job(self, job_id: str, trees: dict[str, str]) -> Path:
        """A job folder with each tree hard-linked in at its dest (cp -al), and a skeleton."""
        j = self.root / "jobs" / job_id
        skel = self.root / "trees" / ("job-" + _key(job_id))
        for dest, key in trees.items():
            for root in (j, skel):
                root.mkdir(parents=True, exist_ok=True)
                subprocess.run(["cp", "-al", str(self.root / "trees" / key), str(root / dest)],
                               check=True)
        (j / "launch.sh").write_text("true\n")
        return j

    def names(self) -> set[str]:
        return {f"{d}/{p.name}" for d in ("blobs", "trees", "jobs")
                for p in (self.root / d).iterdir()}


def test_node_rule_keeps_what_kept_jobs_hold_and_counts_freed_bytes(tmp_path: Path) -> None:
    w = Workdir(tmp_path / "wd")
    code = w.tree({"pkg/a.py": "a = 1\n", "pkg/b.py": "b = 1\n"})
    code2 = w.tree({"pkg/a.py": "a = 1\n", "pkg/b.py": "b = 2\n"})  # shares a.py's blob
    data_a = w.tree({"dA/x.bin": "A" * 1000})
    data_b = w.tree({"dB/x.bin": "B" * 500})
    orphan = w.tree({"o.txt": "orphan" * 10})  # no job uses it
    w.job("j-old", {"code": code, "data": data_a})
    w.job("j-new", {"code": code2, "data": data_b})
    w.job("j-foreign", {"code": code})  # no record here: never judged, its trees stay
    stray = w.blob("stray" * 7)  # in no tree
    res = prune_node.plan(str(w.root), 0, keep={"j-new"}, known={"j-old", "j-new"}, drop={},
                          leftovers=[])
    gone = {(k, os.path.relpath(p, w.root)) for k, p, _ in res.entries}
    assert gone == {("tree", f"trees/{data_a}"), ("tree", f"trees/{orphan}"),
                    ("skeleton", f"trees/job-{_key('j-old')}"),
                    ("blob", f"blobs/{_key('A' * 1000)}"), ("blob", f"blobs/{_key('orphan' * 10)}"),
                    ("blob", f"blobs/{stray}")}
    assert res.unknown_jobs == ["j-foreign"] and res.refused == []
    freed = {os.path.relpath(p, w.root): b for _, p, b in res.entries}
    # j-old's folder stays (no --job-folders): its data file is still linked there, frees nothing
    assert freed[f"trees/{data_a}"] == freed[f"blobs/{_key('A' * 1000)}"] == 0
    assert freed[f"trees/{orphan}"] == 60 and freed[f"blobs/{stray}"] == 35
    # with --job-folders j-old goes too, and then its data is freed (counted once)
    res = prune_node.plan(str(w.root), 0, {"j-new"}, {"j-old", "j-new"}, {"j-old": False}, [])
    assert ("job", str(w.root / "jobs" / "j-old")) in {(k, p) for k, p, _ in res.entries}
    assert sum(b for _, _, b in res.entries) == 60 + 35 + 1000 + len("true\n")


def test_node_rule_grace_checkpoints_and_symlinks(tmp_path: Path) -> None:
    w = Workdir(tmp_path / "wd")
    code = w.tree({"pkg/a.py": "a\n"})
    j = w.job("j-ckpt", {"code": code})
    (j / "output" / "checkpoint" / "rank_0").mkdir(parents=True)
    (j / "output" / "checkpoint" / "rank_0" / "s.ckpt").write_text("weights")
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "sub" / "precious").write_text("x")
    (w.root / "trees" / _key("link")).symlink_to(outside)  # a tree name that is a symlink
    (w.root / "jobs" / "j-link").symlink_to(outside)
    # grace: everything was just made, so a 60-minute grace leaves it all
    res = prune_node.plan(str(w.root), 60, set(), {"j-ckpt", "j-link"}, {}, [])
    assert res.entries == [] and res.recent == 2  # tree, skeleton (they hold the blob)
    # not collected: the folder stays, naming why; +output: it goes
    res = prune_node.plan(str(w.root), 0, set(), {"j-ckpt", "j-link"},
                          {"j-ckpt": False, "j-link": True}, [])
    assert res.refused == [["j-ckpt", "holds 1 checkpoint/strategy file(s) and was not "
                                      "collected (collect-ckpt, or --include-output)"]]
    assert not any(k == "job" for k, _, _ in res.entries)
    res = prune_node.plan(str(w.root), 0, set(), {"j-ckpt"}, {"j-ckpt": True}, [])
    assert ("job", str(j)) in {(k, p) for k, p, _ in res.entries}
    for _, path, _ in res.entries:
        prune_node.remove(path)
    assert (outside / "sub" / "precious").read_text() == "x"  # never followed
    assert (w.root / "trees" / _key("link")).is_symlink()
    assert (w.root / "jobs" / "j-link").is_symlink()
    assert sorted(os.listdir(w.root / "trees")) == [_key("link")]


def _start_time(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[19]


def test_node_command_busy_test_and_leftover_rule_on_a_local_node(tmp_path: Path) -> None:
    w = Workdir(tmp_path / "wd")
    w.job("j-a", {"code": w.tree({"m.py": "m\n"})})
    dead, live = w.root / "blobs" / ".unpack-dead0001", w.root / "trees" / ".k.partial-live0001"
    dead.mkdir()
    (dead / "x").write_text("12345")
    _age(dead)
    live.mkdir()
    t = LocalTransport(Node(name="n0", host="127.0.0.1", connection=Connection.LOCAL,
                            workdir=PurePosixPath(w.root), python=sys.executable))
    sel = Selection(keep=frozenset(), known=frozenset({"j-a"}))
    # a live job holds the node (this test's own process and start time): left alone
    (w.root / "jobs" / "ACTIVE").write_text(f"j-a {os.getpid()} {_start_time(os.getpid())}\n")
    (w.root / "jobs" / ".lock").touch()  # the node lock prune takes, as launch.sh start does
    before = w.names()
    busy = prune_on(t, sel, yes=True, grace_min=0)
    assert busy.busy == "j-a" and busy.entries == () and w.names() == before and dead.exists()
    # its process gone (start time no longer matches): the node is free
    (w.root / "jobs" / "ACTIVE").write_text(f"j-a {os.getpid()} 1\n")
    dry = prune_on(t, sel, yes=False, grace_min=60)
    assert dry.busy is None and not dry.removed and dry.folder == str(w.root.resolve())
    assert [(e.kind, e.name, e.bytes) for e in dry.entries] == [
        ("leftover", "blobs/.unpack-dead0001", 5)]  # the rest changed within the grace
    assert w.names() == before
    done = prune_on(t, sel, yes=True, grace_min=60)
    assert done.removed and [e.name for e in done.entries] == ["blobs/.unpack-dead0001"]
    assert not dead.exists() and live.exists()
    # no workdir at all: nothing staged there
    gone = LocalTransport(Node(name="n1", host="127.0.0.1", connection=Connection.LOCAL,
                               workdir=PurePosixPath(tmp_path / "none"), python=sys.executable))
    assert prune_on(gone, sel, yes=True, grace_min=0).absent


def test_a_node_answer_is_checked_never_trusted() -> None:
    doc = {"workdir": "/w", "entries": [
        ["tree", "/w/trees/" + "a" * 64, 10], ["rm -rf /", "/etc", 1], ["blob", "/w/x", -1],
        ["blob", "/w/y", True], ["blob", 5, 1], "junk", ["job", "/elsewhere/j", 3]],
        "refused": [["j", "why"], ["j", 3], "x"], "recent": "9", "unknown_jobs": ["u", 7],
        "errors": None, "removed": "yes"}
    r = read_answer("n0", doc)
    assert [(e.kind, e.name, e.bytes) for e in r.entries] == [
        ("tree", "trees/" + "a" * 64, 10), ("job", "/elsewhere/j", 3)]
    assert r.refused == (("j", "why"),) and r.recent == 0 and r.unknown_jobs == ("u",)
    assert r.errors == () and not r.removed and r.freed == 13
    assert read_answer("n0", {}).entries == ()


def test_local_data_cache_keeps_what_kept_jobs_use(tmp_path: Path) -> None:
    cache = tmp_path / "data"
    used, unused, recent = (cache / _key(x) for x in ("used", "unused", "recent"))
    for entry in (used, unused, recent):
        (entry / "seed").mkdir(parents=True)
        (entry / "seed" / "d.mindrecord").write_text("x" * 100)
    partial = cache / f".{_key('p')}.partial-dead0001"
    partial.mkdir()
    (cache / "not-ours").mkdir()
    # the key names the entry, wherever the state folder is now (moved, another spelling)
    records = [_record("j-keep", JobStatus.SUCCEEDED, 2,
                       local_data=f"st/data/{used.name}/seed"),
               _record("j-drop", JobStatus.SUCCEEDED, 1, local_data=str(unused / "seed"))]
    sel = select(records, keep=1)
    every = prune_local(cache, records, sel, yes=False, grace_min=60)
    assert every.entries == () and every.recent == 3  # all just made
    dry = prune_local(cache, records, sel, yes=False, grace_min=0)
    assert sorted((e.kind, e.name, e.bytes) for e in dry.entries) == sorted([
        ("data", unused.name, 100), ("data", recent.name, 100), ("leftover", partial.name, 0)])
    assert unused.exists()
    done = prune_local(cache, records, sel, yes=True, grace_min=0)
    assert done.removed and sorted(os.listdir(cache)) == sorted([used.name, "not-ours"])
    assert prune_local(tmp_path / "none", records, sel, yes=True, grace_min=0).absent
