"""Job lifecycle commands that start work: check, up, resume (issue #7, #9). The module
registers every job command; status / logs / plot live in job_view.py, down in job_down.py.

    orchestrate check  --inventory inventories/12node.yaml --config 65b
    orchestrate up     --inventory inventories/local.yaml --config tiny --wait
    orchestrate resume [JOB] [--wait]

JOB defaults to the latest job in the state dir.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from orchestrator.cli import options as flags
from orchestrator.cli.check_view import print_check, rechecker, run_check
from orchestrator.cli.job_common import (
    job_argument,
    job_inventory_option,
    launch_then,
    no_guard_option,
    record_and_inventory,
    start_guard,
    store_for,
    wait_options,
    wait_policy,
    watch_job,
)
from orchestrator.cli.job_down import down_command
from orchestrator.cli.job_view import logs_command, plot_command, status_command
from orchestrator.cli.k8s import K8sArgs, k8s_options

mode_option = click.option("--mode", type=click.Choice(["ranktable", "msrun"]), default=None,
                           help="Launch mode [default: msrun, MindSpore's dynamic cluster, on "
                                "every target; ranktable with --rank-table].")
sched_port_option = click.option("--sched-port", type=click.IntRange(1, 65535), default=None,
                                 help="msrun: scheduler port on the first node in rank order "
                                      "(default for up: 20000-29999, derived from the job id; "
                                      "check: skip the port check unless given).")


@click.command("check")
@flags.inventory_option()
@flags.inventory_filter_option()
@click.option("--config", "-c", "preset", default=None,
              help="Preset to check for (device target, launch mode); default: CPU checks only.")
@flags.set_option()
@mode_option
@sched_port_option
@flags.forks_option()
def check_command(inventory_path: Path, preset: str | None, overrides: tuple[str, ...],
                  mode: str | None, sched_port: int | None, forks: int) -> None:
    """Check nodes are ready: SSH, python, mindspore, devices, disk, clock, scheduler port.

    Every node is probed in parallel; one table, then one line per failed check naming the
    fix. Exit 1 if any check failed.
    """
    from orchestrator.config.presets import load_job_spec
    from orchestrator.errors import JobError
    from orchestrator.job.render import default_mode

    inv = flags.load_selected(inventory_path)
    spec = load_job_spec(preset, overrides) if preset else None
    mode = mode or default_mode(str(spec.value("train.device_target")) if spec else "CPU")
    from orchestrator.remote.group import NodeGroup

    with NodeGroup(inv, inv.in_rank_order(), forks=forks) as group:
        report = run_check(group, spec, mode, sched_port)
    print_check(report)
    if not report.ok:
        raise JobError(f"{len(report.failures)} check(s) failed")


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
    Over 60 lines only by this help text and the options; the work is _refuse_k8s_misuse,
    _job_spec, _launch_mode and _up_on_nodes (SSH/Slurm) or cli.k8s.up_k8s.
    """
    from orchestrator.job.lifecycle import UpOptions
    from orchestrator.job.phases import PhaseClock

    clock = PhaseClock.start()
    inv = flags.load_selected(inventory_path)
    backend = backend or inv.scheduler.backend
    k8s = K8sArgs(emit=emit, image=image, volume=volume, namespace=namespace, queue=queue,
                  ring_controller=ring_controller, kubeconfig=kubeconfig)
    _refuse_k8s_misuse(backend, k8s, dry_run, rank_table_path is not None)
    spec = _job_spec(preset, overrides, inv, entrypoint)
    mode, table = _launch_mode(mode, rank_table_path, rank_table_timeout, inv, spec,
                               inventory_path)
    opts = UpOptions(mode=mode, sched_port=sched_port, cluster_timeout=cluster_timeout,
                     entrypoint=entrypoint, stop_grace=stop_grace, backend=backend,
                     rank_table=table)
    policy = wait_policy(max_restarts, exclude_after, restart_codes, stall_timeout,
                         node_lost_timeout)
    if backend == "k8s":
        from orchestrator.cli.k8s import up_k8s

        up_k8s(inv, spec, k8s, opts, state_dir, lambda record, group, store: _follow(
            record, group, store, policy, dict, wait=wait, no_guard=no_guard))
        return
    from orchestrator.job.dataset import check_data_path

    check_data_path(spec, all(n.data_dir is not None for n in inv.nodes))
    store = store_for(state_dir)
    if dry_run:
        from orchestrator.job.lifecycle import create_job, dry_run_summary

        record = create_job(inv, spec, store, opts, None)
        _echo_data_notes(record.local_data)
        for line in dry_run_summary(record, store):
            click.echo(line)
        return
    _up_on_nodes(inv, spec, store, opts, policy, forks=forks, no_check=no_check, wait=wait,
                 no_guard=no_guard, clock=clock if verbose else None)


