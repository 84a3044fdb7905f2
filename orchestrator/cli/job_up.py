"""`orchestrate up`: check, plan, stage and start a job on every node (SSH, Slurm, k8s).

    orchestrate up --inventory inventories/local.yaml --config tiny --wait
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import click

from orchestrator.cli import options as flags
from orchestrator.cli.job_check import (
    mode_option,
    print_check,
    rechecker,
    run_check,
    sched_port_option,
)
from orchestrator.cli.job_common import (
    no_guard_option,
    start_guard,
    store_for,
    wait_options,
    wait_policy,
    watch_job,
)
from orchestrator.cli.k8s import K8sArgs, k8s_options


@click.command("up")
@flags.inventory_option()
@flags.inventory_filter_option()
@flags.config_option()
@flags.set_option()
@mode_option
@click.option("--wait", is_flag=True,
              help="Show live progress until the job ends; exit with its result. A failed rank "
                   "stops the job on every node. Ctrl-C detaches.")
@click.option("--no-check", is_flag=True, help="Skip `orchestrate check` before launching.")
@click.option("--dry-run", is_flag=True,
              help="Render every node's files locally, print where and what would run; "
                   "touch no node.")
@click.option("--rank-table", "rank_table_path", type=click.Path(path_type=Path), default=None,
              help="A rank table from the platform (v1.0, v1.2 or ModelArts' v0 "
                   "jobstart_hccl.json): ranktable mode with it. Servers are matched to nodes "
                   "by server_id; MindSpore gets it as v1.0/1.2 in server_id order.")
@click.option("--rank-table-timeout", type=click.FloatRange(0), default=600, show_default=True,
              help="Seconds to wait while the --rank-table file is missing or \"initializing\".")
@sched_port_option
@click.option("--cluster-timeout", type=click.IntRange(1), default=7200, show_default=True,
              help="msrun: seconds the dynamic cluster waits for all ranks (MS_TOPO_TIMEOUT).")
@click.option("--stop-grace", type=click.IntRange(0), default=10, show_default=True,
              help="Seconds between SIGTERM and SIGKILL when ranks are stopped.")
@click.option("--entrypoint", default=None, hidden=True,
              help="Shell command each rank runs instead of the bundled trainer (tests, bench).")
@wait_options
@no_guard_option
@flags.backend_option()
@k8s_options
@flags.state_dir_option()
@flags.forks_option()
@click.option("-v", "--verbose", is_flag=True,
              help="Print seconds per phase (startup, plan, connect, check, data, render, "
                   "stage, start, guard) once the job runs.")
def up_command(inventory_path: Path, preset: str, overrides: tuple[str, ...], mode: str | None,
               wait: bool, no_check: bool, dry_run: bool, rank_table_path: Path | None,
               rank_table_timeout: float, sched_port: int | None, cluster_timeout: int,
               stop_grace: int, entrypoint: str | None, max_restarts: int,
               exclude_after: int, restart_codes: str | None, stall_timeout: float | None,
               node_lost_timeout: float, no_guard: bool, backend: str | None, emit: Path | None,
               image: str | None, volume: str | None, namespace: str, queue: str,
               ring_controller: str, kubeconfig: Path | None, state_dir: Path,
               forks: int, verbose: bool) -> None:
    """Plan, stage and start a training job on every node.

    check -> plan -> rank table -> render -> stage -> start -> record. Each node gets
    `<workdir>/jobs/<job id>/` with launch.sh, job.yaml, the rank table, the `model`
    package as code/ (files whose sha256 the node already has are not sent) and env.sh
    (inventory `env:`, mode 0600). Every rank runs detached in its own process group; a
    per-node supervisor stops the node's other ranks when one exits non-zero. A failed rank
    ends the job on every node: with --wait the watch loop stops it; without (or after
    Ctrl-C detaches) a background guard on this machine does (pid and log under the state
    dir; --no-guard to skip; `status` and `down --all` also clean up). If a node fails to
    stage or start, or Ctrl-C arrives first, the job is stopped everywhere.

    \b
    Data: --set data.path=PATH where PATH is
      an Alpaca JSON file   prepared to MindRecord here, then staged as data/<name>
      a local folder        (MindRecord, from `orchestrate prepare-data`) staged as is
      a path on the nodes   used as is; or give `data_dir:` per node in the inventory

    \b
    Example (this machine, 2 CPU ranks, the tiny preset, which trains on the shipped
    model/assets/alpaca_seed_tasks.json unless data.path is set):
      orchestrate up -i inventories/local.yaml -c tiny --wait

    \b
    On a Slurm cluster (inventory `backend: slurm`, or --backend slurm): staged over SSH as
    above, then one sbatch job (one srun task per node running its launch.sh); status shows
    the Slurm state (PENDING with its reason), down cancels it (docs/slurm.md):
      orchestrate up -i /tmp/slurmhosts/inventory.yaml -c tiny --wait

    \b
    Kubernetes (--backend k8s): one pod per inventory node, the same plan and launch scripts;
    manifests validated against the shipped CRD schemas, then written or applied:
      orchestrate up --backend k8s --emit out/ -i inventories/12node.yaml -c 65b \\
          --image registry/bloom:latest --volume bloom-ckpt --set data.path=/data/mr
    \f
    Over 60 lines by this help text and the options; the work is _job_spec, _launch_mode and
    _up_on_nodes.
    """
    from orchestrator.job.phases import PhaseClock, phase

    clock = PhaseClock.start()
    inv = flags.load_selected(inventory_path)
    backend = backend or inv.scheduler.backend
    k8s = K8sArgs(emit=emit, image=image, volume=volume, namespace=namespace, queue=queue,
                  ring_controller=ring_controller, kubeconfig=kubeconfig)
    if backend != "k8s" and k8s.given():
        raise click.UsageError(f"{', '.join(k8s.given())}: only with --backend k8s")
    if backend == "k8s" and (wait or dry_run):
        raise click.UsageError("--backend k8s: --wait and --dry-run are SSH-only (use --emit "
                               "DIR to see the manifests; `orchestrate status JOB` to follow)")
    with phase("plan"):
        from orchestrator.job.lifecycle import UpOptions, create_job, dry_run_summary
    spec = _job_spec(preset, overrides, entrypoint, inv)
    mode, table = _launch_mode(mode, rank_table_path, rank_table_timeout, inv, spec,
                               str(inventory_path))
    opts = UpOptions(mode=mode, sched_port=sched_port, cluster_timeout=cluster_timeout,
                     entrypoint=entrypoint, stop_grace=stop_grace, backend=backend,
                     rank_table=table)
    if backend == "k8s":
        from orchestrator.cli.k8s import up_k8s

        up_k8s(inv, spec, mode, k8s, opts, state_dir)
        return
    from orchestrator.job.dataset import check_data_path

    check_data_path(spec, all(n.data_dir is not None for n in inv.nodes))
    store = store_for(state_dir)
    if dry_run:
        record = create_job(inv, spec, store, opts, None)
        _echo_data_notes(record.local_data)
        for line in dry_run_summary(record, store):
            click.echo(line)
        return
    policy = wait_policy(max_restarts, exclude_after, restart_codes, stall_timeout,
                         node_lost_timeout)
    _up_on_nodes(inv, spec, opts, store, policy, clock,
                 Flags(forks=forks, no_check=no_check, wait=wait, no_guard=no_guard,
                       verbose=verbose))


@dataclass(frozen=True)
class Flags:
    """The switches of `up` that act once the nodes are connected."""

    forks: int
    no_check: bool
    wait: bool
    no_guard: bool
    verbose: bool


def _job_spec(preset: str, overrides: tuple[str, ...], entrypoint: str | None,
              inv: Any) -> Any:
    """The job spec (with the data's prompt template recorded); refuses a job with no data."""
    from orchestrator.config.presets import load_job_spec
    from orchestrator.errors import JobError
    from orchestrator.job.dataset import template_override
    from orchestrator.job.phases import phase

    with phase("plan"):
        spec = load_job_spec(preset, overrides)
        recorded = template_override(spec)
        if recorded is not None:  # the data's prompt template, recorded with the job
            spec = load_job_spec(preset, (*overrides, recorded))
    for note in spec.notes:  # a MindFormers run config's keys that are not honoured
        click.echo(f"note: {note}", err=True)
    if entrypoint is None and not spec.value("data.path") and any(
            n.data_dir is None for n in inv.nodes):
        raise JobError(f"data.path is empty in preset {preset}: the trainer needs a dataset. "
                       "Pass --set data.path=alpaca.json (prepared to MindRecord here and "
                       "staged) or a MindRecord folder (`orchestrate prepare-data`; a local "
                       "folder is staged, a path that exists only on the nodes is used as is)")
    return spec


def _launch_mode(mode: str | None, rank_table_path: Path | None, rank_table_timeout: float,
                 inv: Any, spec: Any, inventory_path: str) -> tuple[str, str | None]:
    """(launch mode, the platform's rank table text or None); fault-tolerance settings that
    do not fit the mode are refused here, before anything runs."""
    from orchestrator.config.faulttol import fault_env
    from orchestrator.job.render import default_mode

    table = None
    if rank_table_path is not None:
        if mode == "msrun":
            raise click.UsageError("--rank-table is ranktable mode; drop --mode msrun")
        mode = "ranktable"
        table = _platform_table(rank_table_path, rank_table_timeout, inv)
    mode = mode or default_mode(str(spec.value("train.device_target")))
    fault_env(inv.fault_tolerance, "", mode, inventory_path)
    return mode, table


def _up_on_nodes(inv: Any, spec: Any, opts: Any, store: Any, policy: Any, clock: Any,
                 flags_: Flags) -> None:
    """Connect, check, create, stage and start the job; then watch it (--wait) or leave a
    guard. One connection per node for the whole command; the SSH handshakes run in the
    background while the job id is reserved. The nodes are checked before any local work
    that may take long (preparing a dataset)."""
    from orchestrator.job.lifecycle import create_job, launch, reserve_job_id, sched_port_for
    from orchestrator.job.phases import phase
    from orchestrator.remote.group import NodeGroup

    mode = opts.mode
    with phase("connect"):  # importing the SSH stack, starting the handshakes
        nodes = NodeGroup(inv, inv.in_rank_order(), forks=flags_.forks)
    with nodes as group:
        job_id = reserve_job_id(store, spec.preset)
        port = opts.sched_port or sched_port_for(job_id)
        if not flags_.no_check:
            _check_or_release(group, spec, mode, port if mode == "msrun" else None, store,
                              job_id)
        record = create_job(inv, spec, store, replace(opts, sched_port=port), group, job_id)
        _echo_data_notes(record.local_data)
        click.echo(f"job {record.job_id}: {record.world_size} ranks on {len(record.nodes)} "
                   f"node(s), {record.mode} mode")
        try:
            record = launch(record, group, store, echo=click.echo)
        except KeyboardInterrupt:
            click.echo(f"job {record.job_id} cancelled: nothing left running", err=True)
            sys.exit(130)
        click.echo(f"job {record.job_id} running. Follow it with `orchestrate status --watch "
                   f"{record.job_id}`, stop it with `orchestrate down {record.job_id}`.")
        if not flags_.wait and not flags_.no_guard:
            with phase("guard"):
                start_guard(store, record)
        if flags_.verbose:
            for line in clock.lines():
                click.echo(line)
        if flags_.wait:
            watch_job(record, group, store, policy,
                      rechecker(group, spec, mode, record.sched_port, flags_.no_check),
                      guard_on_detach=not flags_.no_guard)


def _check_or_release(group: Any, spec: Any, mode: str, port: int | None, store: Any,
                      job_id: str) -> None:
    """The pre-launch node check; on failure the reserved job id is given back (no job)."""
    from orchestrator.errors import JobError
    from orchestrator.job.phases import phase

    with phase("check"):
        report = run_check(group, spec, mode, port)
    if not report.ok:
        print_check(report)
        store.job_dir(job_id).rmdir()  # reserved, empty: no job was made
        raise JobError(f"check failed on {len({n for n, _ in report.failures})} "
                       "node(s); nothing was started (fix, or skip with --no-check)")


def _platform_table(path: Path, timeout: float, inv: Any) -> str:
    """The platform's table as MindSpore gets it, once ready and matched to the inventory."""
    from orchestrator.hccl.platform import check_against_inventory, wait_for_table
    from orchestrator.remote.group import node_address

    found = wait_for_table(path, timeout, lambda line: click.echo(line, err=True))
    check_against_inventory(found.table, inv, lambda n: node_address(n, inv))
    click.echo(f"rank table {path}: {found.layout} layout, {len(found.table.servers)} servers, "
               f"{found.table.world_size} ranks"
               + ("; ranks renumbered in server_id order" if found.reordered else ""))
    return found.table.dumps()


def _echo_data_notes(local_data: str | None) -> None:
    from orchestrator.job.dataset import data_notes

    for line in data_notes(local_data):
        click.echo(f"note: {line}", err=True)
