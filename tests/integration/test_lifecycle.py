"""Job lifecycle against real sshd test hosts: up / status / logs / down and failure cases.

Two test hosts (th0, th1) x 2 CPU ranks each, driven through the real CLI in a subprocess
(`python -m orchestrator ...`), as a user would. The end-to-end case trains the real tiny
Bloom for 50 steps, then collect-ckpt merges it and `infer --job latest` answers (marked slow);
the failure cases use a trivial rank command (--entrypoint).
After every test no process carrying the job id exists in any host's PID namespace.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import StderrTail, TestHosts, default_sigint
from tests.tools.big_data import big_data_folder

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
HOSTS = ("th0", "th1")
SLEEPER = 'trap "exit 143" TERM; for i in $(seq 1200); do echo "step=$i loss=1.5"; sleep 0.5; done'


@pytest.fixture(scope="module")
def two_hosts(testhosts: TestHosts, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An inventory of th0 and th1 with 2 CPU ranks each (from the test hosts' own)."""
    doc = yaml.safe_load(testhosts.inventory.read_text())
    doc["defaults"]["devices"] = 2
    doc["nodes"] = [n for n in doc["nodes"] if n["name"] in HOSTS]
    path = tmp_path_factory.mktemp("inv") / "two.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def state(tmp_path: Path, testhosts: TestHosts) -> Iterator[Path]:
    """A state dir; every job still recorded there is brought down after the test."""
    yield tmp_path / "state"
    for name in HOSTS:
        testhosts.start(name)  # idempotent: a test may have stopped one
    for rec in (tmp_path / "state" / "jobs").glob("*.json"):
        orch(tmp_path / "state", "down", rec.stem, "--yes", check=False)