def _refuse_k8s_misuse(backend: str, k8s: K8sArgs, dry_run: bool, has_rank_table: bool) -> None:
    """Options that only one backend understands, refused before any work."""
    if backend != "k8s" and k8s.given():
        raise click.UsageError(f"{', '.join(k8s.given())}: only with --backend k8s")
    if backend == "k8s" and dry_run:
        raise click.UsageError("--backend k8s: no --dry-run (--emit DIR writes the manifests "
                               "and touches no cluster)")
    if backend == "k8s" and has_rank_table:
        raise click.UsageError("--backend k8s: no --rank-table (the platform fills the "
                               "rings-config ConfigMap of a --mode ranktable job)")


def _job_spec(preset: str, overrides: tuple[str, ...], inv: Any, entrypoint: str | None) -> Any:
    """The job's spec (preset + --set + the data's recorded prompt template); its notes said."""
    from orchestrator.errors import JobError
    from orchestrator.job.phases import phase

    with phase("plan"):
        from orchestrator.config.presets import load_job_spec
        from orchestrator.job.dataset import template_override

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
                 inv: Any, spec: Any, inventory_path: Path) -> tuple[str, str | None]:
    """(mode, the platform's rank table or None); fault-tolerance settings refused early."""
    from orchestrator.config.faulttol import fault_env
    from orchestrator.job.render import default_mode

    table = None
    if rank_table_path is not None:
        if mode == "msrun":
            raise click.UsageError("--rank-table is ranktable mode; drop --mode msrun")
        mode = "ranktable"
        table = _platform_table(rank_table_path, rank_table_timeout, inv)
    mode = mode or default_mode(str(spec.value("train.device_target")))
    fault_env(inv.fault_tolerance, "", mode, str(inventory_path))  # refused before anything
    return mode, table


def _up_on_nodes(inv: Any, spec: Any, store: Any, opts: Any, policy: Any, *, forks: int,
                 no_check: bool, wait: bool, no_guard: bool, clock: Any) -> None:
    """check -> create -> stage + start -> guard or watch, over one connection per node.

    The SSH handshakes run in the background while the job id is reserved; the nodes are
    checked before any local work that may take long (preparing a dataset). Ctrl-C during
    the launch stops the job everywhere (exit 130); during --wait it detaches.
    """
    from orchestrator.errors import JobError
    from orchestrator.job.lifecycle import create_job, reserve_job_id, sched_port_for
    from orchestrator.job.phases import phase
    from orchestrator.remote.group import NodeGroup

    mode = opts.mode
    with phase("connect"):  # importing the SSH stack, starting the handshakes
        nodes = NodeGroup(inv, inv.in_rank_order(), forks=forks)
    with nodes as group:
        job_id = reserve_job_id(store, spec.preset)
        port = opts.sched_port or sched_port_for(job_id)
        if not no_check:
            with phase("check"):
                report = run_check(group, spec, mode, port if mode == "msrun" else None)
            if not report.ok:
                print_check(report)
                store.job_dir(job_id).rmdir()  # reserved, empty: no job was made
                raise JobError(f"check failed on {len({n for n, _ in report.failures})} "
                               "node(s); nothing was started (fix, or skip with --no-check)")
        record = create_job(inv, spec, store, replace(opts, sched_port=port), group, job_id)
        _echo_data_notes(record.local_data)
        click.echo(f"job {record.job_id}: {record.world_size} ranks on {len(record.nodes)} "
                   f"node(s), {record.mode} mode")
        recheck = rechecker(group, spec, mode, record.sched_port, no_check)
        launch_then(record, group, store, lambda r: _follow(
            r, group, store, policy, recheck, wait=wait, no_guard=no_guard, clock=clock))


