"""Staging on this machine through LocalTransport (real files, real bash; no SSH)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config.inventory import parse_inventory
from orchestrator.errors import JobError
from orchestrator.job.render import RenderedFile
from orchestrator.job.stage import (
    COMMAND_MAX,
    INLINE_MAX,
    NodeBusyError,
    Tree,
    _send_tree,
    code_tree,
    data_tree,
    first_command,
    stage_node,
    tree_manifest,
)
from orchestrator.remote.local import LocalTransport
from orchestrator.remote.transport import CommandResult


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
    assert (job / "code" / "orchestrate_bloom" / "train" / "trainer.py").is_file()
    assert (job / "data" / "mr" / "x.bin").read_bytes() == (data / "x.bin").read_bytes()
    assert (job / "env.sh").stat().st_mode & 0o777 == 0o600
    warm = stage_node(t, "j-2", str(work), trees, _rendered("v2\n"), {}, tmp_path)
    assert warm.sent == 0 and warm.reused == 2
    job2 = Path(warm.job_dir)
    assert (job2 / "launch.sh").read_text() == "v2\n"
    # the same inode: hard links from the node's tree cache, nothing copied
    inode = (job / "code/orchestrate_bloom/train/trainer.py").stat().st_ino
    assert (job2 / "code/orchestrate_bloom/train/trainer.py").stat().st_ino == inode
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


def _pkg(root: Path, n: int = 30) -> Tree:
    root.mkdir()
    for i in range(n):
        (root / f"m{i}.py").write_text(f"x = {i}\n" * 2000)
    (root / "same_a.txt").write_text("same\n")  # two files, one blob
    (root / "same_b.txt").write_text("same\n")
    return Tree.of(tree_manifest(root, "pkg"), "code")


def test_blob_reported_present_but_absent_is_sent_again(tmp_path: Path) -> None:
    # the node's `missing` list came back short (as when ssh lost the tail of the output):
    # the blobs it omitted are absent, and the node's own check after unpacking catches it
    work = tmp_path / "work"
    tree = _pkg(tmp_path / "pkg")
    t = _transport(work)
    first = first_command(str(work), "j-1", [tree], {})
    res = t.run(first, check=True)
    info = dict(ln.split(" ", 1) for ln in res.stdout.splitlines())
    shas = sorted({f.sha256 for f in tree.files})
    told = set(shas[: len(shas) // 2])  # half of the truly missing blobs reported
    sent = _send_tree(t, info["workdir"], info["jobdir"], "j-1", tree, told, tmp_path)
    assert sent == len(shas)  # the rest went in the second round
    for f in tree.files:
        assert (Path(info["jobdir"]) / "code" / f.rel).read_bytes() == f.source.read_bytes()
    blobs = work / "blobs"
    assert sorted(p.name for p in blobs.iterdir()) == shas  # no tar or unpack folder left
    assert not [p for p in (work / "trees").iterdir() if p.name.startswith(".")]


def test_concurrent_stagers_on_one_store(tmp_path: Path) -> None:
    # two jobs staging the same new tree onto one node at once (or two nodes sharing a
    # filesystem): each must end with a complete tree, and the cache must hold a whole one
    for round_ in range(3):
        work = tmp_path / f"work{round_}"
        tree = _pkg(tmp_path / f"pkg{round_}", n=60)
        with ThreadPoolExecutor(max_workers=3) as pool:
            futures = [pool.submit(stage_node, _transport(work), f"j-{i}", str(work), [tree],
                                   {}, {}, tmp_path) for i in range(3)]
            staged = [f.result() for f in futures]
        for s in staged:
            for f in tree.files:
                assert (Path(s.job_dir) / "code" / f.rel).read_bytes() == f.source.read_bytes()
        cached = work / "trees" / tree.key
        assert sorted(p.relative_to(cached).as_posix() for p in cached.rglob("*.*")) == sorted(
            f.rel for f in tree.files)


def test_stale_leftovers_of_interrupted_stages_are_removed(tmp_path: Path) -> None:
    work = tmp_path / "work"
    old = 3 * 3600
    stale = [work / "blobs/.unpack-aaaa", work / "blobs/.incoming-j-0-aaaa-0.tar",
             work / "blobs/..incoming-j-0-bbbb-0.tar.orchestrate-tmp-bbbb",
             work / "trees/.k.partial-aaaa"]
    live = [work / "blobs/.unpack-cccc", work / "trees/.k.partial-cccc"]
    for p in stale + live:
        if p.suffix == ".tar" or "orchestrate-tmp" in p.name:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"x")
        else:
            (p / "sub").mkdir(parents=True)
            (p / "sub" / "f").write_bytes(b"x")
    for p in stale:
        for q in [*p.rglob("*"), p] if p.is_dir() else [p]:
            os.utime(q, (q.stat().st_atime, q.stat().st_mtime - old))
    os.utime(live[0], (0, live[0].stat().st_mtime - old))  # old folder, fresh file inside
    staged = stage_node(_transport(work), "j-1", str(work), [], _rendered(), {}, tmp_path)
    assert sorted(staged.leftovers) == sorted(p.name for p in stale)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in live)


class _Counting(LocalTransport):
    """A LocalTransport that keeps every command it ran."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(_transport(workdir).node)
        self.commands: list[str] = []

    def run(self, cmd: Sequence[str] | str, **kw: Any) -> CommandResult:
        self.commands.append(cmd if isinstance(cmd, str) else " ".join(cmd))
        return super().run(cmd, **kw)


