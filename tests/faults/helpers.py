"""Helpers of the fault-injection suite: run the CLI, read records, look for job processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tests.integration.conftest import TestHosts, default_sigint

REPO = Path(__file__).resolve().parents[2]
HOSTS = ("th0", "th1")
T = TypeVar("T")

# A trivial rank: prints a step line every 0.3 s for ~6 minutes; exits 143 on SIGTERM.
SLEEPER = 'trap "exit 143" TERM; for i in $(seq 1200); do echo "step=$i loss=1.5"; sleep 0.3; done'


# `up` arguments for trivial rank commands (--entrypoint): without `data.path=` every `up` would
# first prepare tiny's shipped Alpaca file to MindRecord (a MindSpore subprocess, seconds).
TRIVIAL_UP = ("-c", "tiny", "--no-check", "--stop-grace", "1", "--set", "data.path=")


# The real-trainer cases (test_graceful_stop, test_restart_trainer): th0 + th1 x 1 rank, tiny
# Bloom, 60 steps, a loss line every step. Checkpoint cadence (train.save_steps) does not
# change the trajectory, so each case adds its own and compares with one reference run.
REAL_STEPS = 60
REAL_SETS = ("-c", "tiny", "--no-check", "--set", f"train.steps={REAL_STEPS}",
             "--set", "train.log_steps=1", "--set", "train.warmup_steps=0")


@dataclass(frozen=True)
class Reference:
    """The uninterrupted run every real-trainer case compares its final loss with."""

    job_id: str
    loss: float  # full precision, from rank 0's step-60 checkpoint manifest


def orch(state: Path, *args: str, check: bool = True, timeout: float = 600,
         ) -> subprocess.CompletedProcess[str]:
    """`python -m orchestrator ARGS --state-dir STATE` from the repo, as a user would."""
    proc = subprocess.run([sys.executable, "-m", "orchestrator", *args, "--state-dir",
                           str(state)], capture_output=True, text=True, env=cli_env(),
                          timeout=timeout, cwd=REPO, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"orchestrate {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def orch_bg(state: Path, *args: str) -> subprocess.Popen[str]:
    """The CLI in the background (to signal it)."""
    return subprocess.Popen([sys.executable, "-m", "orchestrator", *args, "--state-dir",
                             str(state)], cwd=REPO, env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                            preexec_fn=default_sigint)


def cli_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="120")


def records(state: Path) -> list[dict[str, Any]]:
    folder = state / "jobs"
    if not folder.is_dir():
        return []
    out = []
    for p in folder.glob("*.json"):
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(out, key=lambda r: r["created_at"])


def record(state: Path, job_id: str | None = None) -> dict[str, Any]:
    """The job's record as stored (the latest job's when no id)."""
    if job_id is None:
        recs = records(state)
        assert recs, f"no job record in {state}"
        return recs[-1]
    return json.loads((state / "jobs" / f"{job_id}.json").read_text())


def latest_status(state: Path) -> str | None:
    recs = records(state)
    return recs[-1]["status"] if recs else None


def status_json(state: Path, job_id: str, *extra: str) -> dict[str, Any]:
    return json.loads(orch(state, "status", job_id, "--json", *extra).stdout)


def job_processes(hosts: TestHosts, job_id: str, name: str) -> list[str]:
    """PIDs in `name`'s PID namespace whose environment carries the job id."""
    res = hosts.ssh(name, f"grep -lzxF ORCHESTRATE_JOB_ID={job_id} /proc/[0-9]*/environ "
                          "2>/dev/null || true")
    assert res.returncode == 0, res.stderr
    return [line for line in res.stdout.split() if "/self/" not in line
            and "/thread-self/" not in line]


def assert_nothing_left(hosts: TestHosts, job_id: str, names: tuple[str, ...] = HOSTS,
                        timeout: float = 30.0) -> None:
    """(b): no process of the job in any host's PID namespace (within `timeout` s)."""
    wait_for(lambda: all(not job_processes(hosts, job_id, n) for n in names), timeout,
             what=f"job {job_id} processes gone from {names}")


def wait_for(pred: Callable[[], T], timeout: float = 60.0, interval: float = 0.3,
             what: str = "condition") -> T:
    end = time.time() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.time() > end:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(interval)


def logged_step(hosts: TestHosts, job_dir: str, node: str = "th0") -> int:
    """The newest `step=N` line rank 0 of `job_dir` logged on `node` (0: none yet)."""
    out = hosts.ssh(node, f"grep -ao '^step=[0-9]*' {job_dir}/ranks/0/stdout.log | tail -1")
    text = out.stdout.strip()
    return int(text.split("=")[1]) if text.startswith("step=") else 0


def rank_pid(state: Path, slot: str) -> tuple[str, int]:
    """(node, pid) of a slot ("0", "3", ...) of the latest job, from its record."""
    for n in record(state)["nodes"]:
        if slot in n["pids"]:
            return n["name"], int(n["pids"][slot])
    raise AssertionError(f"no slot {slot} in the record")


def no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr


def assert_record_matches_nodes(state: Path, job_id: str) -> dict[str, Any]:
    """(c): the stored status equals what `status` derives from the nodes, and no rank runs
    when the record says the job ended."""
    live = status_json(state, job_id)
    stored = record(state, job_id)
    assert stored["status"] == live["status"], (stored["status"], live)
    if live["status"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
        running = [(n["name"], r["rank"]) for n in live["nodes"] for r in n["ranks"]
                   if r["state"] == "running"]
        assert not running, f"record says {live['status']} but ranks run: {running}"
    return live


def veth(hosts: TestHosts, name: str) -> str:
    """The bridge-side veth of a netns test host (tests/testhosts.sh: oth<tag><index>)."""
    from tests.integration.conftest import set_tag

    assert hosts.variant == "netns", "a network partition needs the netns test hosts"
    return f"oth{set_tag(hosts.state)}{int(name.removeprefix('th'))}"


def partition(hosts: TestHosts, name: str) -> None:
    """Cut the host off the network (its veth down); its processes keep running."""
    subprocess.run(["ip", "link", "set", veth(hosts, name), "down"], check=True, timeout=30)


def heal(hosts: TestHosts, name: str) -> None:
    """Bring the host's veth back up (idempotent)."""
    subprocess.run(["ip", "link", "set", veth(hosts, name), "up"], check=True, timeout=30)


def guard_alive(state: Path, job_id: str) -> bool:
    """Whether the job's background guard (job/guard.py) still runs."""
    from orchestrator.job.guard import guard_pid
    from orchestrator.job.state import JobStore

    return guard_pid(JobStore(state), job_id) is not None


def pids_seen_from_here(job_id: str) -> list[int]:
    """Processes of the job in any test host, seen from this machine's /proc (every host's PID
    namespace is a child of ours): works while a host is cut off the network."""
    needle = f"ORCHESTRATE_JOB_ID={job_id}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if needle in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def edited_inventory(base: Path, tmp_path: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of the inventory `base` at tmp_path/inv.yaml, changed by `edit(doc)`."""
    doc = yaml.safe_load(base.read_text())
    edit(doc)
    path = tmp_path / "inv.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path
