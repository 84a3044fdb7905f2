"""Start and end of a 2-worker MindSpore cluster: our heartbeat interval vs MindSpore's default.

    python bench/cluster_start.py [--repeats 3] [--steps 5]

Runs the real path, `orchestrate up --wait` on a `connection: local` inventory (this machine as
one node with 2 CPU devices: the scheduler + 2 workers, tiny preset), alternating two cases:
"ours" (the launch script's MS_RETRY_INTERVAL_LOWER/UPPER, orchestrator/job/render.py
CLUSTER_RETRY_INTERVAL_S) and "MindSpore 3..5" (the inventory's `env:` sets MindSpore's own
defaults, 3 and 5, which the launch script keeps). Per run it prints the seconds from starting
`up` to rank 0's first step line (cluster formation is inside) and to `up --wait` returning
(the ranks' exit is inside); then the medians and ours/theirs ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from local_job import REPO, up_args

CASES: dict[str, dict[str, str]] = {
    "ours": {}, "MindSpore 3..5": {"MS_RETRY_INTERVAL_LOWER": "3", "MS_RETRY_INTERVAL_UPPER": "5"}}


def run(case: str, steps: int, root: Path) -> tuple[float, float]:
    """(s to rank 0's first step line, s to `up --wait` returning) of one job."""
    folder = Path(tempfile.mkdtemp(prefix="case-", dir=root))
    args = up_args(folder, devices=2, steps=steps, log_steps=1, env=CASES[case])
    t0 = time.monotonic()
    proc = subprocess.Popen(args, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    first = None
    while proc.poll() is None and first is None:
        logs = list((folder / "work" / "jobs").glob("*/ranks/0/stdout.log"))
        if logs and "step=1 " in logs[0].read_text(errors="replace"):
            first = time.monotonic() - t0
        time.sleep(0.02)
    out, _ = proc.communicate(timeout=900)
    end = time.monotonic() - t0
    if proc.returncode != 0 or first is None:
        raise RuntimeError(f"{case}: exit {proc.returncode}, first step line {first}\n"
                           f"{out[-3000:]}")
    return first, end


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float]]] = {case: [] for case in CASES}
    with tempfile.TemporaryDirectory(prefix="cluster-start-") as tmp:
        for i in range(args.repeats):
            for case in (CASES if i % 2 == 0 else reversed(CASES)):  # ABBA: same load for both
                first, end = run(case, args.steps, Path(tmp))
                results[case].append((first, end))
                print(f"{case:>15}: first step line {first:6.2f} s, up --wait {end:6.2f} s",
                      flush=True)
    med = {case: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs))
           for case, rs in results.items()}
    ours, theirs = med["ours"], med["MindSpore 3..5"]
    print(f"median first step line: ours {ours[0]:.2f} s, MindSpore 3..5 {theirs[0]:.2f} s, "
          f"ratio {ours[0] / theirs[0]:.2f}")
    print(f"median up --wait:       ours {ours[1]:.2f} s, MindSpore 3..5 {theirs[1]:.2f} s, "
          f"ratio {ours[1] / theirs[1]:.2f}")


if __name__ == "__main__":
    main()