# A probe launch.sh: `start` succeeds only when the staged tree is complete beside it.
_PROBE = ('[ "$1" = start ] || exit 9\n'
          'd=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)\n'  # run or sourced
          '[ -f "$d/code/pkg/m1.py" ] && [ -f "$d/job.yaml" ] || '
          '{ echo "slot 0 did not start" >&2; exit 6; }\n'
          'echo "started $d" >>"$d/../../started.log"\necho "pid 0 4242"\necho "pid sched 17"\n')


def test_stage_then_start_in_one_session(tmp_path: Path) -> None:
    # cold: the tree is sent first, launch.sh starts once it is whole; warm: one command in all
    work = tmp_path / "work"
    tree = _pkg(tmp_path / "pkg", n=3)
    files = _rendered(_PROBE)
    cold_t = _Counting(work)
    cold = stage_node(cold_t, "j-1", str(work), [tree], files, {}, tmp_path, start=True)
    assert cold.pids == {"0": 4242, "sched": 17} and cold.sent == 4
    assert "launch.sh start" in cold_t.commands[-1] and len(cold_t.commands) > 2
    warm_t = _Counting(work)
    warm = stage_node(warm_t, "j-2", str(work), [tree], files, {}, tmp_path, start=True)
    assert warm.pids == {"0": 4242, "sched": 17} and warm.sent == 0
    assert len(warm_t.commands) == 1
    assert (work / "started.log").read_text().split() == [
        "started", cold.job_dir, "started", warm.job_dir]
    # not asked to start: nothing runs launch.sh; a secret to upload defers the start
    assert stage_node(_Counting(work), "j-3", str(work), [tree], files, {}, tmp_path).pids is None
    with_secret = _Counting(work)
    staged = stage_node(with_secret, "j-4", str(work), [tree], files, {"env.sh": b"X=1\n"},
                        tmp_path, start=True)
    assert staged.pids == {"0": 4242, "sched": 17}
    assert (Path(staged.job_dir) / "env.sh").read_bytes() == b"X=1\n"
    assert len(with_secret.commands) == 2 and "launch.sh start" in with_secret.commands[1]


@pytest.mark.parametrize(("code", "err", "raised"), [
    (3, "node busy: job other-1 is running here", "node busy: job other-1 is running there"),
    (6, "slot 2 did not start", r"\[n\] start failed: slot 2 did not start"),
])
def test_start_in_the_staging_command_fails_by_name(tmp_path: Path, code: int, err: str,
                                                    raised: str) -> None:
    work = tmp_path / "work"
    probe = _rendered(f'echo "{err}" >&2; exit {code}\n')
    with pytest.raises(JobError, match=raised) as info:
        stage_node(_transport(work), "j-1", str(work), [], probe, {}, tmp_path, start=True)
    assert isinstance(info.value, NodeBusyError) == (code == 3)


def _listing(root: Path) -> list[tuple[str, str]]:
    """(relative path, kind: dir / file / -> link target) of everything under root."""
    out = []
    for p in sorted(root.rglob("*")):
        kind = f"-> {os.readlink(p)}" if p.is_symlink() else "dir" if p.is_dir() else "file"
        out.append((p.relative_to(root).as_posix(), kind))
    return out


def test_warm_node_makes_the_job_folder_from_its_cached_skeleton(tmp_path: Path) -> None:
    # the real launch.sh: cold, the folder is made tree by tree and `start` lays out the slots;
    # warm, one `cp -alT` of the skeleton gives the same folder, the rendered files its own
    from orchestrator.config.plan import build_plan
    from orchestrator.config.presets import load_job_spec
    from orchestrator.job.render import LaunchSpec, render_job
    from orchestrator.job.stage_first import skeleton_key

    inv = parse_inventory("defaults: {devices: 2, connection: local, workdir: w}\n"
                          "nodes: [{host: 127.0.0.1, name: n}]\n", "inv.yaml")
    launch = LaunchSpec(job_id="j", mode="msrun", world_size=2, sched_host="127.0.0.1",
                        entrypoint="true")
    files = render_job(launch, build_plan(inv, load_job_spec("tiny")))["n"]
    work, tree = tmp_path / "work", _pkg(tmp_path / "pkg", n=3)
    cold = stage_node(_transport(work), "j-1", str(work), [tree], files, {}, tmp_path)
    key = skeleton_key([tree], files)
    assert key is not None and (work / "trees" / key).is_dir()  # cached after the cold stage
    job1 = Path(cold.job_dir)
    subprocess.run(["bash", str(job1 / "launch.sh"), "layout", str(job1)], check=True)
    t = _Counting(work)
    job2 = Path(stage_node(t, "j-2", str(work), [tree], files, {}, tmp_path).job_dir)
    assert len(t.commands) == 1 and _listing(job2) == _listing(job1)
    assert {"ranks/sched", "output/log/rank_0", "output/msrun_log/worker_1.log"} <= {
        rel for rel, _ in _listing(job2)}
    assert (job2 / "launch.sh").read_text() == files["launch.sh"].text
    assert (job2 / "launch.sh").stat().st_nlink == 1  # never a shared inode
    assert (job2 / "code/pkg/m1.py").stat().st_ino == (job1 / "code/pkg/m1.py").stat().st_ino
    assert not (work / "trees" / key / "launch.sh").exists()
    assert not [p for p in (work / "trees").iterdir() if p.name.startswith(".")]
    # another tree (new code): another skeleton; the old folder's trees are untouched
    other = _pkg(tmp_path / "pkg2", n=2)
    assert skeleton_key([other], files) != key
