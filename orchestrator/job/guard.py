"""The guard of a job nobody waits on: when a rank fails, stop the job on every node.

    pid = spawn_guard(store, job_id)     # `up` / `resume` without --wait, `up --wait` + Ctrl-C
    stop_guard(store, job_id)            # `down` (before it stops the ranks)
    python -m orchestrator.job.guard --state-dir .orchestrate JOB_ID    # what spawn runs

Each node's supervisor (launch.sh) stops the node's other ranks when one exits non-zero, but
it cannot reach the other nodes; torchrun's agents and SkyPilot's job driver end the whole
job. So `up` leaves this small process on the orchestrator's machine (own session, detached
from the terminal; pid in `<state>/jobs/<id>/guard.pid`, log in `guard.log` next to it). It
polls `launch.sh status` every few seconds; on a failure it records FAILED with the cause and
runs `launch.sh stop` on every node that answers. It exits once the job ended and every node
confirmed that nothing of it is left, when the record is gone or CANCELLED (down), or after
the nodes stayed unreachable for an hour. If the machine sleeps or the guard dies, the next
`status` (or `status --watch`) does the same stop, and `down --all` finds the job.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from orchestrate_bloom.fileio import write_atomic

from orchestrator.errors import OrchestrateError
from orchestrator.job.state import JobStatus, JobStore

GUARD_INTERVAL = 5.0  # seconds between polls
GIVE_UP_AFTER = 3600.0  # seconds every node stayed unreachable: the guard leaves
_MODULE = "orchestrator.job.guard"


def pid_file(store: JobStore, job_id: str) -> Path:
    return store.job_dir(job_id) / "guard.pid"


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks): with the pid, one process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(") ", 1)[-1].split()[19]


def guard_pid(store: JobStore, job_id: str) -> int | None:
    """The pid of the job's running guard (checked: same start time, our module), or None."""
    try:
        pid_text, start = pid_file(store, job_id).read_text().split()
        pid = int(pid_text)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    if _start_time(pid) != start or _MODULE.encode() not in cmdline \
            or job_id.encode() not in cmdline:
        return None
    return pid


def spawn_guard(store: JobStore, job_id: str, interval: float = GUARD_INTERVAL) -> int:
    """Start the job's guard in the background (replacing an older one); its pid."""
    stop_guard(store, job_id)
    folder = store.job_dir(job_id)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "guard.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", _MODULE, "--state-dir", str(store.state_dir.resolve()),
             "--interval", f"{interval:g}", job_id],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=folder,
            start_new_session=True, close_fds=True)
    start = _start_time(proc.pid) or "gone"
    write_atomic(pid_file(store, job_id), f"{proc.pid} {start}\n", fsync=False)
    return proc.pid


def stop_guard(store: JobStore, job_id: str, wait: float = 5.0) -> bool:
    """Stop the job's guard if it runs (never this process); whether one was stopped."""
    pid = guard_pid(store, job_id)
    if pid is None or pid == os.getpid():
        return False
    os.kill(pid, signal.SIGTERM)
    end = time.time() + wait
    while time.time() < end and guard_pid(store, job_id) == pid:
        time.sleep(0.05)
    if guard_pid(store, job_id) == pid:
        os.kill(pid, signal.SIGKILL)
    pid_file(store, job_id).unlink(missing_ok=True)
    return True


def _log(text: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}", flush=True)


def run_guard(store: JobStore, job_id: str, interval: float = GUARD_INTERVAL,
              give_up_after: float = GIVE_UP_AFTER) -> int:
    """Poll the job until it ended and nothing of it is left; stop it everywhere on a failure.

    Returns:
        0 when the job ended clean (or was taken over by `down`), 1 when the guard gave up.
    """
    from orchestrator.backends import job_group
    from orchestrator.config.inventory import load_inventory
    from orchestrator.job.progress import refresh
    from orchestrator.job.teardown import running_slots, stop_failed_job

    record = store.load(job_id)
    inv = load_inventory(Path(record.inventory_path))
    _log(f"guarding job {job_id} on {', '.join(n.name for n in record.nodes)}")
    lost_since: float | None = None
    with job_group(record, inv) as group:
        while True:
            if not store.path(job_id).exists():
                _log("job record gone; leaving")
                return 0
            record = store.load(job_id)
            if record.status is JobStatus.CANCELLED or (record.status.is_terminal()
                                                        and record.cleaned):
                _log(f"job {record.status.value}, nothing left; leaving")
                return 0
            record, reports = refresh(record, group, store)
            if record.status is JobStatus.FAILED and not record.cleaned:
                alive = running_slots(reports)
                record = stop_failed_job(record, group, store, reports)
                _log(f"job FAILED ({record.message}); stopped {', '.join(alive) or 'nothing'}"
                     + ("" if record.cleaned else "; some nodes did not answer, retrying"))
            answered = any(not isinstance(r, BaseException) for r in reports.values())
            lost_since = None if answered else (lost_since or time.time())
            if lost_since is not None and time.time() - lost_since > give_up_after:
                _log(f"no node answered for {give_up_after:g} s; leaving (run `orchestrate "
                     f"down {job_id}` when they are back)")
                return 1
            time.sleep(interval)


def _on_term(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)  # unwinds: no half-written record, connections closed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {_MODULE}", description=__doc__)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--interval", type=float, default=GUARD_INTERVAL)
    parser.add_argument("job_id")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # detached from the terminal's Ctrl-C
    store = JobStore(args.state_dir)
    try:
        return run_guard(store, args.job_id, args.interval)
    except OrchestrateError as e:
        _log(f"error: {e}")
        return 1
    finally:
        if guard_pid(store, args.job_id) == os.getpid():
            pid_file(store, args.job_id).unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