def _follow(record: Any, group: Any, store: Any, policy: Any, recheck: Any, *, wait: bool,
            no_guard: bool, clock: Any = None) -> None:
    """After the start: leave the background guard, or watch until the job ends (--wait)."""
    from orchestrator.job.phases import phase

    if not wait and not no_guard:
        with phase("guard"):
            start_guard(store, record)
    if clock is not None:  # up -v
        for line in clock.lines():
            click.echo(line)
    if wait:
        watch_job(record, group, store, policy, recheck, guard_on_detach=not no_guard)


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


@click.command("resume")
@job_argument
@click.option("--wait", is_flag=True, help="Show live progress until the job ends (as `up`).")
@click.option("--exclude-node", "exclude", multiple=True, metavar="NODE",
              help="Relaunch without this node (name or host; repeatable), e.g. one that keeps "
                   "failing. Data-parallel jobs only: DP is recomputed, the newest checkpoint "
                   "complete on every remaining rank is copied to the renumbered ranks.")
@click.option("--global-batch", type=click.Choice(["keep", "scale"]), default="keep",
              show_default=True,
              help="With --exclude-node: keep samples per step (raise micro_batch_num or "
                   "micro_batch_size; refused when it does not divide) or scale it with DP.")
@wait_options
@job_inventory_option()
@no_guard_option
@flags.state_dir_option()
@flags.forks_option()
def resume_command(job_id: str | None, wait: bool, exclude: tuple[str, ...], global_batch: str,
                   max_restarts: int, exclude_after: int, restart_codes: str | None,
                   stall_timeout: float | None, node_lost_timeout: float,
                   inventory_path: Path | None, no_guard: bool, state_dir: Path,
                   forks: int) -> None:
    """Start a new attempt of a FAILED or CANCELLED job on the same nodes (or without some).

    Every rank restarts with the trainer's --resume (it continues from the newest checkpoint
    complete on every rank); the logs of all attempts stay in each rank's stdout.log and
    `status --json` counts the attempts. Refused while any rank of the job still runs.

    \b
    With --exclude-node NODE (data-parallel jobs): the job is re-planned on the other nodes,
    DP recomputed, ranks renumbered, the output says what happens to the global batch.
    """
    from orchestrator.backends import job_group
    from orchestrator.config.presets import load_job_spec
    from orchestrator.job.lifecycle import resume_job

    policy = wait_policy(max_restarts, exclude_after, restart_codes, stall_timeout,
                         node_lost_timeout)
    store, record, inv = record_and_inventory(state_dir, job_id, inventory_path)
    with job_group(record, inv, forks=forks) as group:
        try:
            if exclude:
                from orchestrator.job.exclude import plan_exclusion, relaunch_without

                excl = plan_exclusion(record, load_job_spec(record.preset, record.overrides),
                                      exclude, keep_global_batch=global_batch == "keep")
                record = relaunch_without(record, group, store, excl, click.echo)
            else:
                record = resume_job(record, group, store)
        except KeyboardInterrupt:
            click.echo(f"job {record.job_id} cancelled: nothing left running", err=True)
            sys.exit(130)
        click.echo(f"job {record.job_id} attempt {record.attempts} running on "
                   f"{len(record.nodes)} node(s). Follow it with `orchestrate status --watch "
                   f"{record.job_id}`.")
        if wait:
            spec = load_job_spec(record.preset, record.overrides)
            recheck = rechecker(group, spec, record.mode, record.sched_port, False)
            watch_job(record, group, store, policy, recheck, guard_on_detach=not no_guard)
        elif not no_guard:
            start_guard(store, record)


COMMANDS = (check_command, up_command, resume_command, status_command, logs_command, down_command,
            plot_command)
