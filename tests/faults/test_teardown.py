"""A failed rank ends the job on every node even when nobody waits (issue #9, gap 1).

th0 and th1 x 2 ranks, trivial rank commands. Each case asserts (a) the cause named in the
record / output, (b) no process of the job left on any host, (c) the record consistent with
the nodes, including `cleaned` (every node confirmed the stop).

    python -m pytest tests/faults/test_teardown.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.faults.helpers import (
    SLEEPER,
    assert_nothing_left,
    assert_record_matches_nodes,
    guard_alive,
    job_processes,
    latest_status,
    no_traceback,
    orch,
    rank_pid,
    record,
    wait_for,
)
from tests.faults.test_faults import UP
from tests.integration.conftest import TestHosts

pytestmark = [pytest.mark.integration, pytest.mark.faults]



def test_guard_stops_every_node_when_a_rank_fails_and_nobody_waits(
        testhosts: TestHosts, two_hosts: Path, state: Path) -> None:
    up = orch(state, "up", "-i", str(two_hosts), *UP, "--entrypoint", SLEEPER)
    job_id = record(state)["job_id"]
    assert "guard: pid" in up.stdout and guard_alive(state, job_id)
    node, pid = rank_pid(state, "3")
    assert testhosts.ssh(node, f"kill -9 {pid}").returncode == 0
    # The guard polls every 5 s: the job is FAILED and clean on both hosts soon after.
    wait_for(lambda: record(state, job_id)["cleaned"], timeout=40, what="guard teardown")
    job = record(state, job_id)
    assert job["status"] == "FAILED" and "rank 3 on th1 exited 137" in job["message"]
    assert_nothing_left(testhosts, job_id)
    wait_for(lambda: not guard_alive(state, job_id), timeout=15, what="guard left")
    log = (state / "jobs" / job_id / "guard.log").read_text()
    assert "stopped th0/" in log, log  # the other node's ranks were alive and stopped
    live = assert_record_matches_nodes(state, job_id)
    assert live["cleaned"] is True


def test_status_reads_and_status_clean_stops_a_failed_job_nobody_guards(
        testhosts: TestHosts, two_hosts: Path, state: Path) -> None:
    orch(state, "up", "-i", str(two_hosts), *UP, "--no-guard", "--entrypoint", SLEEPER)
    job_id = record(state)["job_id"]
    assert not guard_alive(state, job_id)
    node, pid = rank_pid(state, "1")
    assert testhosts.ssh(node, f"kill -9 {pid}").returncode == 0
    # th0's own supervisor stops rank 0; th1's ranks keep running until someone looks.
    wait_for(lambda: not job_processes(testhosts, job_id, "th0"), timeout=20)
    assert job_processes(testhosts, job_id, "th1")
    looked = orch(state, "status", job_id)  # only reads: says so, stops nothing
    no_traceback(looked)
    assert "still run; stop them with `orchestrate down" in looked.stderr, looked.stderr
    assert job_processes(testhosts, job_id, "th1")
    assert record(state, job_id)["cleaned"] is False
    status = orch(state, "status", job_id, "--clean")
    no_traceback(status)
    assert "stopped th1/2, th1/3" in status.stderr, status.stderr
    assert "rank 1 on th0 exited 137" in status.stderr
    job = record(state, job_id)
    assert job["status"] == "FAILED" and job["cleaned"] is True
    assert_nothing_left(testhosts, job_id)
    assert_record_matches_nodes(state, job_id)


def test_down_all_stops_a_failed_job_left_running(testhosts: TestHosts, two_hosts: Path,
                                                  state: Path) -> None:
    """A FAILED record whose other node still runs (written by an orchestrate without the
    guard, or while that node was cut off) is on `down --all`'s list; a clean one is not."""
    orch(state, "up", "-i", str(two_hosts), *UP, "--wait", "--entrypoint", "true")
    done_id = record(state)["job_id"]
    assert record(state, done_id)["status"] == "SUCCEEDED"
    orch(state, "up", "-i", str(two_hosts), *UP, "--no-guard", "--entrypoint", SLEEPER)
    job_id = record(state)["job_id"]
    node, pid = rank_pid(state, "1")
    assert testhosts.ssh(node, f"kill -9 {pid}").returncode == 0
    wait_for(lambda: not job_processes(testhosts, job_id, "th0"), timeout=20)
    path = state / "jobs" / f"{job_id}.json"
    doc = json.loads(path.read_text())
    doc.update(status="FAILED", message="rank 1 on th0 exited 137")
    doc.pop("cleaned")  # as a record written before `cleaned` existed
    path.write_text(json.dumps(doc))
    assert job_processes(testhosts, job_id, "th1")
    down = orch(state, "down", "--all", "--yes")
    no_traceback(down)
    assert f"job {job_id} FAILED" in down.stdout and done_id not in down.stdout, down.stdout
    assert_nothing_left(testhosts, job_id)
    job = record(state, job_id)
    assert job["status"] == "FAILED" and job["cleaned"] is True
    assert job["message"] == "rank 1 on th0 exited 137"  # down keeps the real cause
    again = orch(state, "down", "--all", "--yes")
    assert "nothing to stop" in again.stdout
    assert_record_matches_nodes(state, job_id)


def test_down_stops_the_guard_and_the_ranks(testhosts: TestHosts, two_hosts: Path,
                                            state: Path) -> None:
    orch(state, "up", "-i", str(two_hosts), *UP, "--entrypoint", SLEEPER)
    job_id = record(state)["job_id"]
    assert guard_alive(state, job_id) and latest_status(state) == "RUNNING"
    down = orch(state, "down", "--all", "--yes")
    assert f"job {job_id} CANCELLED" in down.stdout
    assert not guard_alive(state, job_id)
    assert_nothing_left(testhosts, job_id)
    assert record(state, job_id)["cleaned"] is True
