"""THE graceful-stop request: a file in the job folder the trainer polls at every step.

    python -m orchestrate_bloom.train.graceful request JOB_DIR    # ask the job's ranks to stop
    python -m orchestrate_bloom.train.graceful show JOB_DIR       # prints 1 if requested, else 0

MindSpore's OnRequestExit semantics (MS_ENABLE_GRACEFUL_EXIT): a JSON file holding
{"GracefulExit": 1} asks every rank to save a checkpoint at the next step boundary and exit 0
together. The trainer (trainer.py) reads it after every step; on several ranks the flag is
summed with an all-reduce, so every rank stops at the same step even when only some of them
saw the file yet. `orchestrate down --save` writes the file through `launch.sh request-stop`
(orchestrator/job/graceful.py), which takes the name and the body from here; `launch.sh start
resume` removes it so the next attempt trains on.
"""

from __future__ import annotations

import argparse
import json
import sys
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


def agreed(path: Path, reduce: Callable[[Sequence[float]], Any] | None) -> bool:
    """Whether any rank saw the stop request at `path` by now.

    Every rank calls this after every step with the job's SUM all-reduce (`reduce`, None on
    one process); the sum makes them agree, so all of them save the same step and exit
    together even when only some saw the file yet.
    """
    local = 1.0 if requested(path) else 0.0
    if reduce is None:
        return local > 0
    return bool(reduce([local, 0.0])[0] > 0.5)


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
