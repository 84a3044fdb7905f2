"""The job lifecycle behind `orchestrate up / down`: render, stage, start, stop.

    with NodeGroup(inv, inv.in_rank_order()) as group:       # one connection per node
        record = create_job(inv, spec, store, UpOptions(), group)   # renders, PENDING
        record = launch(record, group, store)                 # stage + start, RUNNING
        record, _ = stop_job(record, group, store)            # down: CANCELLED

If any node fails to stage or start, or Ctrl-C arrives before every rank runs, everything
already started is stopped on every node and the job is recorded FAILED / CANCELLED.
"""

from __future__ import annotations

import hashlib
import shlex
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from orchestrate_bloom.fileio import write_atomic

from orchestrator.config.faulttol import fault_env
from orchestrator.config.inventory import Inventory
from orchestrator.config.plan import build_plan
from orchestrator.config.presets import JobSpec
from orchestrator.errors import JobError
from orchestrator.job.dataset import data_paths_for, local_dataset
from orchestrator.job.phases import phase
from orchestrator.job.render import (
    DEFAULT_CLUSTER_TIMEOUT,
    DEFAULT_STOP_GRACE,
    LaunchSpec,
    RenderedFile,
    default_mode,
    render_job,
    stamp_job_id,
)
from orchestrator.job.rollout import sigint_deferred
from orchestrator.job.state import JobRecord, JobStatus, JobStore, NodeRecord, new_job_id
from orchestrator.job.teardown import failures, stop_everywhere
from orchestrator.job.teardown import stop_job as stop_job  # re-exported: `down`
from orchestrator.job.teardown import teardown_failed as teardown_failed  # re-exported
from orchestrator.remote.group import NodeGroup

Echo = Callable[[str], None]


@dataclass(frozen=True)
class UpOptions:
    """Choices of `orchestrate up` beyond preset and inventory."""

    mode: str | None = None  # None: msrun (render.default_mode)
    sched_port: int | None = None  # None: derived from the job id (see sched_port_for)
    cluster_timeout: int = DEFAULT_CLUSTER_TIMEOUT
    entrypoint: str | None = None  # rank command instead of the bundled trainer
    stop_grace: int = DEFAULT_STOP_GRACE
    rank_table: str | None = None  # a platform's table (hccl/platform.py), as MindSpore gets it

    backend: str = "ssh"  # where ranks run (orchestrator/backends/): ssh | slurm


def sched_port_for(job_id: str) -> int:
    """A scheduler port in 20000-29999 derived from the job id: two jobs rarely collide."""
    return 20000 + int(hashlib.sha256(job_id.encode()).hexdigest()[:8], 16) % 10000


def rank_table_for(inv: Inventory, group: NodeGroup | None) -> str | None:
    """The merged HCCL rank table: device IPs from the inventory, else discovered over the
    group's connections.

    Returns None when IPs are missing and there is no group (dry run: no node is touched).
    """
    from orchestrator.hccl.ranktable import (
        build_tables,
        nodes_needing_discovery,
        resolve_device_ips,
    )

    need = nodes_needing_discovery(inv)
    discovered = None
    if need:
        if group is None:
            return None
        from orchestrator.job.discover import discover as probe_all

        probes = probe_all(group, need)
        discovered = {name: p.device_ips for name, p in probes.items()}
    merged, _ = build_tables(inv, resolve_device_ips(inv, discovered))
    return merged.dumps()


def reserve_job_id(store: JobStore, preset: str) -> str:
    """A new job id, its local folder created (so no other `up` takes it)."""
    with store.locked():
        job_id = new_job_id(preset, set(store.ids()))
        store.job_dir(job_id).mkdir(parents=True, exist_ok=True)
    return job_id


