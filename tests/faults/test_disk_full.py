"""Disk full on one node during a checkpoint save (real trainer, slow).

th1's checkpoint folder is a 3 MiB tmpfs (mounted inside th1's own mount namespace): the
step-10 checkpoint (~2 MB) fits, the step-20 save runs out of space. Asserts (a) the job
fails naming rank 1 on th1 and the log says why, (b) nothing left on either host, (c) the
record matches the nodes, (d) step 20 is not complete anywhere on th1 (no manifest, no
partial file left behind) and step 10 still is.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.faults.helpers import (
    assert_nothing_left,
    assert_record_matches_nodes,
    latest_status,
    orch_bg,
    record,
    wait_for,
)
from tests.integration.conftest import TestHosts

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]


def _nsenter(hosts: TestHosts, name: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    pid = (hosts.state / "hosts" / name / "pid").read_text().split()[0]
    return subprocess.run(["nsenter", "-t", pid, "-m", *cmd], capture_output=True, text=True,
                          check=False, timeout=30)


def test_disk_full_during_checkpoint_save(testhosts: TestHosts, state: Path,
                                          tmp_path: Path) -> None:
    if testhosts.variant != "netns":
        pytest.skip("needs the netns test hosts (a tmpfs in one host's mount namespace)")
    from tests.model.data_helpers import seed_records

    data = tmp_path / "seed.json"
    data.write_text(json.dumps(seed_records()))
    doc = yaml.safe_load(testhosts.inventory.read_text())
    doc["defaults"]["devices"] = 1
    doc["nodes"] = [n for n in doc["nodes"] if n["name"] in ("th0", "th1")]
    inv = tmp_path / "inv.yaml"
    inv.write_text(yaml.safe_dump(doc))
    waiter = orch_bg(state, "up", "-i", str(inv), "-c", "tiny", "--no-check", "--wait",
                     "--stop-grace", "2", "--set", "train.steps=40", "--set",
                     "train.save_steps=10", "--set", f"data.path={data}")
    mounted = ""
    try:
        wait_for(lambda: latest_status(state) == "RUNNING", timeout=120)
        job = record(state)
        folder = f"{job['nodes'][1]['job_dir']}/output/checkpoint"
        assert testhosts.ssh("th1", f"mkdir -p {folder}").returncode == 0
        res = _nsenter(testhosts, "th1", "mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs",
                       folder)
        assert res.returncode == 0, res.stderr
        mounted = folder
        out, err = waiter.communicate(timeout=300)
        assert waiter.returncode == 1, out + err
        job = record(state, job["job_id"])
        assert job["status"] == "FAILED" and job["message"].startswith("rank 1 on th1 exited")
        log = testhosts.ssh("th1", f"cat {job['nodes'][1]['job_dir']}/ranks/1/stdout.log")
        assert "No space left on device" in log.stdout
        files = testhosts.ssh("th1", f"ls -A {folder}/rank_1").stdout.split()
        assert files == ["bloom_rank_1-10.ckpt", "bloom_rank_1-10.json"], files
        assert_nothing_left(testhosts, job["job_id"])
        assert_record_matches_nodes(state, job["job_id"])
    finally:
        if waiter.poll() is None:
            waiter.kill()
        if mounted:
            _nsenter(testhosts, "th1", "umount", mounted)
