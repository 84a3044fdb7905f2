"""Job lifecycle commands: check, up, status, logs, down, plot (issue #7).

    orchestrate check  --inventory inventories/12node.yaml --config 65b
    orchestrate up     --inventory inventories/local.yaml --config tiny --wait
    orchestrate resume [JOB] [--wait]
    orchestrate status [JOB] [--json] [--watch]
    orchestrate logs   [JOB] [--rank R | --node N] [--tail K] [--follow] [--fetch DIR]
    orchestrate down   [JOB] [--all] [--yes]
    orchestrate plot   [JOB] -o loss.png

JOB defaults to the latest job in the state dir.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from orchestrator import flags

job_argument = click.argument("job_id", required=False, metavar="[JOB]")


def _store(state_dir: Path) -> Any:
    from orchestrator.jobs.state import JobStore

    return JobStore(state_dir)


def _record_and_inventory(state_dir: Path, job_id: str | None,
                          inventory_path: Path | None) -> tuple[Any, Any, Any]:
    from orchestrator.inventory import load_inventory

    store = _store(state_dir)
    record = store.load(store.resolve(job_id))
    inv = load_inventory(inventory_path or record.inventory_path)
    if inv.digest != record.inventory_digest:
        click.echo(f"warning: {inv.path} changed since job {record.job_id} started; "
                   "using its current entries for the job's nodes", err=True)
    return store, record, inv


def _job_inventory_option() -> Any:
    return click.option("--inventory", "-i", "inventory_path", type=click.Path(path_type=Path),
                        default=None,
                        help="Inventory to reach the nodes with (default: the job's own).")


def _print_check(report: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="orchestrate check", title_justify="left")
    table.add_column("node")
    for c in report.columns:
        table.add_column(c)
    for n in report.nodes:
        items = {i.name: i for i in n.items}
        cells = []
        for c in report.columns:
            i = items.get(c)
            color = "green" if i is not None and i.ok else "red"
            cells.append("" if i is None else f"[{color}]{i.value}[/]")
        table.add_row(n.node, *cells)
    Console().print(table)
    for node, item in report.failures:
        click.echo(f"[{node}] {item.name}: {item.value} -> {item.fix}", err=True)


def _run_check(inv: Any, spec: Any, mode: str, sched_port: int | None, forks: int,
               conns: Any = None) -> Any:
    from orchestrator.jobs.check import check_nodes

    target = str(spec.value("train.device_target")) if spec is not None else "CPU"
    return check_nodes(inv, device_target=target, mode=mode, sched_port=sched_port, forks=forks,
                       conns=conns)


mode_option = click.option("--mode", type=click.Choice(["ranktable", "msrun"]), default=None,
                           help="Launch mode (default: ranktable for Ascend, msrun otherwise).")
sched_port_option = click.option("--sched-port", type=click.IntRange(1, 65535), default=None,
                                 help="msrun: scheduler port on the first node in rank order "
                                      "(default for up: 20000-29999, derived from the job id; "
                                      "check: skip the port check unless given).")


@click.command("check")
@flags.inventory_option()
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
    from orchestrator.errors import JobError
    from orchestrator.inventory import load_inventory
    from orchestrator.presets import load_job_spec
    from orchestrator.render import default_mode

    inv = load_inventory(inventory_path)
    spec = load_job_spec(preset, overrides) if preset else None
    mode = mode or default_mode(str(spec.value("train.device_target")) if spec else "CPU")
    report = _run_check(inv, spec, mode, sched_port, forks)
    _print_check(report)
    if not report.ok:
        raise JobError(f"{len(report.failures)} check(s) failed")


@click.command("up")
@flags.inventory_option()
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
@sched_port_option
@click.option("--cluster-timeout", type=click.IntRange(1), default=7200, show_default=True,
              help="msrun: seconds the dynamic cluster waits for all ranks (MS_TOPO_TIMEOUT).")
@click.option("--stop-grace", type=click.IntRange(0), default=10, show_default=True,
              help="Seconds between SIGTERM and SIGKILL when ranks are stopped.")
@click.option("--entrypoint", default=None, hidden=True,
              help="Shell command each rank runs instead of the bundled trainer (tests, bench).")
@click.option("--max-restarts", type=click.IntRange(0), default=0, show_default=True,
              help="With --wait: when a rank fails or the job stalls, stop it everywhere, "
                   "re-check the nodes and relaunch with --resume (newest checkpoint complete "
                   "on every rank), at most N times.")
@click.option("--restart-on-exit-codes", "restart_codes", default=None, metavar="CODES",
              help="Only restart after these exit codes (comma-separated; default: any).")
@click.option("--stall-timeout", type=click.FloatRange(min=1), default=None, metavar="SECONDS",
              help="With --wait: no rank logging anything for this long is a failure "
                   "(STALLED; default 1800 s, first-step compile is long).")
@click.option("--node-lost-timeout", type=click.FloatRange(min=0), default=60.0,
              show_default=True, metavar="SECONDS",
              help="With --wait: a node unreachable this long fails the job (then restarts).")
@flags.state_dir_option()
@flags.forks_option()
def up_command(inventory_path: Path, preset: str, overrides: tuple[str, ...], mode: str | None,
               wait: bool, no_check: bool, dry_run: bool, sched_port: int | None,
               cluster_timeout: int,
               stop_grace: int, entrypoint: str | None, max_restarts: int,
               restart_codes: str | None, stall_timeout: float | None,
               node_lost_timeout: float, state_dir: Path, forks: int) -> None:
    """Plan, stage and start a training job on every node.

    check -> plan -> rank table -> render -> stage -> start -> record. Each node gets
    `<workdir>/jobs/<job id>/` with launch.sh, job.yaml, the rank table, the `model`
    package as code/ (files whose sha256 the node already has are not sent) and env.sh
    (inventory `env:`, mode 0600). Every rank runs detached in its own process group; a
    per-node supervisor stops the node's other ranks when one exits non-zero. If a node
    fails to stage or start, or Ctrl-C arrives first, the job is stopped everywhere.

    \b
    Data: --set data.path=PATH where PATH is
      an Alpaca JSON file   prepared to MindRecord here, then staged as data/<name>
      a local folder        (MindRecord, from `orchestrate prepare-data`) staged as is
      a path on the nodes   used as is; or give `data_dir:` per node in the inventory

    \b
    Example (this machine, 2 CPU ranks, the tiny preset, which trains on the shipped
    model/assets/alpaca_seed_tasks.json unless data.path is set):
      orchestrate up -i inventories/local.yaml -c tiny --wait
    """
    from orchestrator.errors import JobError
    from orchestrator.inventory import load_inventory
    from orchestrator.jobs.lifecycle import UpOptions, create_job, dry_run_summary, launch
    from orchestrator.presets import load_job_spec
    from orchestrator.render import default_mode

    inv = load_inventory(inventory_path)
    spec = load_job_spec(preset, overrides)
    if entrypoint is None and not spec.value("data.path") and any(
            n.data_dir is None for n in inv.nodes):
        raise JobError(f"data.path is empty in preset {preset}: the trainer needs a dataset. "
                       "Pass --set data.path=alpaca.json (prepared to MindRecord here and "
                       "staged) or a MindRecord folder (`orchestrate prepare-data`; a local "
                       "folder is staged, a path that exists only on the nodes is used as is)")
    store = _store(state_dir)
    mode = mode or default_mode(str(spec.value("train.device_target")))
    opts = UpOptions(mode=mode, sched_port=sched_port, cluster_timeout=cluster_timeout,
                     entrypoint=entrypoint, stop_grace=stop_grace, forks=forks)
    if dry_run:
        record = create_job(inv, spec, store, opts, discover=False)
        for line in dry_run_summary(record, store):
            click.echo(line)
        return
    from orchestrator.jobs.nodes import Connections

    # SSH handshakes run in the background while the job is planned and rendered.
    with Connections(inv, inv.in_rank_order(), forks) as conns:
        record = create_job(inv, spec, store, opts)
        if not no_check:
            report = _run_check(inv, spec, mode, record.sched_port, forks, conns)
            if not report.ok:
                _print_check(report)
                store.save(record.with_status(_failed(), "check failed"))
                raise JobError(f"check failed on {len({n for n, _ in report.failures})} "
                               "node(s); nothing was started (fix, or skip with --no-check)")
        click.echo(f"job {record.job_id}: {record.world_size} ranks on {len(record.nodes)} "
                   f"node(s), {record.mode} mode")
        try:
            record = launch(record, inv, store, forks=forks, echo=click.echo, conns=conns)
        except KeyboardInterrupt:
            click.echo(f"job {record.job_id} cancelled: nothing left running", err=True)
            sys.exit(130)
        click.echo(f"job {record.job_id} running. Follow it with `orchestrate status --watch "
                   f"{record.job_id}`, stop it with `orchestrate down {record.job_id}`.")
        if wait:
            from orchestrator.jobs.restart import RestartPolicy
            from orchestrator.jobs.stall import DEFAULT_STALL_TIMEOUT

            policy = RestartPolicy(max_restarts=max_restarts,
                                   restart_on=_exit_codes(restart_codes),
                                   stall_timeout=stall_timeout or DEFAULT_STALL_TIMEOUT,
                                   node_lost_timeout=node_lost_timeout)

            def recheck() -> str | None:
                if no_check:
                    return None
                report = _run_check(inv, spec, mode, record.sched_port, forks, conns)
                return None if report.ok else "; ".join(
                    f"[{n}] {i.name}: {i.value}" for n, i in report.failures)

            _wait_restarting(record, inv, store, forks, policy, recheck, conns)


def _exit_codes(text: str | None) -> frozenset[int] | None:
    if text is None:
        return None
    try:
        return frozenset(int(c) for c in text.split(",") if c.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r}: comma-separated integers expected",
                                 param_hint="--restart-on-exit-codes") from None


def _wait_restarting(record: Any, inv: Any, store: Any, forks: int, policy: Any,
                     recheck: Any, conns: Any) -> None:
    """`up --wait`: watch with stall detection and restarts (jobs/restart.py)."""
    from orchestrator.jobs.restart import supervise
    from orchestrator.jobs.state import JobStatus

    try:
        record = supervise(record, inv, store, policy, recheck, forks, conns, echo=click.echo)
    except KeyboardInterrupt:
        now = store.load(record.job_id)
        if now.status is JobStatus.CANCELLED:
            click.echo(f"\njob {now.job_id} cancelled during a restart: nothing left running",
                       err=True)
        else:
            click.echo(f"\ndetached; job {record.job_id} keeps running. Re-attach with "
                       f"`orchestrate status --watch {record.job_id}`, stop it with "
                       f"`orchestrate down {record.job_id}`.", err=True)
        sys.exit(130)
    if len(record.history) > 1:
        for line in _attempt_lines(record):
            click.echo(line)
    click.echo(f"job {record.job_id} {record.status.value}"
               + (f": {record.message}" if record.message else ""))
    if record.status is not JobStatus.SUCCEEDED:
        sys.exit(1)


def _attempt_lines(record: Any) -> list[str]:
    lines = []
    for h in record.history:
        resumed = h.get("resumed_step")
        lines.append(f"attempt {h.get('attempt')}: {h.get('status')}"
                     + (f", resumed from step {resumed}" if resumed is not None else "")
                     + (f", {h.get('ended_at', 0) - h.get('started_at', 0):.0f} s")
                     + (f" - {h['cause']}" if h.get("cause") else ""))
    return lines


def _failed() -> Any:
    from orchestrator.jobs.state import JobStatus

    return JobStatus.FAILED


def _wait(record: Any, inv: Any, store: Any, forks: int, teardown: bool = True,
          conns: Any = None) -> None:
    from orchestrator.jobs.progress import watch
    from orchestrator.jobs.state import JobStatus

    try:
        record = watch(record, inv, store, teardown=teardown, forks=forks, conns=conns)
    except KeyboardInterrupt:
        click.echo(f"\ndetached; job {record.job_id} keeps running. Re-attach with "
                   f"`orchestrate status --watch {record.job_id}`, stop it with "
                   f"`orchestrate down {record.job_id}`.", err=True)
        sys.exit(130)
    click.echo(f"job {record.job_id} {record.status.value}"
               + (f": {record.message}" if record.message else ""))
    if record.status is not JobStatus.SUCCEEDED:
        sys.exit(1)


@click.command("resume")
@job_argument
@click.option("--wait", is_flag=True, help="Show live progress until the job ends (as `up`).")
@_job_inventory_option()
@flags.state_dir_option()
@flags.forks_option()
def resume_command(job_id: str | None, wait: bool, inventory_path: Path | None, state_dir: Path,
                   forks: int) -> None:
    """Start a new attempt of a FAILED or CANCELLED job on the same nodes.

    Every rank restarts with the trainer's --resume (it continues from the newest checkpoint
    complete on every rank); the logs of all attempts stay in each rank's stdout.log and
    `status --json` counts the attempts. Refused while any rank of the job still runs.
    """
    from orchestrator.jobs.lifecycle import resume_job
    from orchestrator.jobs.nodes import Connections

    store, record, inv = _record_and_inventory(state_dir, job_id, inventory_path)
    with Connections(inv, [inv.node(n.name) for n in record.nodes], forks) as conns:
        try:
            record = resume_job(record, inv, store, forks, conns)
        except KeyboardInterrupt:
            click.echo(f"job {record.job_id} cancelled: nothing left running", err=True)
            sys.exit(130)
        click.echo(f"job {record.job_id} attempt {record.attempts} running. Follow it with "
                   f"`orchestrate status --watch {record.job_id}`.")
        if wait:
            _wait(record, inv, store, forks, conns=conns)


@click.command("status")
@job_argument
@flags.json_option()
@click.option("--watch", is_flag=True, help="Keep polling with live progress until the job ends.")
@click.option("--stall-timeout", type=click.FloatRange(min=1), default=None, metavar="SECONDS",
              help="Report STALLED when ranks are alive but none logged for this long "
                   "(default 1800).")
@_job_inventory_option()
@flags.state_dir_option()
@flags.forks_option()
def status_command(job_id: str | None, as_json: bool, watch: bool, stall_timeout: float | None,
                   inventory_path: Path | None, state_dir: Path, forks: int) -> None:
    """Show a job's state, asked from the nodes (the record alone is never trusted).

    Per node and rank: running / exited(code), last step, loss and tokens/s from the
    trainer's log lines. The overall status is derived and written back to the record.
    JSON: job_id, status, attempts, and per node and rank state, exit_code, step, loss.
    """
    from orchestrator.jobs.progress import refresh, status_json, status_table

    store, record, inv = _record_and_inventory(state_dir, job_id, inventory_path)
    if watch and not as_json:
        from orchestrator.jobs.nodes import Connections

        with Connections(inv, [inv.node(n.name) for n in record.nodes], forks) as conns:
            _wait(record, inv, store, forks, teardown=False, conns=conns)
        return
    record, reports = refresh(record, inv, store, forks)
    from orchestrator.jobs.state import JobStatus

    if record.status is JobStatus.RUNNING:
        from orchestrator.jobs.stall import DEFAULT_STALL_TIMEOUT, find_stall, last_output

        cause = find_stall(record, reports, last_output(record, inv, forks),
                           stall_timeout or DEFAULT_STALL_TIMEOUT)
        if cause:
            record = record.with_status(JobStatus.STALLED, cause)
            store.save(record)
    if as_json:
        doc = status_json(record, reports)
        doc["history"] = [dict(h) for h in record.history]
        click.echo(json.dumps(doc, indent=2))
        return
    from rich.console import Console

    Console().print(status_table(record, reports))
    for line in _attempt_lines(record):
        click.echo(line)
    if record.status.is_terminal():
        alive = [f"{name}/{s.slot}" for name, r in reports.items()
                 if not isinstance(r, BaseException) for s in r.slots if s.state == "running"]
        if alive:
            click.echo(f"warning: job {record.job_id} is {record.status.value} but "
                       f"{', '.join(alive[:8])} still run; stop them with "
                       f"`orchestrate down {record.job_id}`", err=True)


@click.command("logs")
@job_argument
@click.option("--rank", "-r", type=int, default=None, help="Only this global rank.")
@click.option("--node", "-n", default=None, help="Only this node (name or host).")
@click.option("--tail", "-t", "tail", type=click.IntRange(0), default=20, show_default=True,
              help="Lines per rank to show first.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines (Ctrl-C to stop).")
@click.option("--fetch", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Download every rank's log (and plog folders) into DIR/<node>/ instead.")
@_job_inventory_option()
@flags.state_dir_option()
def logs_command(job_id: str | None, rank: int | None, node: str | None, tail: int,
                 follow: bool, fetch: Path | None, inventory_path: Path | None,
                 state_dir: Path) -> None:
    """Show or fetch the ranks' logs of a job; lines are prefixed `[node/rank]`."""
    from orchestrator.errors import JobError
    from orchestrator.jobs.logs import Selection, fetch_logs, tail_logs

    if rank is not None and node is not None:
        raise click.UsageError("give --rank or --node, not both")
    _, record, inv = _record_and_inventory(state_dir, job_id, inventory_path)
    sel = Selection(rank=rank, node=node)
    if fetch is not None:
        results = fetch_logs(record, inv, fetch, sel)
        failed = []
        for name, r in results.items():
            if isinstance(r, BaseException):
                failed.append(name)
                click.echo(f"[{name}] {r}", err=True)
            else:
                click.echo(f"[{name}] {len(r)} file(s) -> {fetch / name}")
        if failed:
            raise JobError(f"could not fetch logs from {', '.join(failed)}")
        return
    try:
        for line in tail_logs(record, inv, sel, tail=tail, follow=follow,
                              on_error=lambda m: click.echo(m, err=True)):
            click.echo(line)
    except KeyboardInterrupt:
        sys.exit(130)


