"""Loop the two-worker resume of tests/model/test_train.py to catch its rare SIGSEGV.

    python -m tests.tools.repro_two_worker --rounds 10            # from the checkout
    python -m tests.tools.repro_two_worker --rounds 5 --full      # also the 12-step first run

What it repeats: a scheduler + 2 data-parallel CPU workers (MindSpore dynamic cluster on
127.0.0.1) resume a 12-step run from step 6 (rank 1's step-12 manifest removed, as the test
does) and train to step 14. Each round prints the exit codes of scheduler, worker 0, worker 1,
how long each worker's explicit unregistration took, and what exit_problems (test_train) finds:
an exit code not 0, a worker without worker_exit's "unregistered" line, a scheduler without one
"has unregistered" per worker or with "is timed out". A failed round keeps its three stderr
files (PYTHONFAULTHANDLER=1 puts every thread's Python stack there) under --keep and prints
their paths. Exit 1 if any round failed. A round whose cluster is not done within
test_train.CLUSTER_TIMEOUT_S (300 s) fails with exit codes -6 (SIGABRT: the Python stacks of
the hung process are in its kept stderr) or -9, and the loop goes on.
ORCHESTRATE_WORKER_EXIT=teardown in the environment runs the old exit (every round then fails
exit_problems for the missing "unregistered" line; count the exit codes).

History: once in CI, then ~1 in 37 rounds here, a worker died with SIGSEGV (-11) after
`resumed from step 6` while the scheduler and the other worker exited 0; faulthandler showed
one native thread with `<no Python frame>`. A core dump (8 ranks) put it in MindSpore's
exit-time cluster teardown (rpc::TCPClient::Finalize, after the unregistration). Fixed by
orchestrate_bloom.train.worker_exit: a finished worker unregisters alone and os._exits.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml
from orchestrate_bloom.ckpt import layout as ck
from orchestrate_bloom.data.prepare import prepare
from orchestrate_bloom.train.worker_exit import UNREGISTERED_NOTE

from tests.model.data_helpers import seed_records, tokenizer_file
from tests.model.test_train import exit_problems, run_cluster, write_job

UNREG_S = re.compile(re.escape(UNREGISTERED_NOTE) + r" in (\d+\.\d) s")


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
    problems = exit_problems(results)
    problems += [f"worker {n} did not resume from step 6" for n, r in enumerate(results[1:])
                 if "resumed from step 6 " not in r[2]]
    ok = not problems
    unreg = [m.group(1) for r in results[1:] for m in [UNREG_S.search(r[2])] if m]
    print(f"round {i}: exit codes {codes} ({time.monotonic() - t0:.0f} s; unregistered in "
          f"{', '.join(unreg) or '-'} s)" + "".join(f"; {p}" for p in problems), flush=True)
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
