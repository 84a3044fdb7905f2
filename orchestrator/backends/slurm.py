"""The Slurm backend: one batch job per attempt, one srun task per node.

    orchestrate up -i /tmp/slt/inventory.yaml -c tiny --wait        # inventory `backend: slurm`
    orchestrate up -i inventories/x.yaml --backend slurm -c tiny --wait

Staging is the SSH backend's (the nodes are reachable over SSH; code, data and each node's
rendered launch.sh go to `<workdir>/jobs/<id>/` as for SSH). `start` renders
templates/slurm_batch.sh.j2 (kept locally as `<state>/jobs/<id>/slurm-attempt<N>.sbatch`) and
submits it with sbatch: `--nodelist` = the job's nodes (Slurm node names = inventory names),
one task per node running that node's `launch.sh run` in the foreground, so the per-node
supervisor, rank layout, msrun scheduler (first node in rank order), logs and checkpoints are
exactly the SSH ones. The record keeps the Slurm job id (`scheduler_job`).

`poll` asks slurmctld first (scontrol show job), then the nodes. A PENDING job shows Slurm's
reason; one that waiting cannot fix (a requested node down, a partition down) fails the job.
A job Slurm ended before every rank finished (time limit, node failure, a task that could not
start) is FAILED naming the Slurm state. `stop` runs `launch.sh stop` on the nodes (SIGTERM,
the stop grace, SIGKILL), then scancel, and waits until squeue forgets it.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from orchestrate_bloom.fileio import write_atomic

from orchestrator.backends import slurm_cli as cli
from orchestrator.backends.base import Echo, Poll, stage_then_start
from orchestrator.backends.ssh import fetch_over_group
from orchestrator.config.scheduler import Scheduler
from orchestrator.errors import JobError
from orchestrator.job.nodes import NodeReport, derive_status, launch_command, query_job
from orchestrator.job.state import JobRecord, JobStatus, JobStore
from orchestrator.remote.group import GroupResult, NodeGroup, cause
from orchestrator.remote.transport import Transport

CANCEL_WAIT = 60.0  # seconds to wait for a cancelled job to leave squeue


def render_batch(record: JobRecord, sched: Scheduler) -> str:
    """The sbatch script of the job's current attempt (node job folders must be absolute)."""
    from orchestrator.job.render import environment

    for n in record.nodes:
        if not n.job_dir.startswith("/") or any(c.isspace() for c in n.job_dir):
            raise JobError(f"slurm: job folder {n.job_dir!r} on {n.name} must be an absolute "
                           "path without spaces (#SBATCH lines)")
    return environment().get_template("slurm_batch.sh.j2").render(
        job_id=record.job_id, attempt=record.attempts, name=f"orchestrate-{record.job_id}",
        nodes=record.nodes, options=sched.sbatch_options())


def batch_path(store: JobStore, record: JobRecord) -> Path:
    return store.job_dir(record.job_id) / f"slurm-attempt{record.attempts}.sbatch"


def verdict(record: JobRecord, job: cli.SlurmJob | None,
            reports: GroupResult[NodeReport]) -> tuple[JobStatus, str] | None:
    """What Slurm adds to the ranks' own status (None: the ranks decide)."""
    if job is None or record.status in (JobStatus.CANCELLED, JobStatus.FAILED):
        return None
    ranks = derive_status(record, reports)
    slots = [s for r in reports.values() if isinstance(r, NodeReport) for s in r.slots]
    if ranks is JobStatus.FAILED:
        if job.state in cli.ENDED - {"COMPLETED", "FAILED", "CANCELLED"}:
            return JobStatus.FAILED, job.describe()  # the time limit / node failure killed it
        return None
    if ranks is JobStatus.SUCCEEDED:
        return None
    if job.unschedulable:
        return JobStatus.FAILED, f"{job.describe()}: Slurm cannot schedule it"
    if job.state in cli.WAITING:
        return JobStatus.PENDING, job.describe()
    started = any(s.state != "pending" for s in slots)
    if job.state in cli.ENDED and not any(s.state in ("running", "exiting") for s in slots):
        first = record.nodes[0]
        return JobStatus.FAILED, (f"{job.describe()} before every rank finished (see "
                                  f"{first.name}:{first.job_dir}/slurm-{job.job_id}.out)")
    if not started:
        return JobStatus.LAUNCHING, f"{job.describe()} on {job.nodes}: starting ranks"
    return None


