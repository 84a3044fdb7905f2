"""Run rendered launch scripts with bash on this machine: start, status, supervision, stop.

No SSH here: the script is what runs on a node, so it is exercised directly (trivial rank
commands, a few seconds in all). The SSH path is in tests/integration/test_lifecycle*.py.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from orchestrator.config.inventory import parse_inventory
from orchestrator.config.plan import build_plan
from orchestrator.config.presets import load_job_spec
from orchestrator.job.nodes import parse_status
from orchestrator.job.render import LaunchSpec, render_job

INV = "defaults: {devices: 2, connection: local, workdir: w}\nnodes: [{host: 127.0.0.1, name: n}]\n"


def _job(tmp_path: Path, job_id: str, entrypoint: str) -> Path:
    """Render job_id's launch.sh into tmp_path/jobs/job_id (tmp_path: the node's workdir)."""
    plan = build_plan(parse_inventory(INV, "inv.yaml"), load_job_spec("tiny"))
    launch = LaunchSpec(job_id=job_id, mode="msrun", world_size=2, sched_host="127.0.0.1",
                        entrypoint=entrypoint, stop_grace=1)
    job_dir = tmp_path / "jobs" / job_id
    job_dir.mkdir(parents=True)
    (job_dir / "launch.sh").write_text(render_job(launch, plan)["n"]["launch.sh"].text)
    return job_dir


def _sh(job_dir: Path, *sub: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(job_dir / "launch.sh"), *sub], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


def _until(pred, timeout: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.1)
    return False


def _pids_alive(job_dir: Path) -> list[int]:
    out = []
    for pid_file in job_dir.glob("ranks/*/pid"):
        pid = int(pid_file.read_text().split()[0])
        try:
            os.kill(pid, 0)
            if Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z":
                out.append(pid)
        except (ProcessLookupError, FileNotFoundError):
            continue
    return out


def test_ranks_run_detached_and_succeed(tmp_path: Path) -> None:
    job = _job(tmp_path, "t-ok", 'echo "step=3 loss=1.5 tokens_per_s=9 rank=${MS_NODE_ID:-s}"')
    res = _sh(job, "start")
    assert res.returncode == 0, res.stderr
    assert sorted(line.split()[1] for line in res.stdout.splitlines()) == ["0", "1", "sched"]
    assert _until(lambda: (job / "node_done").exists())
    report = parse_status("n", _sh(job, "status").stdout)
    assert [(s.slot, s.state, s.exit_code) for s in report.slots] == [
        ("sched", "exited", 0), ("0", "exited", 0), ("1", "exited", 0)]
    assert report.slots[1].metrics == {"step": 3.0, "loss": 1.5, "tokens_per_s": 9.0}
    assert (job / "output" / "log" / "rank_1" / "stdout.log").read_text().endswith("rank=1\n")
    assert not (tmp_path / "jobs" / "ACTIVE").exists(), "the node lock is released"


def test_failed_rank_stops_the_others_and_lock_refuses_second_job(tmp_path: Path) -> None:
    job = _job(tmp_path, "t-fail",
               'trap "" TERM; [ "${MS_NODE_ID:-}" = 1 ] && { sleep 1; exit 3; }; sleep 60')
    other = _job(tmp_path, "t-other", "true")
    assert _sh(job, "start").returncode == 0
    busy = _sh(other, "start")
    assert busy.returncode == 3 and "job t-fail is running" in busy.stderr
    assert _until(lambda: (job / "node_done").exists())
    report = parse_status("n", _sh(job, "status").stdout)
    codes = {s.slot: s.exit_code for s in report.slots}
    assert codes["1"] == 3 and codes["0"] == 137 and codes["sched"] == 137  # TERM ignored: KILL
    assert report.first_failure is not None and report.first_failure[:2] == ("1", 3)
    assert _pids_alive(job) == []
    assert _sh(other, "start").returncode == 0, "lock released once the job ended"


def test_stop_kills_groups_and_escaped_children(tmp_path: Path) -> None:
    # Each rank starts a grandchild in a session of its own: group kill cannot reach it,
    # the scan for the job id in /proc/*/environ does.
    job = _job(tmp_path, "t-stop", 'setsid sleep 300 </dev/null >/dev/null 2>&1 & sleep 300')
    assert _sh(job, "start").returncode == 0
    assert _until(lambda: len(_pids_alive(job)) == 3)
    res = _sh(job, "stop")
    assert res.returncode == 0 and res.stdout.strip() == "stopped", res.stdout + res.stderr
    leftover = subprocess.run(["grep", "-lzxF", "ORCHESTRATE_JOB_ID=t-stop",
                               *map(str, Path("/proc").glob("[0-9]*/environ"))],
                              capture_output=True, text=True)
    assert leftover.stdout == ""
    again = _sh(job, "stop")  # idempotent
    assert again.returncode == 0 and again.stdout.strip() == "stopped"
    states = {s.state for s in parse_status("n", _sh(job, "status").stdout).slots}
    assert states <= {"exited", "lost"}


def test_stop_leaves_another_node_of_the_job_on_the_same_machine(tmp_path: Path) -> None:
    # Two nodes of one job share this machine (as loopback test hosts or local nodes do),
    # each with its own workdir: stopping node b stops b's ranks and their escaped children,
    # and none of node a's.
    cmd = 'setsid sleep 300 </dev/null >/dev/null 2>&1 & sleep 300'
    node_a, node_b = _job(tmp_path / "a", "t-two", cmd), _job(tmp_path / "b", "t-two", cmd)
    try:
        assert _sh(node_a, "start").returncode == 0 and _sh(node_b, "start").returncode == 0
        assert _until(lambda: len(_pids_alive(node_a)) == 3 and len(_pids_alive(node_b)) == 3)
        ranks_a = _pids_alive(node_a)
        res = _sh(node_b, "stop")
        assert res.returncode == 0 and res.stdout.strip() == "stopped", res.stdout + res.stderr
        assert _pids_alive(node_b) == []
        assert _pids_alive(node_a) == ranks_a, "node b's stop reached node a's ranks"
    finally:
        res = _sh(node_a, "stop")
    assert res.returncode == 0 and res.stdout.strip() == "stopped", res.stdout + res.stderr
    leftover = subprocess.run(["grep", "-lzxF", "ORCHESTRATE_JOB_ID=t-two",
                               *map(str, Path("/proc").glob("[0-9]*/environ"))],
                              capture_output=True, text=True)
    assert leftover.stdout == ""


def test_start_resume_clears_the_last_attempts_resume_record(tmp_path: Path) -> None:
    # Attempt 1 writes a record (as a resumed trainer would); attempt 2 writes none: after
    # `start resume` nothing of attempt 1's record is left to be read as attempt 2's.
    job = _job(tmp_path, "t-res", '[ -n "${ORCHESTRATE_RESUME:-}" ] || '
               'echo \'{"resumed_step": 7}\' >"$ORCHESTRATE_RESUMED_FILE"')
    assert _sh(job, "start").returncode == 0
    assert _until(lambda: (job / "node_done").exists())
    records = sorted(p.parent.name for p in job.glob("ranks/*/resumed.json"))
    assert records == ["0", "1", "sched"]
    assert _until(lambda: "supervisor exited" in _sh(job, "status").stdout)
    res = _sh(job, "start", "resume")
    assert res.returncode == 0 and "already started" not in res.stdout, res.stdout
    assert _until(lambda: (job / "node_done").exists())
    assert (job / "attempt").read_text().strip() == "2"
    assert list(job.glob("ranks/*/resumed.json")) == []


def test_run_is_the_one_foreground_mode(tmp_path: Path) -> None:
    """`launch.sh run [resume]` in a local shell (as a Slurm task or a Kubernetes container
    runs it): every rank's lines on stdout prefixed [slot], the exit code says whether every
    slot exited 0, a failed rank stops the others, `run resume` reaches the ranks."""
    ok = _job(tmp_path, "run-ok", 'echo "rank $MS_NODE_ID resume=${ORCHESTRATE_RESUME:-0}"')
    done = _sh(ok, "run")
    assert done.returncode == 0, done.stderr
    assert {"[0] rank 0 resume=0", "[1] rank 1 resume=0"} <= set(done.stdout.splitlines())
    again = _sh(ok, "run", "resume")
    assert again.returncode == 0, again.stderr
    lines = again.stdout.splitlines()  # this attempt's lines only (the logs keep both)
    assert {"[0] rank 0 resume=1", "[1] rank 1 resume=1"} <= set(lines)
    assert not any("resume=0" in line for line in lines)
    bad = _job(tmp_path, "run-bad", 'if [ "$MS_NODE_ID" = 1 ]; then exit 3; fi; exec sleep 300')
    failed = _sh(bad, "run")
    assert failed.returncode != 0 and _pids_alive(bad) == []
