"""The Slurm batch script's own steps, run under bash with a Slurm step's environment: the
node rank / scheduler taken from Slurm and cross-checked with the plan, and the staging
through the allocation (the bundle's checks). tests/integration/test_slurm.py runs the same
script under a real slurmd; here `scontrol show hostnames` is a stand-in that prints the hosts
a test gives it, so every mismatch can be made."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
from orchestrate_bloom.fileio import sha256_file

from orchestrator.backends.slurm import render_batch
from orchestrator.backends.slurm_stage import Bundle, build_bundle
from orchestrator.config.inventory import parse_inventory
from orchestrator.job.render import RenderedFile
from orchestrator.job.stage import Tree, tree_manifest
from orchestrator.job.state import JobRecord, JobStatus, NodeRecord

ADDRESSES = {"th0": "10.0.0.2", "th1": "10.0.0.3"}
PROBE = 'printf "%s %s %s\\n" "$ORCHESTRATE_SLURM_NODEID" "$ORCHESTRATE_SCHED_HOST" "$1"\n'


def _record(tmp: Path) -> JobRecord:
    nodes = tuple(NodeRecord(name=f"th{i}", host=ADDRESSES[f"th{i}"], rank_start=2 * i,
                             rank_end=2 * i + 2, devices=(0, 1), job_dir=str(tmp / f"th{i}"))
                  for i in range(2))
    return JobRecord(job_id="tiny-abcd", status=JobStatus.LAUNCHING, created_at=0.0,
                     updated_at=0.0, inventory_path="inv.yaml", inventory_digest="",
                     preset="tiny", overrides=(), mode="msrun", world_size=4, nodes=nodes,
                     backend="slurm")


def _run(tmp: Path, script: str, call: str, hosts: str, nodeid: str, node: str
         ) -> subprocess.CompletedProcess[str]:
    """The batch script's functions, then `call`, as the step task of `node` would run it."""
    fake = tmp / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "scontrol").write_text(f'#!/bin/sh\n[ "$1 $2" = "show hostnames" ] && '
                                   f"printf '%s\\n' {hosts}\n")
    (fake / "scontrol").chmod(0o755)
    body = script[:script.index('\necho "job ')]  # the functions, not the submission lines
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}", SLURM_NODEID=nodeid,
               SLURMD_NODENAME=node, SLURM_JOB_NODELIST="th[0-1]")
    return subprocess.run(["bash", "-c", f"{body}\n{call}"], capture_output=True, text=True,
                          env=env, check=False, timeout=60)


def _batch(tmp: Path, bundle: Bundle | None = None) -> str:
    record = _record(tmp)
    for n in record.nodes:
        Path(n.job_dir).mkdir(parents=True, exist_ok=True)
        (Path(n.job_dir) / "launch.sh").write_text(PROBE)
    return render_batch(record, parse_inventory("hosts: [th0]\n").scheduler, ADDRESSES, bundle)


def test_step_takes_node_rank_and_scheduler_from_slurm(tmp_path: Path) -> None:
    script = _batch(tmp_path)
    for nodeid, node in (("0", "th0"), ("1", "th1")):
        res = _run(tmp_path, script, "orchestrate_step", "th0 th1", nodeid, node)
        assert (res.returncode, res.stdout) == (0, f"{nodeid} 10.0.0.2 run\n"), res.stderr


@pytest.mark.parametrize(("hosts", "nodeid", "node", "says"), [
    ("th1 th0", "0", "th1", "th1: slurm placed the job on th1 th0 (SLURM_JOB_NODELIST=th[0-1]) "
                            "in that node order, the plan (rank order, by address) has th0 th1"),
    ("th0 th1", "1", "th0", "th0: SLURM_NODEID=1 is th1 in the plan"),
    ("th0 th1", "2", "th0", "th0: SLURM_NODEID=2, the plan has 2 node(s)"),
])
def test_a_placement_other_than_the_plans_is_one_line_in_the_rank_logs(
        tmp_path: Path, hosts: str, nodeid: str, node: str, says: str) -> None:
    res = _run(tmp_path, _batch(tmp_path), "orchestrate_step", hosts, nodeid, node)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.startswith(f"orchestrate: {says}") and res.stderr.count("\n") == 1
    slots = ["sched", "0", "1"] if node == "th0" else ["2", "3"]
    for slot in slots:  # every rank log of the node says it; the launch never ran
        log = (tmp_path / node / "ranks" / slot / "stdout.log").read_text()
        assert log == res.stderr