@click.command("down")
@job_argument
@click.option("--all", "all_jobs", is_flag=True, help="Every job in the state dir not yet ended.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@_job_inventory_option()
@flags.state_dir_option()
@flags.forks_option()
def down_command(job_id: str | None, all_jobs: bool, yes: bool, inventory_path: Path | None,
                 state_dir: Path, forks: int) -> None:
    """Stop a job on every node and verify nothing of it is left; mark it CANCELLED.

    JOB defaults to the latest job still running (else the latest job).

    SIGTERM each rank's process group, wait, SIGKILL what is left, then kill anything
    still carrying the job's id. Idempotent. Unreachable nodes are named (exit 1);
    run `down` again once they are back.
    """
    from orchestrator.errors import JobError
    from orchestrator.inventory import load_inventory
    from orchestrator.jobs.lifecycle import stop_job

    store = _store(state_dir)
    if all_jobs:
        if job_id:
            raise click.UsageError("give JOB or --all, not both")
        targets = [r for r in store.all() if not r.status.is_terminal()]
        if not targets:
            click.echo("no running jobs")
            return
    else:
        targets = [store.load(store.resolve(job_id, prefer_live=True))]
    names = ", ".join(r.job_id for r in targets)
    if not yes and not click.confirm(f"stop {names}?", default=False):
        raise click.Abort()
    unreachable = []
    for record in targets:
        inv = load_inventory(inventory_path or record.inventory_path)
        record, failed = stop_job(record, inv, store, forks)
        for name, exc in failed.items():
            click.echo(f"[{name}] not cleaned: {exc}", err=True)
            unreachable.append(f"{record.job_id}@{name}")
        click.echo(f"job {record.job_id} {record.status.value}"
                   + (f" ({len(record.nodes) - len(failed)} of {len(record.nodes)} node(s) "
                      "cleaned)" if failed else ""))
    if unreachable:
        raise JobError(f"could not stop on: {', '.join(unreachable)} (run `orchestrate down` "
                       "again when reachable)")


@click.command("plot")
@job_argument
@click.option("--output", "-o", type=click.Path(path_type=Path), default=Path("loss.png"),
              show_default=True, help="Image file to write (png, svg, pdf).")
@_job_inventory_option()
@flags.state_dir_option()
def plot_command(job_id: str | None, output: Path, inventory_path: Path | None,
                 state_dir: Path) -> None:
    """Plot loss (and tokens/s) against step from the ranks' log lines."""
    from orchestrator.jobs.plot import plot_job

    _, record, inv = _record_and_inventory(state_dir, job_id, inventory_path)
    path = plot_job(record, inv, output)
    click.echo(f"wrote {path}")


COMMANDS = (check_command, up_command, resume_command, status_command, logs_command, down_command,
            plot_command)
