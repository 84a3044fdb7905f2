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

import shlex
from collections.abc import Collection, Mapping
from pathlib import Path

from orchestrate_bloom.fileio import write_atomic

from orchestrator.backends import slurm_cli as cli
from orchestrator.backends import slurm_stage
from orchestrator.backends.base import Echo, Poll, stage_then_start
from orchestrator.backends.ssh import JobDirOverSSH
from orchestrator.config.scheduler import Scheduler
from orchestrator.errors import JobError, OrchestrateError
from orchestrator.job.nodes import NodeReport, derive_status, launch_command, query_job
from orchestrator.job.state import JobRecord, JobStatus, JobStore, NodeRecord
from orchestrator.remote.group import GroupResult, NodeGroup, cause, node_address
from orchestrator.remote.transport import Transport
from orchestrator.untrusted import lines, shown

CANCEL_WAIT = 60.0  # seconds to wait for a cancelled job to leave squeue
BUNDLE_SHA = "bundle.sha256"  # in the local job folder: the sha256 the nodes check


def render_batch(record: JobRecord, sched: Scheduler, addresses: Mapping[str, str],
                 bundle: slurm_stage.Bundle | None = None) -> str:
    """The sbatch script of the job's current attempt (node job folders must be absolute).

    `addresses`: node name -> the address its msrun scheduler is reached at (the step takes
    the one of Slurm's first host); `bundle`: stage through the allocation (slurm_stage.py).
    """
    from orchestrator.job.render import environment

    for n in record.nodes:
        if not n.job_dir.startswith("/") or any(c.isspace() for c in n.job_dir):
            raise JobError(f"slurm: job folder {n.job_dir!r} on {n.name} must be an absolute "
                           "path without spaces (#SBATCH lines)")
    return environment().get_template("slurm_batch.sh.j2").render(
        job_id=record.job_id, attempt=record.attempts, name=f"orchestrate-{record.job_id}",
        nodes=record.nodes, options=sched.sbatch_options(), addresses=addresses,
        has_sched=record.mode == "msrun", bundle=bundle,
        out_dir=bundle.out_dir if bundle else record.nodes[0].job_dir)


def batch_path(store: JobStore, record: JobRecord) -> Path:
    return store.job_dir(record.job_id) / f"slurm-attempt{record.attempts}.sbatch"


def verdict(record: JobRecord, job: cli.SlurmJob | None, reports: GroupResult[NodeReport],
            out_dir: str | None = None) -> tuple[JobStatus, str] | None:
    """What Slurm adds to the ranks' own status (None: the ranks decide); `out_dir`: where
    the batch output is when not in the first node's job folder (`stage: allocation`)."""
    if job is None or record.status in (JobStatus.CANCELLED, JobStatus.FAILED):
        return None
    ranks = derive_status(record, reports)
    slots = [s for r in reports.values() if isinstance(r, NodeReport) for s in r.slots]
    if ranks is JobStatus.FAILED:
        if job.state in cli.ENDED - {"COMPLETED", "FAILED", "CANCELLED"}:
            return JobStatus.FAILED, job.describe()  # the time limit / node failure killed it
        if job.state == "COMPLETING":  # Slurm's own end state (e.g. TIMEOUT) shows next poll
            return record.status, f"{job.describe()}: Slurm is ending it"
        return None
    if ranks is JobStatus.SUCCEEDED:
        return None
    if job.unschedulable:
        return JobStatus.FAILED, f"{job.describe()}: Slurm cannot schedule it"
    if job.state in cli.WAITING:
        return JobStatus.PENDING, job.describe()
    started = any(s.state != "pending" for s in slots)
    if job.state in cli.ENDED and not any(s.state in ("running", "exiting") for s in slots):
        first = _batch_node(record, job)
        where = out_dir or f"{first.name}:{first.job_dir}"
        return JobStatus.FAILED, (f"{job.describe()} before every rank finished (see "
                                  f"{where}/slurm-{job.job_id}.out)")
    if not started:
        return JobStatus.LAUNCHING, f"{job.describe()} on {job.nodes}: starting ranks"
    return None


