"""Loop the two-worker resume of tests/model/test_train.py to catch its rare SIGSEGV.

    python -m tests.tools.repro_two_worker --rounds 10            # from the checkout
    python -m tests.tools.repro_two_worker --rounds 5 --full      # also the 12-step first run

What it repeats: a scheduler + 2 data-parallel CPU workers (MindSpore dynamic cluster on
127.0.0.1) resume a 12-step run from step 6 (rank 1's step-12 manifest removed, as the test
does) and train to step 14. Once in CI rank 1 died there with SIGSEGV. Each round prints the
exit codes of scheduler, worker 0, worker 1; a round where any is not 0 keeps its three
stderr files (PYTHONFAULTHANDLER=1 puts every thread's Python stack there) under
--keep and prints their paths. Exit 1 if any round failed. A round whose cluster is not done
within test_train.CLUSTER_TIMEOUT_S (300 s) fails with exit codes -6 (SIGABRT: the Python
stacks of the hung process are in its kept stderr) or -9, and the loop goes on.

Seen (2026-12-07, 2 loaded cores): the lead's run 21 of 21 rounds clean; a second run, round 12
of 16 (and 1 of 3 earlier rounds done under `nice -n 19` timed out at 300 s, before
run_cluster kept output on a timeout): worker 1 exited -11 after `resumed from step 6` while the
scheduler and worker 0 exited 0 (which points to every all-reduce having completed). faulthandler
showed one thread, not marked current, with `<no Python frame>`: the crash was in a native
(MindSpore) thread while the main thread ran no Python, i.e. during interpreter exit, as in
mindspore-ai/hyper-parallel#397 (msrun worker -11 at teardown/GC). Not fixed here.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml
from orchestrate_bloom.ckpt import layout as ck
from orchestrate_bloom.data.prepare import prepare

from tests.model.data_helpers import seed_records, tokenizer_file
from tests.model.test_train import run_cluster, write_job


def first_run(root: Path) -> Path:
    """Data + the 12-step two-worker run the resume starts from; its job file."""
    src = root / "seed.json"
    src.write_text(json.dumps(seed_records()))
    data = root / "mr"
    prepare(src, data, seq_length=96, tokenizer_path=tokenizer_file(root), shards=2)
    job = write_job(root / "dp", data, steps=12, save_steps=6, log_steps=4)
    spec = yaml.safe_load(job.read_text())
    spec["parallel"].update(data_parallel=2, micro_batch_size=4)  # as the test: 2 ranks x 4
    job.write_text(yaml.safe_dump(spec))
    codes = [r[0] for r in run_cluster(job)]
    if codes != [0, 0, 0]:
        sys.exit(f"the first run failed: exit codes {codes}")
    return job


def one_round(job: Path, base: Path, keep: Path, i: int) -> bool:
    """Resume a fresh copy of the first run's output; True when every process exited 0."""
    out = job.parent / "output"
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(base, out)
    ck.manifest_path(out, 1, 12).unlink()
    t0 = time.monotonic()
    results = run_cluster(job, "--resume", "--set", "train.steps=14")
    codes = [r[0] for r in results]
    ok = codes == [0, 0, 0] and all("resumed from step 6 " in r[2] for r in results[1:])
    print(f"round {i}: exit codes {codes} ({time.monotonic() - t0:.0f} s)", flush=True)
    if not ok:
        keep.mkdir(parents=True, exist_ok=True)
        for name, (_, _, err) in zip(("sched", "worker0", "worker1"), results, strict=True):
            path = keep / f"round{i}_{name}.stderr"
            path.write_text(err)
            print(f"  kept {path}", flush=True)
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.tools.repro_two_worker",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--full", action="store_true", help="redo the first run every round")
    parser.add_argument("--keep", type=Path, default=Path("repro-two-worker"),
                        help="folder for the stderr of failed rounds")
    args = parser.parse_args()
    failed = 0
    with tempfile.TemporaryDirectory(prefix="repro2w-") as tmp:
        root = Path(tmp)
        job = first_run(root)
        base = root / "base-output"
        shutil.copytree(job.parent / "output", base)
        for i in range(1, args.rounds + 1):
            if args.full and i > 1:
                shutil.rmtree(job.parent / "output")
                codes = [r[0] for r in run_cluster(job)]
                print(f"round {i}: first run exit codes {codes}", flush=True)
                failed += codes != [0, 0, 0]
                shutil.rmtree(base)
                shutil.copytree(job.parent / "output", base)
            failed += not one_round(job, base, args.keep, i)
    print(f"{failed} of {args.rounds} round(s) failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
