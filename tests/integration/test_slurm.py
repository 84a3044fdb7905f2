"""The Slurm backend on a real Slurm cluster: tests/slurmhosts.sh (munge, slurmctld, one
slurmd in each of 2 network-namespace test hosts x 2 CPUs), shared by every test here.

Driven through the real CLI in a subprocess, as a user would: one real tiny Bloom training
job, staged through the allocation, is stopped with `down --save`, resumed to its last step,
then `collect-ckpt` / `infer --job` use it; a `time: 1` job runs beside it and must end
FAILED naming the time limit. The failure cases use a trivial rank command (--entrypoint).
After each job no process of it is left on any host and Slurm's queue no longer lists it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import slurm_cluster

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
STATE = Path(tempfile.gettempdir()) / f"orchestrate-slurmhosts-{os.getpid()}"
SEED = REPO / "model" / "assets" / "alpaca_seed_tasks.json"
HOSTS = ("th0", "th1")
SLEEPER = 'trap "exit 143" TERM; for i in $(seq 1200); do echo "step=$i loss=1.5"; sleep 0.5; done'


@pytest.fixture(scope="module")
def cluster() -> Iterator[Path]:
    yield from slurm_cluster(STATE, 2, devices=2)


@pytest.fixture(scope="module")
def time_limited(cluster: Path, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """`up --wait` of a sleeper job with `time: 1` (Slurm's smallest limit, a minute), in the
    background: the training test asks for it first, so the minute this job waits for its
    limit overlaps the training. Its own workdir, so the nodes' job lock sees one job each."""
    cwd = tmp_path_factory.mktemp("time-limit")
    doc = yaml.safe_load(cluster.read_text())
    doc["time"] = 1
    doc["defaults"]["workdir"] += "/time-limit"
    inv = cwd / "tl.yaml"
    inv.write_text(yaml.safe_dump(doc))
    proc = start(cwd, "up", "-i", str(inv), "-c", "tiny", "--no-check", "--wait",
                 "--entrypoint", SLEEPER)
    try:
        yield proc, cwd
    finally:
        if proc.poll() is None:
            proc.kill()
            orch(cwd, "down", "--yes", check=False)


def slurm(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SLURM_CONF=str(STATE / "slurm" / "slurm.conf"))
    return subprocess.run(list(args), capture_output=True, text=True, env=env, check=False,
                          timeout=60)


def in_queue(job: str) -> bool:
    return job in slurm("squeue", "-h", "-o", "%i").stdout.split()


def ssh(name: str, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ssh", "-F", str(STATE / "ssh_config"), name, command],
                          capture_output=True, text=True, check=False, timeout=60,
                          stdin=subprocess.DEVNULL)


def orch(cwd: Path, *args: str, check: bool = True, timeout: float = 600
         ) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="120")
    proc = subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"orchestrate {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def start(cwd: Path, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="120")
    return subprocess.Popen([sys.executable, "-m", "orchestrator", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)


def record(cwd: Path) -> dict:
    recs = [json.loads(p.read_text()) for p in (cwd / ".orchestrate" / "jobs").glob("[!.]*.json")]
    return max(recs, key=lambda r: r["created_at"]) if recs else {}


def wait_for(pred, timeout: float = 120.0):  # type: ignore[no-untyped-def]
    end = time.time() + timeout
    while time.time() < end:
        if value := pred():
            return value
        time.sleep(0.5)
    raise AssertionError(f"condition not met within {timeout} s")


def job_processes(job_id: str, name: str) -> list[str]:
    res = ssh(name, f"grep -lzxF ORCHESTRATE_JOB_ID={job_id} /proc/[0-9]*/environ "
                    "2>/dev/null || true")
    return [p for p in res.stdout.split() if "/self/" not in p and "/thread-self/" not in p]


def assert_gone(job: dict) -> None:
    """Nothing of the job runs on any host, and squeue does not list its Slurm job."""
    for name in HOSTS:
        assert job_processes(job["job_id"], name) == [], f"{job['job_id']} still on {name}"
    # a SUCCEEDED job's batch script ends a moment after its ranks (launch.sh run polls)
    wait_for(lambda: not in_queue(job["scheduler_job"]), timeout=30)


def kill_rank(job: dict, rank: int) -> None:
    node = next(n for n in job["nodes"] if n["rank_start"] <= rank < n["rank_end"])
    res = ssh(node["name"], f"kill -9 $(cut -d' ' -f1 {node['job_dir']}/ranks/{rank}/pid)")
    assert res.returncode == 0, res.stderr


def running(cwd: Path) -> bool:
    """Every rank of the newest job runs (asked with `status`, which refreshes the record)."""
    job = record(cwd)
    if not job.get("scheduler_job"):
        return False
    status = json.loads(orch(cwd, "status", job["job_id"], "--json").stdout)
    return status["status"] == "RUNNING" and all(
        r["state"] == "running" for n in status["nodes"] for r in n["ranks"])


def checkpoints(job: dict) -> dict[int, list[int]]:
    """rank -> the steps it saved (its `bloom_rank_<r>-<step>.ckpt` files on its host)."""
    out = {}
    for node in job["nodes"]:
        for rank in range(node["rank_start"], node["rank_end"]):
            names = ssh(node["name"], f"ls {node['job_dir']}/output/checkpoint/rank_{rank}")
            out[rank] = sorted(int(n[:-5].rsplit("-", 1)[1]) for n in names.stdout.split()
                               if n.endswith(".ckpt"))
    return out


def logged_step(job: dict) -> int:
    """The newest `step=N` line rank 0 logged (0: none yet)."""
    node = job["nodes"][0]
    out = ssh(node["name"], f"grep -ao '^step=[0-9]*' {node['job_dir']}/ranks/0/stdout.log "
                            "| tail -1").stdout.strip()
    return int(out.split("=")[1]) if out.startswith("step=") else 0


STEPS = 120  # room: the stop request lands 1-2 s after it is sent and is seen at the next
# agreed stop check (graceful.StopPoll: about every second, at most 20 steps apart); with 40
# fast steps the run could end first (saved == STEPS, seen once)


@pytest.mark.slow
@pytest.mark.usefixtures("time_limited")
def test_allocation_staged_training_down_save_resume_collect_infer(cluster: Path,
                                                                   tmp_path: Path) -> None:
    """One real tiny training job for the whole flow (~the cost of one job; the time-limit
    job of `time_limited` runs beside it):
    `up --backend slurm` with `stage: allocation` (code and data through the Slurm job, from
    a spool under tmp_path); `down --save` once it logged step 2 -> every rank saved the same
    step N, CANCELLED with saved_step N, the Slurm job gone; `resume --wait` -> SUCCEEDED at
    the final step on both hosts; `collect-ckpt` and `infer --job` on it."""
    doc = yaml.safe_load(cluster.read_text())
    assert doc.pop("backend") == "slurm"  # --backend chooses it instead
    doc.update(stage="allocation", spool=str(tmp_path / "spool"))
    inv = tmp_path / "inv.yaml"
    inv.write_text(yaml.safe_dump(doc))
    orch(tmp_path, "prepare-data", "--input", str(SEED), "--output", str(tmp_path / "data"),
         "--seq-length", "32")
    up = orch(tmp_path, "up", "-i", str(inv), "--backend", "slurm", "-c", "tiny", "--no-check",
              "--set", f"data.path={tmp_path / 'data'}", "--set", f"train.steps={STEPS}",
              "--set", "train.save_steps=1000", "--set", "train.seq_length=32",
              "--set", "train.log_steps=1", "--set", "train.warmup_steps=0")
    job = record(tmp_path)
    spool = tmp_path / "spool" / job["job_id"]
    assert f"bundled 2 node(s) into {spool}/bundle.tar" in up.stdout, up.stdout
    batch = (tmp_path / ".orchestrate" / "jobs" / job["job_id"] / "slurm-attempt1.sbatch"
             ).read_text()
    assert f"#SBATCH --output={spool}/slurm-%j.out" in batch and "\norchestrate_stage\n" in batch
    wait_for(lambda: logged_step(job) >= 2, timeout=300)
    down = orch(tmp_path, "down", job["job_id"], "--save", "--yes", "--save-timeout", "120")
    job = record(tmp_path)
    saved = job["saved_step"]
    assert job["status"] == "CANCELLED" and isinstance(saved, int), (job, down.stdout)
    assert job["message"] == f"stopped by down --save: step {saved} saved on every rank"
    assert 2 <= saved < STEPS and checkpoints(job) == {r: [saved] for r in range(4)}
    out = (spool / f"slurm-{job['scheduler_job']}.out").read_text()
    assert all(f"{h}: staged {spool}/bundle.tar into " in out for h in HOSTS), out
    assert_gone(job)

    orch(tmp_path, "resume", job["job_id"], "--wait")
    job = record(tmp_path)
    assert job["status"] == "SUCCEEDED" and job["attempts"] == 2, job
    assert checkpoints(job) == {r: [saved, STEPS] for r in range(4)}
    state = wait_for(lambda: "JobState=COMPLETED" in (out := slurm(
        "scontrol", "show", "job", "-o", job["scheduler_job"]).stdout) and out, timeout=30)
    assert "NodeList=th[0-1]" in state
    assert_gone(job)
    got = orch(tmp_path, "collect-ckpt")
    assert f"bloom_tiny_step{STEPS}.ckpt" in got.stdout
    # raw: the Alpaca template alone (30 tokens) does not fit this job's seq_length 32 - 3
    inf = orch(tmp_path, "infer", "--job", "latest", "--max-new-tokens", "3", "--raw",
               "Add 2 and 1.")
    assert inf.stdout.startswith("Add 2 and 1.")


def test_time_limit_fails_the_job_naming_it(
        time_limited: tuple[subprocess.Popen[str], Path]) -> None:
    """The `time: 1` job (started by `time_limited`, beside the training test): FAILED naming
    the time limit in one line, nothing of it left on the hosts."""
    proc, cwd = time_limited
    out, err = proc.communicate(timeout=300)
    job = record(cwd)
    assert proc.returncode == 1 and job["status"] == "FAILED", out + err
    assert job["message"].startswith(f"slurm job {job['scheduler_job']} TIMEOUT (TimeLimit)")
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"job {job['job_id']} FAILED: slurm job {job['scheduler_job']} "
                           "TIMEOUT (TimeLimit)"), out
    assert_gone(job)


