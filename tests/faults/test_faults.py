"""Fault injection on real sshd test hosts (th0, th1 x 2 ranks): every case asserts

(a) a clear error naming the host / rank and the cause, (b) no process of the job left in any
host's PID namespace, (c) the job record consistent with what the nodes say, and where
checkpoints are involved (d) no incomplete checkpoint taken as complete (tests/faults/
test_restart_trainer.py). Rank commands are trivial shell loops (--entrypoint) unless noted.
The table of cases and guarantees is docs/faults.md.

    python -m pytest tests/faults -m "faults and not slow"
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.faults.helpers import (
    SLEEPER,
    assert_nothing_left,
    assert_record_matches_nodes,
    edited_inventory,
    job_processes,
    latest_status,
    no_traceback,
    orch,
    orch_bg,
    rank_pid,
    record,
    records,
    status_json,
    wait_for,
)
from tests.faults.helpers import (
    TRIVIAL_UP as UP,
)
from tests.integration.conftest import StderrTail, TestHosts
from tests.tools.big_data import big_data_folder

pytestmark = [pytest.mark.integration, pytest.mark.faults]

# --- reaching the hosts ---------------------------------------------------------------------

def test_host_unreachable_at_up(testhosts: TestHosts, two_hosts: Path, state: Path) -> None:
    testhosts.stop("th1")
    try:
        res = orch(state, "up", "-i", str(two_hosts), "-c", "tiny", "--entrypoint", SLEEPER,
                   check=False, timeout=120)
    finally:
        testhosts.start("th1")
    no_traceback(res)
    assert res.returncode == 1
    assert "th1" in res.stderr and "nothing was started" in res.stderr, res.stderr
    # A failed pre-launch check leaves no job record (issue 13) and nothing on th0.
    assert records(state) == []
    left = testhosts.ssh("th0", "pgrep -f 'launch[.]sh|orchestrate_[b]loom' || true")
    assert left.returncode == 0 and left.stdout.strip() == "", left.stdout


def test_auth_refused_names_host(testhosts: TestHosts, two_hosts: Path, state: Path,
                                 tmp_path: Path) -> None:
    stranger = tmp_path / "stranger_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)],
                   check=True)

    def edit(doc: dict) -> None:  # type: ignore[type-arg]
        doc.pop("ssh_config", None)
        doc["nodes"][1]["identity_file"] = str(stranger)

    inv = edited_inventory(two_hosts, tmp_path, edit)
    res = orch(state, "up", "-i", str(inv), *UP, "--entrypoint", SLEEPER, check=False,
               timeout=120)
    no_traceback(res)
    assert res.returncode == 1, res.stdout
    assert "th1" in res.stderr and "auth" in res.stderr.lower(), res.stderr
    assert "th0" not in res.stderr.replace("th0 ", ""), res.stderr  # th0 is fine
    job = record(state)
    assert job["status"] == "FAILED" and "th1" in job["message"], job["message"]
    assert_nothing_left(testhosts, job["job_id"])
    assert all(not n["pids"] for n in job["nodes"])  # nothing was started anywhere


def test_host_key_changed_is_refused(testhosts: TestHosts, two_hosts: Path, state: Path,
                                     tmp_path: Path) -> None:
    other = tmp_path / "other_hostkey"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    fake_key = " ".join(other.with_suffix(".pub").read_text().split()[:2])
    th1 = yaml.safe_load(two_hosts.read_text())["nodes"][1]["host"]
    known = tmp_path / "known_hosts"
    lines = []
    for line in testhosts.known_hosts.read_text().splitlines():
        hosts = line.split(" ", 1)[0].split(",")
        lines.append(f"{line.split(' ', 1)[0]} {fake_key}"
                     if th1 in hosts or f"[{th1}]:22" in hosts else line)
    assert lines != testhosts.known_hosts.read_text().splitlines(), "th1 not in known_hosts"
    known.write_text("\n".join(lines) + "\n")

    def edit(doc: dict) -> None:  # type: ignore[type-arg]
        doc.pop("ssh_config", None)
        doc["known_hosts"] = str(known)

    inv = edited_inventory(two_hosts, tmp_path, edit)
    res = orch(state, "up", "-i", str(inv), *UP, "--entrypoint", SLEEPER, check=False,
               timeout=120)
    no_traceback(res)
    assert res.returncode == 1
    assert "th1" in res.stderr and "host key" in res.stderr.lower(), res.stderr
    job = record(state)
    assert job["status"] == "FAILED"
    assert_nothing_left(testhosts, job["job_id"])


# --- ranks dying --------------------------------------------------------------------------

def test_rank_sigkilled_mid_run_fails_job_everywhere(testhosts: TestHosts, two_hosts: Path,
                                                     state: Path) -> None:
    waiter = orch_bg(state, "up", "-i", str(two_hosts), *UP, "--wait", "--entrypoint", SLEEPER)
    try:
        wait_for(lambda: latest_status(state) == "RUNNING")
        node, pid = rank_pid(state, "3")
        assert testhosts.ssh(node, f"kill -9 {pid}").returncode == 0
        out, err = waiter.communicate(timeout=120)
    finally:
        if waiter.poll() is None:
            waiter.kill()
    assert waiter.returncode == 1, out + err
    job = record(state)
    assert job["status"] == "FAILED"
    assert "rank 3 on th1 exited 137" in job["message"], job["message"]
    assert "rank 3 on th1 exited 137" in out
    # the one attempt's history entry and the Failure carry the data, not only the text
    assert [(h["status"], h["exit_code"], h["node"]) for h in job["history"]] == [
        ("FAILED", 137, "th1")]
    assert (job["failure"]["cause"], job["failure"]["node"], job["failure"]["rank"],
            job["failure"]["exit_code"]) == ("exit", "th1", "3", 137)
    assert_nothing_left(testhosts, job["job_id"])
    live = assert_record_matches_nodes(state, job["job_id"])
    codes = {r["rank"]: r["exit_code"] for n in live["nodes"] for r in n["ranks"]}
    assert codes[3] == 137 and set(codes) == {0, 1, 2, 3}


def test_orchestrator_sigkilled_mid_wait_status_and_down_recover(
        testhosts: TestHosts, two_hosts: Path, state: Path) -> None:
    waiter = orch_bg(state, "up", "-i", str(two_hosts), *UP, "--wait", "--entrypoint", SLEEPER)
    tail = StderrTail(waiter)
    try:
        wait_for(lambda: "watching job " in tail.text(), what="inside the watch loop")
        waiter.send_signal(signal.SIGKILL)
        tail.finish(timeout=30)
    finally:
        if waiter.poll() is None:
            waiter.kill()
    job_id = record(state)["job_id"]
    # The ranks do not depend on the orchestrator: still running, and status says so.
    live = assert_record_matches_nodes(state, job_id)
    assert live["status"] == "RUNNING"
    assert all(r["state"] == "running" for n in live["nodes"] for r in n["ranks"])
    # A rank dies while nobody watches: the next status finds out from the nodes.
    node, pid = rank_pid(state, "1")
    assert testhosts.ssh(node, f"kill -9 {pid}").returncode == 0
    wait_for(lambda: status_json(state, job_id)["status"] == "FAILED", timeout=30)
    assert "rank 1 on th0 exited 137" in record(state, job_id)["message"]
    # Nobody tore the job down (the dead `--wait` left no guard) and `status` only reads:
    # th1's ranks run on until `status --clean` (or `down`) stops them.
    assert record(state, job_id)["cleaned"] is False
    assert job_processes(testhosts, job_id, "th1")
    clean = orch(state, "status", job_id, "--clean")
    assert "stopped th1/2, th1/3" in clean.stderr, clean.stderr
    assert record(state, job_id)["cleaned"] is True
    assert_nothing_left(testhosts, job_id)
    down = orch(state, "down", job_id, "--yes")
    assert f"job {job_id} FAILED" in down.stdout  # down keeps the real outcome
    assert_nothing_left(testhosts, job_id)
    assert_record_matches_nodes(state, job_id)


def test_orchestrator_sigkilled_mid_up_then_down_cleans(testhosts: TestHosts, two_hosts: Path,
                                                        state: Path, tmp_path: Path) -> None:
    big = big_data_folder(tmp_path / "bigdata", mib=48)
    proc = orch_bg(state, "up", "-i", str(two_hosts), *UP, "--entrypoint", SLEEPER,
                   "--set", f"data.path={big}")
    try:
        wait_for(lambda: latest_status(state) == "LAUNCHING", interval=0.05)
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    job_id = record(state)["job_id"]
    assert record(state, job_id)["status"] == "LAUNCHING"  # what the dead orchestrator left
    down = orch(state, "down", job_id, "--yes")
    assert f"job {job_id} CANCELLED" in down.stdout
    assert_nothing_left(testhosts, job_id)
    assert_record_matches_nodes(state, job_id)
    # The nodes are free again: a new job can start there.
    orch(state, "up", "-i", str(two_hosts), *UP, "--entrypoint", "true", "--wait")
    assert record(state)["status"] == "SUCCEEDED"


def test_host_lost_mid_run_fails_wait_and_is_not_restarted_blindly(
        testhosts: TestHosts, two_hosts: Path, state: Path) -> None:
    """sshd (and with it the whole host: PID 1 of its namespace) dies mid-run."""
    waiter = orch_bg(state, "up", "-i", str(two_hosts), *UP, "--wait", "--entrypoint", SLEEPER,
                     "--node-lost-timeout", "3", "--max-restarts", "1")
    try:
        wait_for(lambda: latest_status(state) == "RUNNING")
        job_id = record(state)["job_id"]
        testhosts.stop("th1")
        out, err = waiter.communicate(timeout=180)
    finally:
        if waiter.poll() is None:
            waiter.kill()
    job = record(state, job_id)
    assert waiter.returncode == 1, out + err
    assert job["status"] == "FAILED" and job["attempts"] == 1
    assert job["history"][0]["cause"].startswith("node th1 unreachable for "), job["history"]
    assert "not restarted" in job["message"] and "th1" in job["message"], job["message"]
    assert_nothing_left(testhosts, job_id, ("th0",))  # torn down where reachable
    testhosts.start("th1")
    assert_nothing_left(testhosts, job_id)
    live = assert_record_matches_nodes(state, job_id)
    assert {r["state"] for r in live["nodes"][1]["ranks"]} <= {"lost", "exited"}


# --- automatic restart ------------------------------------------------------------------------

# Attempt 1: rank 1 exits 3 after 3 steps; a resumed attempt (ORCHESTRATE_RESUME=1) finishes.
FLAKY = ('if [ -z "${ORCHESTRATE_RESUME:-}" ]; then for i in 1 2 3; do echo "step=$i loss=2.0";'
         ' sleep 0.3; done; if [ "${MS_NODE_ID:-}" = 1 ]; then exit 3; fi; sleep 60; else '
         'echo \'{"resumed_step": 3}\' >"$ORCHESTRATE_RESUMED_FILE"; '  # as the trainer does
         'for i in 4 5 6; do echo "step=$i loss=1.0"; '
         'sleep 0.3; done; fi')
ALWAYS_FAILS = ('echo "step=1 loss=2.0"; sleep 0.5; if [ "${MS_NODE_ID:-}" = 1 ]; then exit 3; '
                'fi; sleep 60')


def test_restart_relaunches_with_resume_and_records_attempts(testhosts: TestHosts,
                                                             two_hosts: Path,
                                                             state: Path) -> None:
    up = orch(state, "up", "-i", str(two_hosts), *UP, "--wait", "--max-restarts", "2",
              "--entrypoint", FLAKY, check=False)
    no_traceback(up)
    job = record(state)
    assert up.returncode == 0 and job["status"] == "SUCCEEDED", up.stdout + up.stderr
    assert job["attempts"] == 2
    first, second = job["history"]
    assert first["status"] == "FAILED" and first["exit_code"] == 3
    assert first["cause"] == "rank 1 on th0 exited 3"
    assert second["status"] == "SUCCEEDED" and second["resumed_step"] == 3
    assert "attempt 1: FAILED" in up.stdout and "resumed from step 3" in up.stdout
    status = orch(state, "status", job["job_id"]).stdout
    assert "attempt 2: SUCCEEDED, resumed from step 3" in status
    # Every attempt's lines stay in the rank's log, each attempt opened by a marker.
    res = testhosts.ssh("th0", f"cat {job['nodes'][0]['job_dir']}/ranks/1/stdout.log")
    first_log, second_log = res.stdout.split("== orchestrate attempt 2 ==")
    assert "== orchestrate attempt 1 ==" in first_log and "step=3 loss=2.0" in first_log
    assert "step=6 loss=1.0" in second_log and "step=6" not in first_log
    assert_nothing_left(testhosts, job["job_id"])
    assert_record_matches_nodes(state, job["job_id"])


def test_restart_gives_up_after_n_with_last_cause(testhosts: TestHosts, two_hosts: Path,
                                                  state: Path) -> None:
    up = orch(state, "up", "-i", str(two_hosts), *UP, "--wait", "--max-restarts", "1",
              "--entrypoint", ALWAYS_FAILS, check=False)
    no_traceback(up)
    job = record(state)
    assert up.returncode == 1
    assert job["status"] == "FAILED" and job["attempts"] == 2 and len(job["history"]) == 2
    assert job["message"] == "gave up after 2 attempt(s): rank 1 on th0 exited 3"
    assert "gave up after 2 attempt(s): rank 1 on th0 exited 3" in up.stdout
    assert_nothing_left(testhosts, job["job_id"])
    assert_record_matches_nodes(state, job["job_id"])


def test_restart_only_on_listed_exit_codes(testhosts: TestHosts, two_hosts: Path,
                                           state: Path) -> None:
    up = orch(state, "up", "-i", str(two_hosts), *UP, "--wait", "--max-restarts", "3",
              "--restart-on-exit-codes", "42,43", "--entrypoint", ALWAYS_FAILS, check=False)
    job = record(state)
    assert up.returncode == 1 and job["attempts"] == 1
    assert "exit code 3 not in --restart-on-exit-codes" in job["message"]
    assert_nothing_left(testhosts, job["job_id"])


# --- hangs ----------------------------------------------------------------------------------

# Only rank 0 prints (as the trainer does); the other ranks are alive and silent.
RANK0_PRINTS = ('trap "exit 143" TERM; if [ "${MS_NODE_ID:-}" = 0 ]; then for i in $(seq 1200);'
                ' do echo "step=$i loss=1.5"; sleep 0.3; done; else sleep 600 & wait; fi')


def test_sigstopped_rank_is_stalled_and_torn_down_by_wait(testhosts: TestHosts,
                                                          two_hosts: Path,
                                                          state: Path) -> None:
    waiter = orch_bg(state, "up", "-i", str(two_hosts), *UP, "--wait", "--stall-timeout", "4",
                     "--entrypoint", RANK0_PRINTS)
    try:
        wait_for(lambda: latest_status(state) == "RUNNING")
        time.sleep(5)  # longer than the timeout: the silent ranks alone do not stall the job
        assert record(state)["status"] == "RUNNING"
        node, pid = rank_pid(state, "0")
        assert testhosts.ssh(node, f"kill -STOP {pid}").returncode == 0
        out, err = waiter.communicate(timeout=120)
    finally:
        if waiter.poll() is None:
            waiter.kill()
    job = record(state)
    assert waiter.returncode == 1, out + err
    assert job["status"] == "FAILED" and job["message"].startswith("stalled: "), job["message"]
    assert "--stall-timeout 4" in job["message"] and "rank 0 on th0" in job["message"]
    assert job["history"][-1]["cause"].startswith("stalled: ")
    assert_nothing_left(testhosts, job["job_id"])  # SIGKILL reaches a stopped process
    assert_record_matches_nodes(state, job["job_id"])


def test_status_reports_stalled(testhosts: TestHosts, two_hosts: Path, state: Path) -> None:
    orch(state, "up", "-i", str(two_hosts), *UP, "--entrypoint", RANK0_PRINTS)
    job_id = record(state)["job_id"]
    assert status_json(state, job_id, "--stall-timeout", "3")["status"] == "RUNNING"
    node, pid = rank_pid(state, "0")
    assert testhosts.ssh(node, f"kill -STOP {pid}").returncode == 0
    live = wait_for(lambda: (d := status_json(state, job_id, "--stall-timeout", "3"))
                    ["status"] == "STALLED" and d, timeout=30)
    assert "no rank logged anything" in live["message"]
    table = orch(state, "status", job_id, "--stall-timeout", "3").stdout
    assert "STALLED" in table
    assert record(state, job_id)["status"] == "STALLED"
    orch(state, "down", job_id, "--yes")
    assert record(state, job_id)["status"] == "CANCELLED"
    assert_nothing_left(testhosts, job_id)
