"""Launch latency: `orchestrate up` vs the seed README's sequential ssh loop, on N test hosts.

    sudo python bench/launch.py --hosts 8 32 [--devices 2]

For each N: bring up N sshd test hosts (tests/testhosts.sh, own state dir), pre-stage the
code once (a first `up` + `down`, so the timed run finds every code blob by sha256), then time

  up     `python -m orchestrator up --no-check` with a trivial rank command (sleep), from the
         call to its return, which is when every rank's pid file exists on every host;
  loop   what the seed README does by hand, one host after the other: `scp -r` the job folder
         (launch.sh, job.yaml, code/) then `ssh host bash launch.sh start`, with OpenSSH.

One run each; prints seconds and the loop/up ratio. Both jobs are stopped and the hosts torn
down at the end, also on errors. Goal (issue #7): 32 hosts under 3 s and >= 5x the loop.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
TESTHOSTS = REPO / "tests" / "testhosts.sh"
SLEEPER = "sleep 600"


def sh(args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=True, **kw)  # type: ignore


def orch(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return sh([sys.executable, "-m", "orchestrator", *args, "--state-dir", str(state / "jobs")],
              env=env, cwd=str(state))


def latest(state: Path) -> dict:
    recs = [json.loads(p.read_text()) for p in (state / "jobs" / "jobs").glob("*.json")]
    return max(recs, key=lambda r: r["created_at"])


def bench(n: int, devices: int) -> tuple[float, float]:
    state = Path(tempfile.mkdtemp(prefix=f"orchestrate-bench-launch-{n}-"))
    try:
        sh(["bash", str(TESTHOSTS), "up", str(n), "--state", str(state), "--python",
            sys.executable, "--devices", str(devices)], timeout=600)
        inv = state / "inventory.yaml"
        base = ["up", "-i", str(inv), "-c", "tiny", "--no-check", "--entrypoint", SLEEPER,
                "--stop-grace", "1"]
        orch(state, *base)  # pre-stage: every node now holds the code blobs
        orch(state, "down", "--yes")

        t0 = time.perf_counter()
        orch(state, *base)
        up_s = time.perf_counter() - t0
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
        return up_s, loop_s
    finally:
        subprocess.run(["bash", str(TESTHOSTS), "down", "--state", str(state)],
                       capture_output=True, timeout=300)
        subprocess.run(["rm", "-rf", str(state)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--devices", type=int, default=2, help="ranks per host")
    args = parser.parse_args()
    print(f"launch latency, {args.devices} ranks/host, trivial rank command, code pre-staged")
    print(f"{'hosts':>5} {'up (s)':>8} {'ssh loop (s)':>13} {'loop/up':>8}")
    for n in args.hosts:
        up_s, loop_s = bench(n, args.devices)
        print(f"{n:>5} {up_s:>8.2f} {loop_s:>13.2f} {loop_s / up_s:>7.1f}x", flush=True)


if __name__ == "__main__":
    main()