def up_wait_and_kill(cwd: Path, rank: int, *args: str) -> tuple[int, str, str]:
    """`up --wait ARGS` in the background; once every rank runs, SIGKILL `rank`; wait for
    `up` to end. Returns (its exit code, the first attempt's Slurm job id, its output)."""
    waiter = start(cwd, "up", "--no-check", "--wait", *args)
    try:
        wait_for(lambda: running(cwd))
        first = record(cwd)["scheduler_job"]
        kill_rank(record(cwd), rank)
        out, err = waiter.communicate(timeout=240)
    finally:
        if waiter.poll() is None:
            waiter.kill()
    return waiter.returncode, first, out + err


def test_killed_rank_fails_the_job_naming_rank_and_node(cluster: Path, tmp_path: Path) -> None:
    code, _, out = up_wait_and_kill(tmp_path, 3, "-i", str(cluster), "-c", "tiny",
                                    "--entrypoint", SLEEPER)
    job = record(tmp_path)
    assert code == 1, out
    assert job["status"] == "FAILED" and "rank 3 on th1" in job["message"], job["message"]
    assert_gone(job)


def test_max_restarts_resubmits_after_a_kill(cluster: Path, tmp_path: Path) -> None:
    cmd = f'if [ -n "${{ORCHESTRATE_RESUME:-}}" ]; then echo "step=9 loss=1"; exit 0; fi; {SLEEPER}'
    code, first, out = up_wait_and_kill(tmp_path, 1, "-i", str(cluster), "-c", "tiny",
                                        "--max-restarts", "1", "--entrypoint", cmd)
    job = record(tmp_path)
    assert code == 0, out
    assert job["status"] == "SUCCEEDED" and job["attempts"] == 2
    assert job["history"][0]["status"] == "FAILED" and "rank 1 on th0" in job["history"][0][
        "cause"]
    assert job["scheduler_job"] != first and not in_queue(first)
    assert_gone(job)