def create_job(inv: Inventory, spec: JobSpec, store: JobStore, opts: UpOptions,
               group: NodeGroup | None, job_id: str | None = None) -> JobRecord:
    """Plan and render the job locally; record it PENDING.

    No node is touched, except in ranktable mode to discover device IPs the inventory lacks
    over `group` (None: a dry run, which renders everything but the rank table then).
    """
    plan = build_plan(inv, spec)
    mode = opts.mode or default_mode(str(spec.value("train.device_target")))
    first = plan.nodes[0].ranks.node
    from orchestrator.remote.group import node_address  # an ssh_config alias: its HostName

    sched_host = node_address(first, inv)
    fault = fault_env(inv.fault_tolerance, sched_host, mode, str(inv.path))
    job_id = job_id or reserve_job_id(store, spec.preset)
    port = opts.sched_port or sched_port_for(job_id)
    launch = LaunchSpec(job_id=job_id, mode=mode, world_size=plan.world_size,
                        sched_host=sched_host, sched_port=port,
                        cluster_timeout=opts.cluster_timeout, entrypoint=opts.entrypoint,
                        stop_grace=opts.stop_grace, fault_env=tuple(sorted(fault.items())))
    with phase("ranktable"):
        table = ((opts.rank_table or rank_table_for(inv, group)) if mode == "ranktable"
                 else None)
    with phase("data"):
        local_data = local_dataset(spec, plan, store.data_cache)
    data_paths = data_paths_for(plan, local_data)
    with phase("render"):
        write_rendered(store, job_id, render_job(launch, plan, data_paths, table,
                                                 require_table=group is not None))
    now = time.time()
    nodes = tuple(
        NodeRecord(name=n.ranks.node.name, host=n.ranks.node.host, rank_start=n.ranks.rank_start,
                   rank_end=n.ranks.rank_end, devices=n.ranks.node.devices,
                   job_dir=f"{n.ranks.node.workdir}/jobs/{job_id}")
        for n in plan.nodes)
    record = JobRecord(job_id=job_id, status=JobStatus.PENDING, created_at=now, updated_at=now,
                       inventory_path=str(inv.path.resolve()), inventory_digest=inv.digest,
                       preset=spec.preset, overrides=spec.overrides, mode=mode,
                       world_size=plan.world_size, nodes=nodes,
                       sched_host=launch.sched_host if mode == "msrun" else None,
                       sched_port=port if mode == "msrun" else None,
                       entrypoint=opts.entrypoint,
                       local_data=str(local_data.resolve()) if local_data else None,
                       cluster_timeout=opts.cluster_timeout, stop_grace=opts.stop_grace,
                       backend=opts.backend)
    store.save(record)
    return record


def write_rendered(store: JobStore, job_id: str,
                   files: Mapping[str, Mapping[str, RenderedFile]]) -> None:
    """Keep every node's rendered files under `<state>/jobs/<id>/nodes/<node>/` (atomic)."""
    local = store.job_dir(job_id)
    for node_name, node_files in files.items():
        for fname, f in node_files.items():
            text = stamp_job_id(f.text, job_id) if fname == "job.yaml" else f.text
            write_atomic(local / "nodes" / node_name / fname, text, f.mode, fsync=False)


def launch(record: JobRecord, group: NodeGroup, store: JobStore,
           echo: Echo = print) -> JobRecord:
    """Stage and start the job on every node (backend.launch: over SSH each node starts as
    soon as it is staged); on failure or Ctrl-C stop it everywhere.

    Raises:
        JobError: a node failed to stage or start (names the node and the cause).
        KeyboardInterrupt: re-raised after cleanup when Ctrl-C arrived.
    """
    from orchestrator.backends import backend_for

    try:
        record = record.with_status(JobStatus.LAUNCHING)
        store.save(record)
        with phase("connect"):
            group.wait_connected()
        with phase("launch"):
            return backend_for(record).launch(record, group, store, echo)
    except KeyboardInterrupt:
        with sigint_deferred():
            echo("interrupted: stopping whatever was started ...")
            record = store.load(record.job_id)  # with the node folders learned so far
            missed = failures(stop_everywhere(record, group))
            store.save(record.with_status(JobStatus.CANCELLED, "interrupted during up")
                       .replace(cleaned=not missed))
        raise
    except Exception as e:
        record = store.load(record.job_id)
        if record.status is JobStatus.LAUNCHING:  # not recorded yet: a bug or a stage error
            left: dict[str, BaseException] = {}
            if not isinstance(e, JobError):  # ranks may have started: leave none behind
                with sigint_deferred():
                    left = failures(stop_everywhere(record, group))
            store.save(record.with_status(JobStatus.FAILED, str(e) or type(e).__name__)
                       .replace(cleaned=not left))
        raise


