"""Graceful stop with a checkpoint: `orchestrate down --save JOB` (issue 16, item 4).

    record, failed = save_and_stop(record, group, store, timeout=300.0)   # down --save
    results = request_stop(record, group)        # only the request (the Slurm backend too)

The request is a file in each node's job folder (orchestrate_bloom/train/graceful.py owns its name
and body, MindSpore's OnRequestExit {"GracefulExit": 1}), written by `launch.sh request-stop`.
Every rank polls it after each step and all-reduces the flag, so all ranks save the same step
and exit 0 together. We wait up to `timeout` s for every rank to exit, then stop what is left
as `down` does (teardown.stop_job), and record CANCELLED with the step saved on every rank
(`saved_step`), from which `orchestrate resume JOB` continues.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from orchestrator.errors import JobError, OrchestrateError
from orchestrator.job.nodes import NodeReport, launch_command, query_job
from orchestrator.job.state import JobRecord, JobStatus, JobStore
from orchestrator.job.teardown import running_slots, stop_job
from orchestrator.remote.group import GroupResult, NodeGroup
from orchestrator.remote.transport import Transport

SAVE_TIMEOUT = 300.0  # default seconds `down --save` waits for the ranks to save and exit
POLL_INTERVAL = 1.0
_LIVE = (JobStatus.LAUNCHING, JobStatus.RUNNING, JobStatus.STALLED)


def stop_request_command(job_dir: str) -> str:
    """The shell command that asks the ranks of the job folder `job_dir` to save and stop."""
    return launch_command(job_dir, "request-stop")


def request_stop(record: JobRecord, group: NodeGroup, timeout: float = 60.0
                 ) -> GroupResult[str]:
    """Write the stop request on every node of the job.

    Returns:
        node name -> "requested" / "not running" / "nothing started", or the exception.
    """
    by_name = {n.name: n for n in record.nodes}

    def one(t: Transport) -> str:
        res = t.run(stop_request_command(by_name[t.node.name].job_dir), check=True,
                    timeout=timeout)
        out = res.stdout.strip()
        return "nothing started" if out == "nojob" else out

    return group.map(one, list(by_name))


def wait_ranks_exit(record: JobRecord, group: NodeGroup, timeout: float,
                    interval: float = POLL_INTERVAL,
                    clock: Callable[[], float] = time.monotonic) -> list[str]:
    """Poll the nodes until no rank runs or `timeout` s passed; the `node/slot`s still alive
    (an unreachable node counts as alive: its ranks may still run)."""
    deadline = clock() + timeout
    while True:
        reports = query_job(record, group)
        alive = [s for s in running_slots(reports) if not s.endswith("/sched")]
        alive += [f"{name}/?" for name, r in reports.items() if not isinstance(r, NodeReport)]
        if not alive or clock() >= deadline:
            return alive
        time.sleep(interval)


def saved_step(record: JobRecord, group: NodeGroup) -> int | None:
    """The newest step complete on every rank of the job (None: none, or a node unreadable)."""
    from orchestrate_bloom.ckpt import layout as ck

    from orchestrator.ckpt.collect import list_nodes

    try:
        listings = list_nodes(group, record.nodes)
    except OrchestrateError:
        return None
    return ck.newest_common(s for lst in listings for s in lst.ckpts.values())


def save_and_stop(record: JobRecord, group: NodeGroup, store: JobStore,
                  timeout: float = SAVE_TIMEOUT) -> tuple[JobRecord, dict[str, BaseException]]:
    """`down --save`: request the stop, wait for the ranks, stop what is left, record it.

    A job that is not running is stopped as `down` stops it. Returns the updated record and
    the nodes that could not be cleaned (name -> cause).
    """
    from orchestrator.backends import backend_for

    if record.status not in _LIVE:
        return stop_job(record, group, store)
    if not backend_for(record).node_files:
        raise JobError(f"down --save: job {record.job_id} runs on {record.backend}, where the "
                       "stop request cannot reach the ranks' job folders; `down` without "
                       "--save stops it (resume continues from its last checkpoint)")
    asked = request_stop(record, group)
    late = wait_ranks_exit(record, group, timeout) if asked.succeeded else ["every node"]
    record, failed = stop_job(record, group, store)
    if record.status is not JobStatus.CANCELLED:
        return record, failed
    step = saved_step(record, group)
    where = f"step {step} saved on every rank" if step is not None else "no step saved"
    if late:
        message = (f"down --save: ranks still running after {timeout:g} s "
                   f"({', '.join(late[:4])}) were stopped; {where}")
    else:
        message = f"stopped by down --save: {where}"
    if failed:
        message = f"{record.message}; {message}"
    record = record.with_status(JobStatus.CANCELLED, message).replace(saved_step=step)
    store.save(record)
    return record, failed
