"""`orchestrate prune` on a real SSH test host: two `up`s with different data trees, then
prune --keep 1, checked on the node's own filesystem; a job starts afterwards.

One host (th2, 1 rank) in a workdir of its own, a trivial rank command (--entrypoint): the
staging and caching are `up`'s real ones, only the training is left out.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import TestHosts
from tests.integration.test_lifecycle import assert_nothing_left, orch, record, wait_for

pytestmark = pytest.mark.integration
HOST = "th2"
# the first job leaves a checkpoint (user data) in its folder
CKPT = "mkdir -p output/checkpoint/rank_0 && echo w > output/checkpoint/rank_0/x.ckpt"


def _ls(hosts: TestHosts, wd: str) -> dict[str, set[str]]:
    """The node's own listing of its workdir's jobs/, trees/, blobs/ (dot names too)."""
    res = hosts.ssh(HOST, f"cd {wd} && for d in jobs trees blobs; do for x in $d/* $d/.[!.]*; "
                          'do [ -e "$x" ] || [ -L "$x" ] && echo "$x"; done; done; true')
    assert res.returncode == 0, res.stderr
    out: dict[str, set[str]] = {"jobs": set(), "trees": set(), "blobs": set()}
    for line in res.stdout.split():
        d, _, name = line.partition("/")
        out[d].add(name)
    out["jobs"] -= {".lock", "ACTIVE"}  # the node lock; the live job's note (launch.sh)
    return out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_prune_keep_one_removes_exactly_the_old_job_cache(testhosts: TestHosts,
                                                          tmp_path: Path) -> None:
    wd = f"{testhosts.state}/work/prune-{os.getpid()}"  # the host's own, fresh
    doc = yaml.safe_load(testhosts.inventory.read_text())
    doc["defaults"].update(devices=1, workdir=wd)
    doc["nodes"] = [n for n in doc["nodes"] if n["name"] == HOST]
    inv = tmp_path / "inv.yaml"
    inv.write_text(yaml.safe_dump(doc))
    state = tmp_path / "state"
    data = {}
    for name in ("dA", "dB"):  # same summary.json (one blob for both), a file of its own
        data[name] = tmp_path / name
        data[name].mkdir()
        (data[name] / "summary.json").write_text(json.dumps({"seq_length": 128}))
        (data[name] / f"{name}.bin").write_bytes(os.urandom(50_000))

    def up(name: str, cmd: str = "true") -> str:
        orch(state, "up", "-i", str(inv), "-c", "tiny", "--no-check", "--wait",
             "--set", f"data.path={data[name]}", "--entrypoint", cmd)
        job = record(state)
        assert job["status"] == "SUCCEEDED"
        return str(job["job_id"])

    try:
        old, new = up("dA", CKPT), up("dB")
        before = _ls(testhosts, wd)
        assert before["jobs"] == {old, new}
        skel = {n: testhosts.ssh(HOST, f"ls {wd}/trees/{n}/data").stdout.strip()
                for n in before["trees"] if n.startswith("job-")}
        assert sorted(skel.values()) == ["dA", "dB"]  # one skeleton per job
        tree_of = {}  # the data tree each job's folder was linked from (same inode)
        for job, name in ((old, "dA"), (new, "dB")):
            inode = f"stat -c %i {wd}/jobs/{job}/data/{name}/{name}.bin"
            found = testhosts.ssh(HOST, f"i=$({inode}); for t in {wd}/trees/*/{name}/{name}.bin; "
                                        'do [ "$(stat -c %i "$t")" = "$i" ] && echo "$t"; done')
            tree_of[name] = found.stdout.split("/trees/")[1].split("/")[0]
        # an interrupted stage's temp name two hours old, and a symlink out of the workdir
        outside = f"{wd}-outside"
        setup = testhosts.ssh(HOST, f"mkdir -p {outside}/keep && touch {outside}/keep/f && "
                                    f"cd {wd} && mkdir blobs/.unpack-dead0001 && "
                                    "touch -d '2 hours ago' blobs/.unpack-dead0001 && "
                                    f"ln -s {outside} trees/{'f' * 64}")
        assert setup.returncode == 0, setup.stderr
        before = _ls(testhosts, wd)
        # `up --wait` returns once every rank exited; the node's supervisor releases the node
        # (jobs/ACTIVE) a moment later, and prune leaves a node alone while a job holds it
        wait_for(lambda: testhosts.ssh(HOST, f"[ ! -e {wd}/jobs/ACTIVE ]").returncode == 0, 30)

        dry = orch(state, "prune", "-i", str(inv), "--keep", "1", "--grace", "0", "--job-folders")
        assert f"[{HOST}] would remove" in dry.stdout and "run again with --yes" in dry.stdout
        assert _ls(testhosts, wd) == before  # a dry run touches nothing

        done = orch(state, "prune", "-i", str(inv), "--keep", "1", "--grace", "0", "--job-folders",
                    "--yes")
        assert f"kept job {old}: holds 1 checkpoint/strategy file(s)" in done.stdout
        after = _ls(testhosts, wd)
        old_skel = next(k for k, v in skel.items() if v == "dA")
        assert after["jobs"] == before["jobs"]  # the old folder stays: uncollected checkpoint
        assert after["trees"] == before["trees"] - {tree_of["dA"], old_skel}
        assert after["blobs"] == before["blobs"] - {_sha(data["dA"] / "dA.bin"),
                                                    ".unpack-dead0001"}
        assert _sha(data["dA"] / "summary.json") in after["blobs"]  # dB's tree still uses it
        assert testhosts.ssh(HOST, f"ls {outside}/keep").stdout.split() == ["f"]

        out = orch(state, "prune", "-i", str(inv), "--keep", "1", "--grace", "0", "--job-folders",
                   "--include-output", "--yes")
        assert f"jobs/{old}" in out.stdout
        assert _ls(testhosts, wd)["jobs"] == {new}
        # a job starts after the prune: its data tree is staged again from scratch
        again = up("dA")
        shown = testhosts.ssh(HOST, f"sha256sum < {wd}/jobs/{again}/data/dA/dA.bin")
        assert shown.stdout.split()[0] == _sha(data["dA"] / "dA.bin")
        assert_nothing_left(testhosts, again, (HOST,))
    finally:
        testhosts.ssh(HOST, f"rm -rf {wd} {wd}-outside")