def _start_all(record: JobRecord, group: NodeGroup, store: JobStore, resume: bool
               ) -> JobRecord:
    """Start every rank through the job's backend (ssh: start_over_ssh; slurm: sbatch)."""
    from orchestrator.backends import backend_for

    return backend_for(record).start(record, group, store, resume)


def resume_job(record: JobRecord, group: NodeGroup, store: JobStore,
               poll_timeout: float = 60.0) -> JobRecord:
    """A new attempt of an ended job on the same nodes: every rank restarts with `--resume`
    (the trainer continues from the newest checkpoint complete on every rank).

    Raises:
        JobError: the job succeeded, or still runs somewhere, or a node failed to start.
    """
    from orchestrator.backends import backend_for

    if record.status is JobStatus.SUCCEEDED:
        raise JobError(f"job {record.job_id} already SUCCEEDED; start a new job instead")
    reports = backend_for(record).poll(record, group, poll_timeout).reports
    unreachable = [n for n, r in reports.items() if isinstance(r, BaseException)]
    if unreachable:
        raise JobError(f"job {record.job_id}: cannot reach {', '.join(unreachable)}; "
                       "nothing was restarted")
    running = [f"{n}/{s.slot}" for n, r in reports.items() if not isinstance(r, BaseException)
               for s in r.slots if s.state in ("running", "exiting")]
    if running:
        raise JobError(f"job {record.job_id} still runs ({', '.join(running[:8])}); stop it "
                       f"with `orchestrate down {record.job_id}` first")
    unstaged = [n for n, r in reports.items() if not isinstance(r, BaseException) and not r.staged]
    if unstaged:
        raise JobError(f"job {record.job_id} was never staged on {', '.join(unstaged)}; "
                       "start a new job instead")
    record = record.replace(attempts=record.attempts + 1, status=JobStatus.LAUNCHING,
                            message="", cleaned=False)
    store.save(record)
    try:
        return _start_all(record, group, store, resume=True)
    except KeyboardInterrupt:
        with sigint_deferred():
            left = failures(stop_everywhere(record, group))
            store.save(record.with_status(JobStatus.CANCELLED, "interrupted during resume")
                       .replace(cleaned=not left))
        raise


def dry_run_summary(record: JobRecord, store: JobStore) -> list[str]:
    """What `up --dry-run` prints: where the rendered files are and what would run."""
    local = store.job_dir(record.job_id)
    lines = [f"job {record.job_id} ({record.mode} mode, {record.world_size} ranks) rendered "
             f"into {local}/nodes/<node>/ — nothing was sent to any node.",
             "would stage code/ (the model package), job.yaml, launch.sh"
             + (", rank_table.json" if record.mode == "ranktable" else "")
             + (" (the rank table is built at launch: device IPs are discovered over SSH)"
                if record.mode == "ranktable" and not any(
                    (local / "nodes" / n.name / "rank_table.json").exists() for n in record.nodes)
                else "")
             + " into <workdir>/jobs/<job id>/ on every node, then run:"]
    for n in record.nodes:
        lines.append(f"  [{n.name}] ranks {n.rank_start}-{n.rank_end - 1}: "
                     f"bash {shlex.quote(n.job_dir + '/launch.sh')} start")
    if record.mode == "msrun":
        lines.append(f"dynamic cluster: scheduler on {record.nodes[0].name} at "
                     f"{record.sched_host}:{record.sched_port}, MS_TOPO_TIMEOUT "
                     f"{record.cluster_timeout} s; logs also in "
                     "<job>/output/msrun_log/{scheduler,worker_<rank>}.log")
    else:
        lines.append("HCCL rank table: RANK_TABLE_FILE=<job>/rank_table.json, RANK_ID global, "
                     "DEVICE_ID local")
    return lines