def test_pending_shows_slurm_reason_then_down_cancels(cluster: Path, tmp_path: Path) -> None:
    blocker = slurm("sbatch", "--parsable", "-N2", "--exclusive", "--output=/dev/null",
                    "--wrap", "sleep 600")
    assert blocker.returncode == 0, blocker.stderr
    try:
        orch(tmp_path, "up", "-i", str(cluster), "-c", "tiny", "--no-check", "--no-guard",
             "--entrypoint", SLEEPER)
        job = record(tmp_path)
        status = wait_for(lambda: (s := json.loads(orch(tmp_path, "status", "--json").stdout))
                          ["status"] == "PENDING" and s)
        assert f"slurm job {job['scheduler_job']} PENDING (Resources)" in status["message"]
        assert status["scheduler_job"] == job["scheduler_job"]
        table = orch(tmp_path, "status").stdout
        assert f"PENDING  (msrun, 4 ranks, slurm job {job['scheduler_job']})" in table, table
        assert "PENDING (Resources)" in table
    finally:
        slurm("scancel", blocker.stdout.strip())
    wait_for(lambda: running(tmp_path))
    down = orch(tmp_path, "down", "--yes")
    job = record(tmp_path)
    assert job["status"] == "CANCELLED", down.stdout + down.stderr
    assert_gone(job)


