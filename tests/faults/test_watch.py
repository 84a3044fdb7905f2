"""`status --watch` reports STALLED from the same logic as `up --wait` (jobs/stall.py), sees
the job recover, and stops the job everywhere when a rank then fails (issue #9, gap 2).

    python -m pytest tests/faults/test_watch.py
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.helpers import (
    assert_nothing_left,
    assert_record_matches_nodes,
    orch,
    orch_bg,
    rank_pid,
    record,
    wait_for,
)
from tests.faults.test_faults import RANK0_PRINTS, UP
from tests.integration.conftest import TestHosts

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def test_status_watch_reports_stalled_then_recovery_then_failure(
        testhosts: TestHosts, two_hosts: Path, state: Path) -> None:
    orch(state, "up", "-i", str(two_hosts), *UP, "--entrypoint", RANK0_PRINTS)
    job_id = record(state)["job_id"]
    watcher = orch_bg(state, "status", job_id, "--watch", "--stall-timeout", "3")
    try:
        node, pid = rank_pid(state, "0")
        assert testhosts.ssh(node, f"kill -STOP {pid}").returncode == 0
        stalled = wait_for(lambda: (r := record(state, job_id))["status"] == "STALLED" and r,
                           timeout=40, what="STALLED written by status --watch")
        assert stalled["message"].startswith("stalled: no rank logged anything for ")
        assert "(--stall-timeout 3); freshest was rank " in stalled["message"]
        assert testhosts.ssh(node, f"kill -CONT {pid}").returncode == 0
        wait_for(lambda: record(state, job_id)["status"] == "RUNNING", timeout=30,
                 what="RUNNING again once rank 0 logs")
        assert testhosts.ssh(node, f"kill -9 {pid}").returncode == 0
        out, err = watcher.communicate(timeout=90)
    finally:
        if watcher.poll() is None:
            watcher.kill()
    assert "Traceback" not in out + err, err
    assert watcher.returncode == 1, out + err
    assert f"job {job_id} FAILED: rank 0 on th0 exited 137" in out, out
    assert record(state, job_id)["status"] == "FAILED"
    # `status --watch` only looks; the job's guard (left by `up`) stops th1's ranks
    job = wait_for(lambda: (r := record(state, job_id))["cleaned"] and r, timeout=40,
                   what="the guard's teardown")
    assert job["status"] == "FAILED"
    assert_nothing_left(testhosts, job_id)
    assert_record_matches_nodes(state, job_id)
