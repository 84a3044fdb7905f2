"""Network partition: a host's veth goes down while its ranks keep running (issue #9, gap 3).

Unlike a lost host (its sshd, PID 1 of its namespace, killed: everything there dies), the
partitioned host's processes live on and come back with the link. Each case asserts (a) the
cause naming the host, (b) no process of the job left once the link is back and the job was
stopped, (c) the record consistent with the nodes (`cleaned` only once every node confirmed).

    python -m pytest tests/faults/test_network.py
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.helpers import (
    SLEEPER,
    assert_nothing_left,
    assert_record_matches_nodes,
    heal,
    job_processes,
    latest_status,
    orch,
    orch_bg,
    partition,
    pids_seen_from_here,
    record,
    wait_for,
)
from tests.faults.test_faults import UP
from tests.integration.conftest import TestHosts

pytestmark = [pytest.mark.integration, pytest.mark.faults]

# Attempt 1 runs until stopped; a resumed attempt (ORCHESTRATE_RESUME=1) finishes at once.
LONG_THEN_QUICK = ('if [ -z "${ORCHESTRATE_RESUME:-}" ]; then ' + SLEEPER + '; else '
                   'echo \'{"resumed_step": 0}\' >"$ORCHESTRATE_RESUMED_FILE"; '
                   'echo "step=1 loss=1.0"; fi')


def test_partition_during_wait_fails_the_job_and_status_cleans_after_heal(
        netns_hosts: TestHosts, two_hosts: Path, state: Path) -> None:
    waiter = orch_bg(state, "up", "-i", str(two_hosts), *UP, "--wait", "--entrypoint", SLEEPER,
                     "--node-lost-timeout", "3")
    try:
        wait_for(lambda: latest_status(state) == "RUNNING")
        job_id = record(state)["job_id"]
        partition(netns_hosts, "th1")
        out, err = waiter.communicate(timeout=120)
    finally:
        if waiter.poll() is None:
            waiter.kill()
    assert "Traceback" not in out + err, err
    assert waiter.returncode == 1, out + err
    job = record(state, job_id)
    assert job["status"] == "FAILED" and job["cleaned"] is False
    assert job["message"].startswith("node th1 unreachable for "), job["message"]
    assert "node th1 unreachable" in out and "run `orchestrate down" in err, out + err
    assert not job_processes(netns_hosts, job_id, "th0")  # torn down where reachable
    assert len(pids_seen_from_here(job_id)) >= 2  # th1's ranks live on behind the partition
    heal(netns_hosts, "th1")
    status = orch(state, "status", job_id, "--clean")
    assert "stopped th1/2, th1/3" in status.stderr, status.stderr
    assert record(state, job_id)["cleaned"] is True
    assert_nothing_left(netns_hosts, job_id)
    assert not pids_seen_from_here(job_id)
    assert_record_matches_nodes(state, job_id)


def test_partition_during_wait_with_restarts_resumes_once_the_link_is_back(
        netns_hosts: TestHosts, two_hosts: Path, state: Path) -> None:
    waiter = orch_bg(state, "up", "-i", str(two_hosts), *UP, "--wait", "--entrypoint",
                     LONG_THEN_QUICK, "--node-lost-timeout", "3", "--max-restarts", "1")
    try:
        wait_for(lambda: latest_status(state) == "RUNNING")
        job_id = record(state)["job_id"]
        partition(netns_hosts, "th1")
        try:
            wait_for(lambda: record(state, job_id)["message"].startswith("node th1 unreachable"),
                     timeout=60, what="attempt 1 failed on the partition")
        except AssertionError as e:  # say what the watcher saw and did instead
            waiter.kill()
            out, err = waiter.communicate(timeout=30)
            raise AssertionError(f"{e}; record: {record(state, job_id)}; watcher stdout: "
                                 f"{out[-2000:]}; stderr: {err[-2000:]}") from None
        heal(netns_hosts, "th1")
        out, err = waiter.communicate(timeout=180)
    finally:
        heal(netns_hosts, "th1")
        if waiter.poll() is None:
            waiter.kill()
    assert "Traceback" not in out + err, err
    job = record(state, job_id)
    assert waiter.returncode == 0 and job["status"] == "SUCCEEDED", out + err + job["message"]
    first, second = job["history"]
    assert first["status"] == "FAILED" and first["cause"].startswith("node th1 unreachable")
    assert second["status"] == "SUCCEEDED" and second["resumed_step"] == 0
    assert job["attempts"] == 2 and job["cleaned"] is True
    assert_nothing_left(netns_hosts, job_id)
    assert not pids_seen_from_here(job_id)
    assert_record_matches_nodes(state, job_id)