class SlurmBackend:
    """One sbatch job per attempt; the nodes reached over SSH for staging and status."""

    name = "slurm"
    node_files = True

    def stage(self, record: JobRecord, group: NodeGroup, store: JobStore,
              echo: Echo) -> JobRecord:
        """Staging over SSH, after Slurm confirmed the partition (a bad one stages nothing)."""
        from orchestrator.job.rollout import stage_all

        sched = group.inventory.scheduler
        if sched.partition:
            try:
                cli.check_partition(sched.partition, sched.slurm_conf)
            except JobError as e:
                raise JobError(f"job {record.job_id} not started: {e} "
                               f"({sched.source('partition')} in {group.inventory.path})"
                               ) from None
        return stage_all(record, group, store, echo)

    def start(self, record: JobRecord, group: NodeGroup, store: JobStore,
              resume: bool) -> JobRecord:
        """Submit the attempt; on a refusal record FAILED with Slurm's reason (JobError)."""
        sched = group.inventory.scheduler
        try:
            if resume:
                _prepare_resume(record, group)
            script = batch_path(store, record)
            write_atomic(script, render_batch(record, sched), 0o644, fsync=False)
            job_id = cli.sbatch(script, sched.slurm_conf)
        except JobError as e:
            why = str(e)
            if sched.partition and "partition" in why.lower():
                why += f" ({sched.source('partition')} in {group.inventory.path})"
            store.save(record.with_status(JobStatus.FAILED, why).replace(cleaned=True))
            raise JobError(f"job {record.job_id} not started: {why}") from None
        record = record.replace(scheduler_job=job_id).with_status(
            JobStatus.LAUNCHING, f"slurm job {job_id} submitted")
        store.save(record)
        return record

    def launch(self, record: JobRecord, group: NodeGroup, store: JobStore,
               echo: Echo) -> JobRecord:
        """Stage over SSH on every node, then submit the attempt (one sbatch for all)."""
        return stage_then_start(self, record, group, store, echo)

    def poll(self, record: JobRecord, group: NodeGroup, timeout: float) -> Poll:
        conf = group.inventory.scheduler.slurm_conf
        job = cli.job_state(record.scheduler_job, conf) if record.scheduler_job else None
        reports = query_job(record, group, timeout)  # after Slurm: its end implies the ranks'
        return Poll(reports=reports, verdict=verdict(record, job, reports),
                    scheduler_state=job.state if job else None)

    def stop(self, record: JobRecord, group: NodeGroup, only: Collection[str] | None,
             timeout: float) -> GroupResult[str]:
        from orchestrator.job.teardown import stop_over_ssh

        stopped = stop_over_ssh(record, group, only, timeout)
        if not record.scheduler_job:
            return stopped
        conf = group.inventory.scheduler.slurm_conf
        outcome: str | BaseException = f"scancel {record.scheduler_job}"
        try:
            cli.scancel(record.scheduler_job, conf)
            if not cli.wait_gone(record.scheduler_job, conf, CANCEL_WAIT):
                outcome = JobError(f"slurm job {record.scheduler_job} still in squeue "
                                   f"{CANCEL_WAIT:.0f} s after scancel")
        except JobError as e:
            outcome = e
        return GroupResult({**stopped.outcomes, f"slurm job {record.scheduler_job}": outcome})

    def fetch(self, record: JobRecord, group: NodeGroup, node: str, relpath: str,
              local: Path) -> Path:
        return fetch_over_group(group, node, f"{record.node(node).job_dir}/{relpath}", local)


def _prepare_resume(record: JobRecord, group: NodeGroup) -> None:
    """`launch.sh prepare resume` on every node: the last attempt's exit codes are gone
    before the new batch job is even scheduled (else a poll would see them)."""
    by_name = {n.name: n for n in record.nodes}

    def one(t: Transport) -> None:
        t.run(launch_command(by_name[t.node.name].job_dir, "prepare resume"), check=True,
              timeout=60)

    failed = group.map(one, list(by_name)).failed
    if failed:
        names = "; ".join(f"[{n}] {cause(e)}" for n, e in failed.items())
        raise JobError(f"slurm: could not prepare the new attempt: {names}")