def orch(state: Path, *args: str, check: bool = True, timeout: float = 600,
         ) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="120")
    proc = subprocess.run([sys.executable, "-m", "orchestrator", *args, "--state-dir",
                           str(state)], capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=state.parent, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"orchestrate {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def _records(state: Path) -> list[dict]:
    """Every job record; not the hidden temp files of a record being written (write_atomic)."""
    return [json.loads(p.read_text()) for p in (state / "jobs").glob("[!.]*.json")]


def record(state: Path, job_id: str | None = None) -> dict:
    if job_id is None:
        return max(_records(state), key=lambda r: r["created_at"])
    return json.loads((state / "jobs" / f"{job_id}.json").read_text())


def latest_status(state: Path) -> str | None:
    """Status of the newest job record, None while `up` has not written one yet."""
    recs = _records(state)
    return max(recs, key=lambda r: r["created_at"])["status"] if recs else None


def job_processes(hosts: TestHosts, job_id: str, name: str) -> list[str]:
    """PIDs in `name`'s PID namespace whose environment carries the job id."""
    res = hosts.ssh(name, f"grep -lzxF ORCHESTRATE_JOB_ID={job_id} /proc/[0-9]*/environ "
                          "2>/dev/null || true")
    assert res.returncode == 0, res.stderr
    return [line for line in res.stdout.split() if "/self/" not in line
            and "/thread-self/" not in line]


def assert_nothing_left(hosts: TestHosts, job_id: str, names: tuple[str, ...] = HOSTS) -> None:
    for name in names:
        assert job_processes(hosts, job_id, name) == [], f"job {job_id} still runs on {name}"


def wait_for(pred, timeout: float = 60.0, interval: float = 0.5):  # type: ignore[no-untyped-def]
    end = time.time() + timeout
    while time.time() < end:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An Alpaca JSON file: `up` prepares it into MindRecord locally and stages that."""
    from tests.model.data_helpers import seed_records

    root = tmp_path_factory.mktemp("data")
    (root / "seed.json").write_text(json.dumps(seed_records()))
    return root / "seed.json"


E2E_STEPS = 20  # two log lines (tiny: log_steps 10) and the final save; was 50


@pytest.mark.slow
def test_tiny_job_end_to_end(testhosts: TestHosts, two_hosts: Path, state: Path,
                             tiny_data: Path, tmp_path: Path) -> None:
    up = orch(state, "up", "-i", str(two_hosts), "-c", "tiny", "--set", f"train.steps={E2E_STEPS}",
              "--set", f"data.path={tiny_data}", "--wait")
    job = record(state)
    assert job["status"] == "SUCCEEDED", up.stdout + up.stderr
    job_id = job["job_id"]
    for node in job["nodes"]:
        for rank in range(node["rank_start"], node["rank_end"]):
            res = testhosts.ssh(node["name"], f"ls {node['job_dir']}/output/checkpoint/rank_{rank}")
            assert f"bloom_rank_{rank}-{E2E_STEPS}.ckpt" in res.stdout, (node["name"], res.stdout)
    status = json.loads(orch(state, "status", job_id, "--json").stdout)
    assert status["status"] == "SUCCEEDED" and status["attempts"] == 1
    rank0 = status["nodes"][0]["ranks"][0]
    assert rank0["rank"] == 0 and rank0["state"] == "exited" and rank0["exit_code"] == 0
    assert rank0["step"] == E2E_STEPS and 0 < rank0["loss"] < 10
    fetched = tmp_path / "logs"
    orch(state, "logs", job_id, "--fetch", str(fetched))
    for node in job["nodes"]:
        for rank in range(node["rank_start"], node["rank_end"]):
            assert (fetched / node["name"] / f"rank_{rank}.log").is_file()
    assert f"step={E2E_STEPS} " in (fetched / "th0" / "rank_0.log").read_text()
    assert_nothing_left(testhosts, job_id)

    # collect-ckpt + infer --job on the same job (was test_collect_e2e.py, which trained a
    # second tiny 2 x 2 job, 10 steps, on its own host set for this)
    got = orch(state, "collect-ckpt")  # the latest job, its own inventory
    assert "fetching ranks [0] only" in " ".join(got.stderr.split())  # 1 replica of 4 DP ranks
    merged = Path(state.parent, got.stdout.strip().split("merged checkpoint: ")[1])
    assert merged.name == f"bloom_tiny_step{E2E_STEPS}.ckpt"
    assert sorted(p.name for p in merged.parent.parent.iterdir()) == [
        ".verified.json", "merged", "rank_0"]
    assert "check" in got.stderr  # loaded into BloomLMHeadModel
    inf = orch(state, "infer", "--job", "latest", "--max-new-tokens", "5", "Add 2 and 1.")
    assert inf.stdout.startswith("Add 2 and 1.") and len(inf.stdout.strip()) > len("Add 2 and 1.")


def test_rank_killed_fails_job_on_every_host(testhosts: TestHosts, two_hosts: Path,
                                             state: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    waiter = subprocess.Popen([sys.executable, "-m", "orchestrator", "up", "-i", str(two_hosts),
                               "-c", "tiny", "--no-check", "--wait", "--entrypoint", SLEEPER,
                               "--state-dir", str(state)], cwd=state.parent, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: latest_status(state) == "RUNNING")
        job = record(state)
        pid = job["nodes"][1]["pids"]["3"]  # rank 3 lives on th1
        assert testhosts.ssh("th1", f"kill -9 {pid}").returncode == 0
        killed_at = time.time()
        out, err = waiter.communicate(timeout=120)
    finally:
        if waiter.poll() is None:
            waiter.kill()
    assert waiter.returncode == 1, out + err
    job = record(state, job["job_id"])
    assert job["status"] == "FAILED" and "rank 3 on th1" in job["message"]
    wait_for(lambda: all(not job_processes(testhosts, job["job_id"], n) for n in HOSTS),
             timeout=max(1.0, 60 - (time.time() - killed_at)))


def test_host_down_before_up_starts_nothing(testhosts: TestHosts, two_hosts: Path,
                                            state: Path) -> None:
    testhosts.stop("th1")
    try:
        res = orch(state, "up", "-i", str(two_hosts), "-c", "tiny", "--entrypoint", SLEEPER,
                   check=False, timeout=120)
    finally:
        testhosts.start("th1")
    assert res.returncode == 1
    assert "th1" in res.stderr and "nothing was started" in res.stderr, res.stderr
    # the check comes before any local work: no job was recorded, rendered or prepared
    assert [p.name for p in (state / "jobs").iterdir()] == [".lock"]


def test_second_up_on_busy_nodes_is_refused_then_down_cleans(testhosts: TestHosts,
                                                            two_hosts: Path,
                                                            state: Path) -> None:
    orch(state, "up", "-i", str(two_hosts), "-c", "tiny", "--no-check", "--entrypoint", SLEEPER)
    first = record(state)["job_id"]
    second = orch(state, "up", "-i", str(two_hosts), "-c", "tiny", "--no-check",
                  "--entrypoint", "true", check=False)
    assert second.returncode == 1
    assert f"node busy: job {first} is running" in second.stderr
    assert f"orchestrate down {first}" in second.stderr
    assert record(state, first)["status"] == "RUNNING"
    down = orch(state, "down", first, "--yes")
    assert f"job {first} CANCELLED" in down.stdout
    assert_nothing_left(testhosts, first)
    again = orch(state, "down", first, "--yes")  # idempotent
    assert f"job {first} CANCELLED" in again.stdout


def test_down_with_a_host_unreachable_names_it(testhosts: TestHosts, two_hosts: Path,
                                               state: Path) -> None:
    orch(state, "up", "-i", str(two_hosts), "-c", "tiny", "--no-check", "--entrypoint", SLEEPER)
    job_id = record(state)["job_id"]
    testhosts.stop("th1")
    try:
        down = orch(state, "down", job_id, "--yes", check=False, timeout=180)
        assert down.returncode == 1
        assert "th1" in down.stderr and "th0" not in down.stderr.replace("th0 ", "")
        assert_nothing_left(testhosts, job_id, ("th0",))
    finally:
        testhosts.start("th1")
    # th1 is back: down again finishes the job (and is idempotent on th0).
    orch(state, "down", job_id, "--yes")
    assert_nothing_left(testhosts, job_id)
    assert record(state, job_id)["status"] == "CANCELLED"


def test_sigint_during_staging_leaves_nothing_running(testhosts: TestHosts, two_hosts: Path,
                                                      state: Path, tmp_path: Path) -> None:
    big = big_data_folder(tmp_path / "bigdata", mib=64)  # staging takes a moment
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "up", "-i", str(two_hosts),
                             "-c", "tiny", "--no-check", "--entrypoint", SLEEPER, "--set",
                             f"data.path={big}", "--state-dir", str(state)], cwd=state.parent,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)
    try:
        wait_for(lambda: (state / "jobs").is_dir() and any((state / "jobs").glob("*.json"))
                 and record(state)["status"] == "LAUNCHING", interval=0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    job = record(state)
    assert proc.returncode == 130, out + err
    assert job["status"] == "CANCELLED"
    assert_nothing_left(testhosts, job["job_id"])


def test_ranktable_mode_discovers_device_ips_and_numbers_ranks_globally(
        testhosts: TestHosts, two_hosts: Path, state: Path) -> None:
    show = ('echo "rank=$RANK_ID device=$DEVICE_ID size=$RANK_SIZE servers=$(python3 -c '
            '"import json,os; print(*[s[\\"server_id\\"] for s in json.load(open('
            'os.environ[\\"RANK_TABLE_FILE\\"]))[\\"server_list\\"]], sep=\\",\\")")"')
    orch(state, "up", "-i", str(two_hosts), "-c", "tiny", "--mode", "ranktable", "--wait",
         "--entrypoint", show)
    job = record(state)
    assert job["status"] == "SUCCEEDED" and job["mode"] == "ranktable"
    hosts = ",".join(n["host"] for n in job["nodes"])  # rank order = dictionary order of host
    lines = set(orch(state, "logs", job["job_id"]).stdout.splitlines())
    for node in job["nodes"]:
        for i, rank in enumerate(range(node["rank_start"], node["rank_end"])):
            assert f"[{node['name']}/{rank}] rank={rank} device={i} size=4 servers={hosts}" \
                in lines, lines
    assert_nothing_left(testhosts, job["job_id"])


def test_up_without_data_is_refused_before_touching_nodes(two_hosts: Path, state: Path) -> None:
    res = orch(state, "up", "-i", str(two_hosts), "-c", "tiny", "--set", "data.path=",
               check=False)
    assert res.returncode == 1 and "data.path is empty" in res.stderr
    assert not (state / "jobs").exists()


def test_ctrl_c_while_waiting_detaches_and_job_keeps_running(testhosts: TestHosts,
                                                             two_hosts: Path,
                                                             state: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "up", "-i", str(two_hosts),
                             "-c", "tiny", "--no-check", "--wait", "--entrypoint", SLEEPER,
                             "--state-dir", str(state)], cwd=state.parent, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)
    tail = StderrTail(proc)
    try:
        wait_for(lambda: f"watching job {record(state)['job_id']}" in tail.text()
                 if latest_status(state) == "RUNNING" else False, interval=0.1)
        proc.send_signal(signal.SIGINT)
        out, err = tail.finish(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    job_id = record(state)["job_id"]
    assert proc.returncode == 130, out + err
    assert f"orchestrate status --watch {job_id}" in err and f"orchestrate down {job_id}" in err
    # Nobody waits any more: a background guard took over (it stops the job if a rank fails).
    assert "guard: pid" in out and _guard_alive(state, job_id), out
    status = json.loads(orch(state, "status", "--json").stdout)
    assert status["status"] == "RUNNING"
    assert all(r["state"] == "running" for n in status["nodes"] for r in n["ranks"])
    orch(state, "down", "--yes")
    assert not _guard_alive(state, job_id)
    assert_nothing_left(testhosts, job_id)


def _guard_alive(state: Path, job_id: str) -> bool:
    from orchestrator.job.guard import guard_pid
    from orchestrator.job.state import JobStore

    return guard_pid(JobStore(state), job_id) is not None


def test_resume_starts_a_new_attempt_of_a_failed_job(testhosts: TestHosts, two_hosts: Path,
                                                     state: Path) -> None:
    # attempt 1: rank 3 fails; attempt 2 (ORCHESTRATE_RESUME=1, what --resume means for the
    # bundled trainer): every rank succeeds
    cmd = ('echo "step=1 loss=2 resume=${ORCHESTRATE_RESUME:-0}"; '
           '[ -n "${ORCHESTRATE_RESUME:-}" ] || [ "${MS_NODE_ID:-}" != 3 ] || exit 4; true')
    first = orch(state, "up", "-i", str(two_hosts), "-c", "tiny", "--no-check", "--wait",
                 "--entrypoint", cmd, check=False)
    job_id = record(state)["job_id"]
    assert first.returncode == 1 and record(state, job_id)["status"] == "FAILED"
    orch(state, "resume", job_id, "--wait")
    status = json.loads(orch(state, "status", job_id, "--json").stdout)
    assert status["status"] == "SUCCEEDED" and status["attempts"] == 2
    log = orch(state, "logs", job_id, "--rank", "3").stdout.splitlines()
    assert log == ["[th1/3] == orchestrate attempt 1 ==", "[th1/3] step=1 loss=2 resume=0",
                   "[th1/3] == orchestrate attempt 2 ==", "[th1/3] step=1 loss=2 resume=1"]
    again = orch(state, "resume", job_id, check=False)
    assert again.returncode == 1 and "already SUCCEEDED" in again.stderr
    assert_nothing_left(testhosts, job_id)
