"""Stopping a job on its nodes: `down`, and the teardown of a job whose rank failed.

    record, failed = stop_job(record, group, store)          # `orchestrate down JOB`
    record = teardown_failed(record, group, store, "rank 3 on th1 exited 137")
    record = stop_failed_job(record, group, store, reports)  # status / guard: a FAILED job

A failed rank ends the whole job (torchrun's and SkyPilot's behaviour): whoever notices first
(the `up --wait` loop, the background guard of job/guard.py, `status`, `status --watch`)
stops the other ranks on every node. A job is `cleaned` once every node confirmed that nothing
of it is left; `down --all` stops every ended job that is not (jobs/state.py: needs_stop).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from orchestrator.errors import JobError
from orchestrator.job.nodes import NodeReport, launch_command
from orchestrator.job.state import JobRecord, JobStatus, JobStore
from orchestrator.remote.group import GroupResult, NodeGroup
from orchestrator.remote.transport import Transport

STOP_TIMEOUT = 180.0  # seconds for `launch.sh stop` on one node (grace + verification)


def failures(results: Mapping[str, object]) -> dict[str, BaseException]:
    """The nodes whose fan-out result is an exception."""
    return {k: v for k, v in results.items() if isinstance(v, BaseException)}


def stop_everywhere(record: JobRecord, group: NodeGroup, only: Collection[str] | None = None,
                    timeout: float = STOP_TIMEOUT) -> GroupResult[str]:
    """Stop the job through its backend (ssh: stop_over_ssh; slurm: that, then scancel).

    Returns:
        name -> what stop did, or the exception (unreachable, processes left).
    """
    from orchestrator.backends import backend_for

    return backend_for(record).stop(record, group, only, timeout)


def stop_over_ssh(record: JobRecord, group: NodeGroup, only: Collection[str] | None = None,
                  timeout: float = STOP_TIMEOUT) -> GroupResult[str]:
    """Run `launch.sh stop` on every node of the job (or the nodes named in `only`).

    Returns:
        node name -> what stop printed, or the exception (unreachable, processes left).
    """
    by_name = {n.name: n for n in record.nodes}

    def one(t: Transport) -> str:
        res = t.run(launch_command(by_name[t.node.name].job_dir, "stop"), check=False,
                    timeout=timeout)
        out = res.stdout.strip()
        if res.exit_code != 0:
            raise JobError(f"[{t.node.name}] stop did not finish: {out or res.stderr.strip()}")
        return "nothing started" if out == "nojob" else out

    nodes = [n.name for n in record.nodes if only is None or n.name in only]
    if only is None:  # nodes the job was relaunched without that never confirmed a stop
        known = {n.name for n in group.inventory.nodes}
        by_name.update({n.name: n for n in record.stray})
        nodes += [n.name for n in record.stray if n.name in known]
    return group.map(one, nodes)


def stop_job(record: JobRecord, group: NodeGroup, store: JobStore,
             ) -> tuple[JobRecord, dict[str, BaseException]]:
    """`down`: stop every rank on every reachable node; CANCELLED unless it had already ended.

    Returns:
        The updated record and the nodes that could not be cleaned (name -> cause).
    """
    failed = failures(stop_everywhere(record, group))
    if record.stray:
        record = record.replace(stray=tuple(n for n in record.stray if n.name in failed))
    status = record.status if record.status in (JobStatus.SUCCEEDED, JobStatus.FAILED) \
        else JobStatus.CANCELLED
    message = record.message
    if failed:
        message = f"down could not reach: {', '.join(sorted(failed))}"
        if record.status is JobStatus.FAILED:  # keep the real cause, add what is left
            message = f"{record.message}; {message}" if record.message else message
    elif status is JobStatus.CANCELLED:
        message = "stopped by down"
    record = record.with_status(status, message).replace(cleaned=not failed)
    store.save(record)
    return record, failed


def teardown_failed(record: JobRecord, group: NodeGroup, store: JobStore, reason: str,
                    only: Collection[str] | None = None,
                    timeout: float = STOP_TIMEOUT) -> JobRecord:
    """A rank failed: stop the job on every node (or those in `only`: the ones that answer),
    record FAILED with the reason.

    `cleaned` tells whether every node confirmed the stop (an unreachable node keeps the job
    on `down --all`'s list, and `status` / the guard finish the stop once it answers).
    """
    failed = failures(stop_everywhere(record, group, only, timeout))
    everywhere = only is None or {n.name for n in record.nodes} <= set(only)
    record = record.with_status(JobStatus.FAILED, reason).replace(
        cleaned=not failed and everywhere)
    store.save(record)
    return record


def running_slots(reports: Mapping[str, NodeReport | BaseException]) -> list[str]:
    """`node/slot` of every slot still alive (running, or dead with its code not yet written)."""
    return [f"{name}/{s.slot}" for name, r in reports.items() if isinstance(r, NodeReport)
            for s in r.slots if s.state in ("running", "exiting")]


def stop_failed_job(record: JobRecord, group: NodeGroup, store: JobStore,
                    reports: Mapping[str, NodeReport | BaseException]) -> JobRecord:
    """A FAILED job nobody tore down: stop it on every node that answered in `reports`.

    Unreachable nodes are left for later (a stop there would only hang on the network); the
    record stays not `cleaned` until every node confirmed. Any other record is returned as is.
    """
    if record.status is not JobStatus.FAILED or record.cleaned:
        return record
    reachable = [name for name, r in reports.items() if isinstance(r, NodeReport)]
    failed = failures(stop_everywhere(record, group, only=reachable))
    cleaned = not failed and len(reachable) == len(record.nodes)
    record = record.replace(cleaned=cleaned)
    store.save(record)
    return record
