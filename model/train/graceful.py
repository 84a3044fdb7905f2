"""THE graceful-stop request: a file in the job folder the trainer polls between steps.

    python -m orchestrate_bloom.train.graceful request JOB_DIR    # ask the job's ranks to stop
    python -m orchestrate_bloom.train.graceful show JOB_DIR       # prints 1 if requested, else 0

MindSpore's OnRequestExit semantics (MS_ENABLE_GRACEFUL_EXIT): a JSON file holding
{"GracefulExit": 1} asks every rank to save a checkpoint at the next step boundary and exit 0
together. The trainer (trainer.py) polls it through StopPoll; on several ranks the flag is
summed with an all-reduce, so every rank stops at the same step even when only some of them
saw the file yet. That all-reduce is a barrier of every rank, so on several ranks it is not
run after every step: rank 0 picks the next check step so that checks are about CHECK_EVERY_S
seconds of training apart (at least every step, at most every MAX_STEPS_APART steps) and the
same all-reduce tells every rank that step. The first check is after the first step. Measured
(tiny preset, 8 ranks on 2 cores): a check after every step made a step 389 ms instead of
280 ms. `orchestrate down --save` writes the file through `launch.sh request-stop`
(orchestrator/job/graceful.py), which takes the name and the body from here; `launch.sh start
resume` removes it so the next attempt trains on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..fileio import write_atomic

STOP_FILE = "stop_request.json"  # in the job folder (the folder of job.yaml)
STOP_BODY = '{"GracefulExit": 1}'  # OnRequestExit's content


def request_path(job_dir: Path) -> Path:
    """Where the stop request of the job in `job_dir` lives."""
    return job_dir / STOP_FILE


def request(job_dir: Path) -> Path:
    """Write the stop request (atomically); returns its path."""
    path = request_path(job_dir)
    write_atomic(path, STOP_BODY + "\n")
    return path


def requested(path: Path) -> bool:
    """Whether `path` holds a stop request ({"GracefulExit": 1}); anything else is no request."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("GracefulExit") == 1


CHECK_EVERY_S = 1.0  # seconds of training between two agreed checks on several ranks
MAX_STEPS_APART = 50  # and never more steps than this between them


def steps_apart(seconds: float, steps: int) -> int:
    """Steps until the next check so that checks are ~CHECK_EVERY_S apart, from the last
    interval (`steps` steps in `seconds`): 1 <= result <= MAX_STEPS_APART."""
    if steps < 1 or seconds <= 0:
        return 1
    return max(1, min(MAX_STEPS_APART, int(CHECK_EVERY_S * steps / seconds)))


class StopPoll:
    """Whether the ranks agree that a stop was requested, asked after every step.

    `poll(step)` is called by every rank after every step with the job's SUM all-reduce
    (`reduce`, None on one process: then the file is read after every step). On several
    ranks only the check steps run the all-reduce, of [seen here, steps to the next check
    (rank 0's pick, 0 elsewhere)], so every rank learns the same next check step and all of
    them save the same step and exit together even when only some saw the file yet.
    """

    def __init__(self, path: Path, reduce: Callable[[Sequence[float]], Any] | None,
                 is_rank0: bool, start: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.path, self.reduce, self.is_rank0, self.clock = path, reduce, is_rank0, clock
        self.next_check = start + 1  # the first step is always checked
        self.last = (start, clock())  # (step, time) of the last check

    def __call__(self, step: int) -> bool:
        if self.reduce is None:
            return requested(self.path)
        if step < self.next_check:
            return False
        local = 1.0 if requested(self.path) else 0.0
        now = self.clock()
        pick = steps_apart(now - self.last[1], step - self.last[0]) if self.is_rank0 else 0
        total = self.reduce([local, float(pick)])
        self.last, self.next_check = (step, now), step + max(1, int(round(float(total[1]))))
        return bool(total[0] > 0.5)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m orchestrate_bloom.train.graceful request|show JOB_DIR` (see module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m orchestrate_bloom.train.graceful")
    parser.add_argument("cmd", choices=("request", "show"))
    parser.add_argument("job_dir", type=Path)
    args = parser.parse_args(argv)
    if args.cmd == "request":
        try:
            print(request(args.job_dir))
        except OSError as e:
            print(f"error: {args.job_dir}: cannot write the stop request: {e}", file=sys.stderr)
            return 1
        return 0
    print(1 if requested(request_path(args.job_dir)) else 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
