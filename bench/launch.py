"""Launch latency: `orchestrate up` vs one cold fan-out round and the seed README's sequential
ssh loop, on N test hosts.

    sudo python bench/launch.py --hosts 8 32 [--devices 2]

For each N: bring up N sshd test hosts (tests/testhosts.sh, own state dir), pre-stage the
code and the prepared dataset once (a first `up` + `down`, so the timed run finds every code
blob by sha256 and the prepared data in the content-addressed cache, and the CLI's bytecode
is cached as a pip install has it: PYTHONPYCACHEPREFIX in the state dir), then time

  round  one cold fan-out round, the floor any `up` pays: open a NodeGroup over all N hosts
         (connect), run `true` everywhere, close (paramiko already imported); the median of
         ROUNDS such rounds (one alone swung 0.53-0.77 s on 32 hosts between runs; all are
         printed);
  up     `python -m orchestrator up -v --no-check` with a trivial rank command (sleep), from
         the call to its return, which is when every rank's pid file exists on every host;
         also its peak RSS (wait4) and its per-phase breakdown (`up -v`);
  loop   what the seed README does by hand, one host after the other: `scp -r` the job folder
         (launch.sh, job.yaml, code/) then `ssh host bash launch.sh start`, with OpenSSH.

One `up` and one loop each; prints seconds, up in fan-out rounds and the loop/up ratio. Both
jobs are stopped and the hosts torn down at the end, also on errors. Goals (issue #17): up on
32 hosts <= 3 rounds and >= 10x the loop; peak RSS of the CLI process for up <= 150 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
TESTHOSTS = REPO / "tests" / "testhosts.sh"
SLEEPER = "sleep 600"
ROUNDS = 3  # cold rounds measured; their median is the unit `up` is counted in


def sh(args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=True, **kw)  # type: ignore


def orch_env(state: Path) -> dict[str, str]:
    """The CLI's environment: this checkout first on the path, and bytecode cached (in the
    bench's own folder) as a pip-installed CLI has it, even where PYTHONDONTWRITEBYTECODE is
    set: the pre-stage run compiles, the timed run does not (~0.1 s CPU of startup)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONPYCACHEPREFIX=str(state / "pycache"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def orch(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = orch_env(state)
    return sh([sys.executable, "-m", "orchestrator", *args, "--state-dir", str(state / "jobs")],
              env=env, cwd=str(state))


def orch_timed(state: Path, *args: str) -> tuple[float, float, str]:
    """Run orchestrate like `orch`; (wall seconds, peak RSS MiB, stdout)."""
    env = orch_env(state)
    argv = [sys.executable, "-m", "orchestrator", *args, "--state-dir", str(state / "jobs")]
    with tempfile.TemporaryFile("w+") as out_f, tempfile.TemporaryFile("w+") as err_f:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, cwd=str(state), stdout=out_f, stderr=err_f,
                                text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # reaps it: its own peak RSS, not ours
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out_f.seek(0)
        err_f.seek(0)
        out, err = out_f.read(), err_f.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} failed ({proc.returncode}): {err.strip()}")
    return wall, usage.ru_maxrss / 1024, out


def fanout_round(inv_path: Path) -> float:
    """Seconds for one cold round: connect to every host, run `true`, close."""
    from orchestrator.config.inventory import load_inventory
    from orchestrator.remote.group import NodeGroup

    inv = load_inventory(inv_path)
    t0 = time.perf_counter()
    with NodeGroup(inv, inv.in_rank_order()) as group:
        group.run("true").raise_on_failure()
    return time.perf_counter() - t0


def latest(state: Path) -> dict:
    recs = [json.loads(p.read_text()) for p in (state / "jobs" / "jobs").glob("*.json")]
    return max(recs, key=lambda r: r["created_at"])


PHASES = {"phase", "startup", "plan", "check", "ranktable", "data", "render", "connect",
          "stage", "start", "launch", "guard", "other", "total"}


@dataclass(frozen=True)
class Result:
    up_s: float
    loop_s: float
    round_s: float
    rounds: list[float]
    rss_mb: float
    phases: list[str]


def bench(n: int, devices: int) -> Result:
    state = Path(tempfile.mkdtemp(prefix=f"orchestrate-bench-launch-{n}-"))
    try:
        sh(["bash", str(TESTHOSTS), "up", str(n), "--state", str(state), "--python",
            sys.executable, "--devices", str(devices)], timeout=600)
        inv = state / "inventory.yaml"
        base = ["up", "-i", str(inv), "-c", "tiny", "--no-check", "--entrypoint", SLEEPER,
                "--stop-grace", "1"]
        orch(state, *base)  # pre-stage: every node now holds the code blobs
        orch(state, "down", "--yes")

        import orchestrator.remote.ssh  # noqa: F401 - imports are not part of the round

        rounds = [fanout_round(inv) for _ in range(ROUNDS)]
        up_s, rss_mb, out = orch_timed(state, *base[:1], "-v", *base[1:])
        phases = [ln for ln in out.splitlines() if ln.split()[:1] and ln.split()[0] in PHASES]
        job = latest(state)
        started = sum(len(n_["pids"]) for n_ in job["nodes"])
        assert job["status"] == "RUNNING" and started >= n * devices, job
        orch(state, "down", "--yes")

        # The seed's way: render the same job, then copy + start host after host.
        orch(state, *base, "--dry-run")
        rendered = latest(state)
        local = state / "jobs" / "jobs" / rendered["job_id"] / "nodes"
        cfg = str(state / "ssh_config")
        workdir = yaml.safe_load(inv.read_text())["defaults"]["workdir"]
        t0 = time.perf_counter()
        for node in rendered["nodes"]:
            name = node["name"]
            job_dir = f"{workdir}/jobs/{rendered['job_id']}"
            sh(["ssh", "-F", cfg, name, f"mkdir -p {shlex.quote(job_dir)}/code"])
            sh(["scp", "-q", "-F", cfg, "-r", *map(str, (local / name).iterdir()),
                f"{name}:{job_dir}/"])
            sh(["scp", "-q", "-F", cfg, "-r", str(REPO / "model"),
                f"{name}:{job_dir}/code/orchestrate_bloom"])
            sh(["ssh", "-F", cfg, name, f"bash {shlex.quote(job_dir)}/launch.sh start"])
        loop_s = time.perf_counter() - t0
        for node in rendered["nodes"]:
            sh(["ssh", "-F", cfg, node["name"],
                f"bash {workdir}/jobs/{rendered['job_id']}/launch.sh stop"])
        return Result(up_s, loop_s, statistics.median(rounds), rounds, rss_mb, phases)
    finally:
        subprocess.run(["bash", str(TESTHOSTS), "down", "--state", str(state)],
                       capture_output=True, timeout=300)
        subprocess.run(["rm", "-rf", str(state)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--devices", type=int, default=2, help="ranks per host")
    args = parser.parse_args()
    print(f"launch latency, {args.devices} ranks/host, trivial rank command, code and data "
          f"pre-staged; load average {os.getloadavg()[0]:.2f}")
    print(f"{'hosts':>5} {'round (s)':>9} {'up (s)':>7} {'up/round':>8} {'ssh loop (s)':>12} "
          f"{'loop/up':>8} {'up RSS (MB)':>11}")
    for n in args.hosts:
        r = bench(n, args.devices)
        print(f"{n:>5} {r.round_s:>9.2f} {r.up_s:>7.2f} {r.up_s / r.round_s:>7.1f}x "
              f"{r.loop_s:>12.2f} {r.loop_s / r.up_s:>7.1f}x {r.rss_mb:>11.0f}", flush=True)
        print(f"      cold rounds (s): {' '.join(f'{x:.2f}' for x in r.rounds)} (median above)")
        for line in r.phases:
            print(f"      {line}")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")

if __name__ == "__main__":
    main()