def _bundle(tmp: Path) -> tuple[JobRecord, Bundle]:
    src = tmp / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "a.py").write_text("A = 1\n")
    (src / "notes.txt").write_text("n\n")
    record = _record(tmp)
    rendered = {n.name: {"launch.sh": RenderedFile(PROBE, 0o755),
                         "env.sh": RenderedFile(f"export SECRET={n.name}\n", 0o600)}
                for n in record.nodes}
    tree = Tree.of(tree_manifest(src), "code")
    return record, build_bundle(record, tmp / "spool", [tree], rendered)


def test_unpack_puts_the_checked_bundle_into_the_job_folder(tmp_path: Path) -> None:
    _record_, bundle = _bundle(tmp_path)
    assert stat.S_IMODE(bundle.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(bundle.out_dir.stat().st_mode) == 0o700
    script = _batch(tmp_path, bundle)
    assert f"#SBATCH --output={bundle.out_dir}/slurm-%j.out\n" in script
    res = _run(tmp_path, script, "orchestrate_unpack", "th0 th1", "1", "th1")
    assert res.returncode == 0, res.stderr
    job = tmp_path / "th1"
    assert (job / "code" / "pkg" / "a.py").read_text() == "A = 1\n"
    assert (job / "env.sh").read_text() == "export SECRET=th1\n"
    assert stat.S_IMODE((job / "env.sh").stat().st_mode) == 0o600
    assert (job / "launch.sh").read_text() == PROBE
    assert [p.name for p in job.iterdir() if p.name.startswith(".stage")] == []


def _retar(bundle: Bundle, change: str) -> Bundle:
    """The bundle with one member's bytes changed (`change`: its name), or an extra member."""
    members = {}
    with tarfile.open(bundle.path) as tar:
        for m in tar.getmembers():
            f = tar.extractfile(m)
            members[m.name] = (m.mode, f.read() if f else b"")
    if change in members:
        members[change] = (members[change][0], members[change][1] + b"# evil\n")
    else:
        members[change] = (0o644, b"extra\n")
    with tarfile.open(bundle.path, "w") as tar:
        for name, (mode, data) in members.items():
            info = tarfile.TarInfo(name)
            info.mode, info.size = mode, len(data)
            tar.addfile(info, io.BytesIO(data))
    return Bundle(bundle.path, sha256_file(bundle.path), bundle.out_dir)


@pytest.mark.parametrize(("tamper", "says"), [
    ("bytes", "is not the bundle orchestrate wrote (sha256 differs from"),
    ("code/pkg/a.py", "a file of the bundle does not match its sha256 in the MANIFEST"),
    ("code/pkg/b.py", "the bundle holds files its MANIFEST does not name"),
])
def test_a_bundle_that_fails_a_check_stages_nothing(tmp_path: Path, tamper: str,
                                                   says: str) -> None:
    _record_, bundle = _bundle(tmp_path)
    if tamper == "bytes":  # changed after orchestrate wrote it: the baked sha256 differs
        script = _batch(tmp_path, bundle)
        with open(bundle.path, "r+b") as f:
            f.seek(600)
            f.write(b"X")
    else:  # a consistent bundle sha256, but a member not as the MANIFEST says
        script = _batch(tmp_path, _retar(bundle, tamper))
    res = _run(tmp_path, script, "orchestrate_unpack", "th0 th1", "0", "th0")
    assert res.returncode == 2
    assert res.stderr.startswith("orchestrate: th0: staging through the allocation: ")
    assert says in res.stderr and res.stderr.count("\n") == 1, res.stderr
    job = tmp_path / "th0"
    assert sorted(p.name for p in job.iterdir()) == ["launch.sh"]  # nothing moved, no temp


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_batch_scripts_pass_shellcheck(tmp_path: Path) -> None:
    _record_, bundle = _bundle(tmp_path)
    paths = []
    for name, b in (("ssh", None), ("allocation", bundle)):
        paths.append(tmp_path / f"{name}.sh")
        paths[-1].write_text(_batch(tmp_path, b))
    res = subprocess.run(["shellcheck", "-s", "bash", *map(str, paths)], capture_output=True,
                         text=True, check=False)
    assert res.returncode == 0, res.stdout