class SlurmBackend(JobDirOverSSH):
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
        if sched.stage == "allocation":
            return _stage_bundle(record, group, store, echo)
        return stage_all(record, group, store, echo)

    def start(self, record: JobRecord, group: NodeGroup, store: JobStore,
              resume: bool) -> JobRecord:
        """Submit the attempt; on a refusal record FAILED with Slurm's reason (JobError)."""
        sched = group.inventory.scheduler
        try:
            if resume:
                _prepare_resume(record, group)
            script = batch_path(store, record)
            addresses = {n.name: node_address(n, group.inventory) for n in group.inventory.nodes
                         if n.name in {r.name for r in record.nodes}}
            write_atomic(script, render_batch(record, sched, addresses, _bundle(record, store,
                                                                                sched)),
                         0o644, fsync=False)
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
        """Stage (over SSH, or the bundle for `stage: allocation`), then submit the attempt."""
        return stage_then_start(self, record, group, store, echo)

    def poll(self, record: JobRecord, group: NodeGroup, timeout: float) -> Poll:
        sched = group.inventory.scheduler
        job = cli.job_state(record.scheduler_job, sched.slurm_conf) if record.scheduler_job \
            else None
        reports = query_job(record, group, timeout)  # after Slurm: its end implies the ranks'
        spool = spool_of(record, sched)
        said = verdict(record, job, reports, str(spool) if spool else None)
        if said and said[0] is JobStatus.FAILED and job and job.state in cli.ENDED:
            why = self.batch_error(record, group, spool, job)
            said = (said[0], f"{why}; {said[1]}") if why else said
        return Poll(reports=reports, verdict=said, scheduler_state=job.state if job else None)

    def batch_error(self, record: JobRecord, group: NodeGroup, spool: Path | None,
                    job: cli.SlurmJob) -> str | None:
        """The first `orchestrate:` line of the batch job's output (a placement mismatch, a
        bundle that failed its checks), read from the spool or fetched from the node that
        ran the batch script."""
        name = f"slurm-{job.job_id}.out"
        try:
            if spool is not None:
                text = _tail(spool / name)
            else:  # the node's tail, never the whole file at the size the node states
                node = _batch_node(record, job)
                res = group.transport(node.name).run(
                    f"tail -c {TAIL_BYTES} -- {shlex.quote(f'{node.job_dir}/{name}')}",
                    check=False)
                if not res.ok:
                    return None
                text = res.stdout[-TAIL_BYTES:]
        except (OSError, OrchestrateError):
            return None
        found = [ln for ln in lines(text) if ln.startswith("orchestrate: ")]
        return shown(found[0].removeprefix("orchestrate: ")) if found else None

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


def _stage_bundle(record: JobRecord, group: NodeGroup, store: JobStore, echo: Echo
                  ) -> JobRecord:
    """`stage: allocation`: the bundle into the spool (the batch job's first step unpacks it);
    its sha256 is kept in the local job folder, which the batch script of every attempt
    bakes in."""
    from orchestrator.job.rollout import rendered_files

    spool = group.inventory.scheduler.spool
    assert spool is not None  # the inventory parser requires it with stage: allocation
    rendered = {n.name: rendered_files(store, record, n.name) for n in record.nodes}
    bundle = slurm_stage.build_bundle(record, spool, slurm_stage.bundle_trees(record), rendered)
    write_atomic(store.job_dir(record.job_id) / BUNDLE_SHA, bundle.sha256 + "\n", 0o644,
                 fsync=False)
    echo(f"bundled {len(record.nodes)} node(s) into {bundle.path} (sha256 "
         f"{bundle.sha256[:12]}): the Slurm job's first step stages it on every node")
    return record


def _bundle(record: JobRecord, store: JobStore, sched: Scheduler) -> slurm_stage.Bundle | None:
    """The bundle of a job staged through the allocation (None: staged over SSH)."""
    if sched.stage != "allocation" or sched.spool is None:
        return None
    folder = slurm_stage.spool_dir(sched.spool, record.job_id)
    try:
        sha = (store.job_dir(record.job_id) / BUNDLE_SHA).read_text().strip()
    except OSError:
        raise JobError(f"slurm: job {record.job_id} has no bundle (stage: allocation); "
                       "start a new job") from None
    return slurm_stage.Bundle(path=folder / slurm_stage.BUNDLE, sha256=sha, out_dir=folder)


def _batch_node(record: JobRecord, job: cli.SlurmJob) -> NodeRecord:
    """The node whose job folder holds the batch output: Slurm's BatchHost (the first node
    of the allocation, where `--output` is written), else the plan's first."""
    return next((n for n in record.nodes if n.name == job.batch_host), record.nodes[0])


def spool_of(record: JobRecord, sched: Scheduler) -> Path | None:
    """Where the batch output of a job staged through the allocation is (None: on the first
    node's job folder)."""
    if sched.stage != "allocation" or sched.spool is None:
        return None
    return slurm_stage.spool_dir(sched.spool, record.job_id)


TAIL_BYTES = 65536  # of the batch output read for its `orchestrate:` line


def _tail(path: Path, limit: int = TAIL_BYTES) -> str:
    """The last `limit` bytes of a local file as text (node output: bounded, never trusted)."""
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, 2) - limit))
        return f.read(limit).decode("utf-8", "replace")


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