def test_a_down_node_fails_the_job_naming_it(cluster: Path, tmp_path: Path) -> None:
    assert slurm("scontrol", "update", "nodename=th1", "state=down", "reason=test").returncode == 0
    try:
        res = orch(tmp_path, "up", "-i", str(cluster), "-c", "tiny", "--no-check", "--wait",
                   "--entrypoint", SLEEPER, check=False, timeout=180)
    finally:
        slurm("scontrol", "update", "nodename=th1", "state=resume")
        wait_for(lambda: slurm("sinfo", "-h", "-n", "th1", "-o", "%t").stdout.strip() == "idle")
    job = record(tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr
    assert job["status"] == "FAILED" and "UnavailableNodes:th1" in job["message"]
    assert f"job {job['job_id']} FAILED: slurm job {job['scheduler_job']} PENDING " \
           "(ReqNodeNotAvail, UnavailableNodes:th1): Slurm cannot schedule it" in res.stdout
    assert_gone(job)


def test_bad_partition_is_a_one_line_error(cluster: Path, tmp_path: Path) -> None:
    inv = tmp_path / "bad.yaml"
    inv.write_text(cluster.read_text().replace("partition: debug", "partition: nope"))
    res = orch(tmp_path, "up", "-i", str(inv), "-c", "tiny", "--no-check", "--entrypoint",
               SLEEPER, check=False)
    assert res.returncode == 1
    error = res.stderr.strip().splitlines()[-1]
    assert "invalid partition specified: nope" in error and "bad.yaml" in error, res.stderr
    job = record(tmp_path)
    assert job["status"] == "FAILED" and "nope" in job["message"]
    for node in job["nodes"]:  # refused before staging: nothing was sent to the hosts
        assert ssh(node["name"], f"test -e {node['job_dir']}").returncode == 1


def test_a_rank_order_other_than_slurms_fails_naming_both(cluster: Path, tmp_path: Path) -> None:
    """th0 given by its ssh alias sorts after th1's address, so the plan's rank order is
    th1 th0 while Slurm's node order is th0 th1: the step refuses before any rank starts."""
    doc = yaml.safe_load(cluster.read_text())
    doc["nodes"][0]["host"] = "th0"  # ssh_config's alias: rank order sorts addresses
    inv = tmp_path / "inv.yaml"
    inv.write_text(yaml.safe_dump(doc))
    res = orch(tmp_path, "up", "-i", str(inv), "-c", "tiny", "--no-check", "--wait",
               "--entrypoint", SLEEPER, check=False, timeout=180)
    job = record(tmp_path)
    assert [n["name"] for n in job["nodes"]] == ["th1", "th0"]
    said = ("slurm placed the job on th0 th1 (SLURM_JOB_NODELIST=th[0-1]) in that node order, "
            "the plan (rank order, by address) has th1 th0")
    assert res.returncode == 1 and job["status"] == "FAILED"
    assert said in job["message"] and f"slurm job {job['scheduler_job']} FAILED" in \
        job["message"], job["message"]
    assert said in res.stdout.splitlines()[-1]
    th1 = job["nodes"][0]
    log = ssh("th1", f"cat {th1['job_dir']}/ranks/0/stdout.log").stdout
    assert log == f"orchestrate: th1: {said}\n"
    assert_gone(job)
