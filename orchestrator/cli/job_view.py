"""Job commands that look at a running or ended job: status, logs, plot (issue #7, #9).

    orchestrate status [JOB] [--json] [--watch] [--stall-timeout S]
    orchestrate logs   [JOB] [--rank R | --node N] [--tail K] [--follow] [--fetch DIR]
    orchestrate status [JOB] --watch --json      # one JSON object per poll, one per line
    orchestrate status [JOB] --clean             # also stop what is left of a FAILED job
    orchestrate plot   [JOB] -o loss.png

JOB defaults to the latest job in the state dir.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from orchestrator.cli import options as flags
from orchestrator.cli.job_common import (
    attempt_lines,
    detached_message,
    job_argument,
    job_inventory_option,
    record_and_inventory,
    warn_not_cleaned,
)


@click.command("status")
@job_argument
@flags.json_option()
@click.option("--watch", is_flag=True,
              help="Keep polling with live progress until the job ends (with --json: one JSON "
                   "object per poll, one per line).")
@click.option("--interval", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
              metavar="SECONDS", help="With --watch: seconds between polls.")
@click.option("--stall-timeout", type=click.FloatRange(min=1), default=None, metavar="SECONDS",
              help="Report STALLED when ranks are alive but none logged for this long "
                   "(default 1800).")
@click.option("--clean", is_flag=True,
              help="Also stop whatever still runs of a FAILED job on every node that answers "
                   "(its guard, `up --wait` and `down` do this too).")
@job_inventory_option()
@flags.state_dir_option()
@flags.forks_option()
def status_command(job_id: str | None, as_json: bool, watch: bool, interval: float,
                   stall_timeout: float | None, clean: bool, inventory_path: Path | None,
                   state_dir: Path, forks: int) -> None:
    """Show a job's state, asked from the nodes (the record alone is never trusted).

    Per node and rank: running / exited(code), last step, loss and tokens/s from the
    trainer's log lines. The overall status is derived and written back to the record:
    STALLED when every rank is alive but silent for --stall-timeout s (with --watch too).
    `status` only reads: a FAILED job whose other ranks still run is reported, and stopped
    only with --clean (or by its guard, `down`, `up --wait`). JSON: job_id, status,
    attempts, failure (node, rank, exit_code, at, cause), history, and per node and rank
    state, exit_code, step, loss.
    """
    from orchestrator.backends import job_group
    from orchestrator.job.progress import refresh
    from orchestrator.job.stall import DEFAULT_STALL_TIMEOUT
    from orchestrator.job.state import JobStatus
    from orchestrator.job.teardown import running_slots, stop_failed_job

    store, record, inv = record_and_inventory(state_dir, job_id, inventory_path)
    timeout = stall_timeout or DEFAULT_STALL_TIMEOUT
    with job_group(record, inv, forks=forks) as group:
        if watch:
            _watch_status(record, group, store, timeout, interval, as_json)
            return
        record, reports = refresh(record, group, store, stall_timeout=timeout)
        if clean and record.status is JobStatus.FAILED and not record.cleaned:
            alive = running_slots(reports)
            record = stop_failed_job(record, group, store, reports)
            if alive:
                click.echo(f"job {record.job_id} FAILED ({record.message}): stopped "
                           f"{', '.join(alive[:8])}{' ...' if len(alive) > 8 else ''}",
                           err=True)
                record, reports = refresh(record, group, store)
    _print_status(record, reports, as_json)


def _status_doc(record: Any, reports: Any) -> dict[str, Any]:
    from orchestrator.job.progress import status_json

    doc = status_json(record, reports)
    doc["history"] = [dict(h) for h in record.history]
    doc["cleaned"] = record.cleaned
    return doc


def _print_status(record: Any, reports: Any, as_json: bool) -> None:
    from orchestrator.job.teardown import running_slots

    if as_json:
        click.echo(json.dumps(_status_doc(record, reports), indent=2))
        return
    from rich.console import Console

    from orchestrator.job.progress import status_table

    Console().print(status_table(record, reports))
    for line in attempt_lines(record):
        click.echo(line)
    alive = running_slots(reports)
    if record.status.is_terminal() and alive:
        click.echo(f"warning: job {record.job_id} is {record.status.value} but "
                   f"{', '.join(alive[:8])} still run; stop them with "
                   f"`orchestrate down {record.job_id}` (or `status --clean`)", err=True)


def _watch_status(record: Any, group: Any, store: Any, stall_timeout: float, interval: float,
                  as_json: bool) -> None:
    """`status --watch`: the watch loop that only looks (job/watch.py, act=False)."""
    from orchestrator.job.state import JobStatus
    from orchestrator.job.watch import WatchPolicy, watch

    def one_line(rec: Any, reports: Any) -> None:
        click.echo(json.dumps(_status_doc(rec, reports)))

    policy = WatchPolicy(act=False, stall_timeout=stall_timeout, interval=interval)
    try:
        record = watch(record, group, store, policy, echo=click.echo,
                       show=one_line if as_json else None)
    except KeyboardInterrupt:
        click.echo(detached_message(record.job_id), err=True)
        sys.exit(130)
    if not as_json:
        click.echo(f"job {record.job_id} {record.status.value}"
                   + (f": {record.message}" if record.message else ""))
        warn_not_cleaned(record)
    if record.status is not JobStatus.SUCCEEDED:
        sys.exit(1)


@click.command("logs", cls=flags.RenamedOptions, renamed={"-f": "--follow"})
@job_argument
@click.option("--rank", "-r", type=int, default=None, help="Only this global rank.")
@click.option("--node", "-n", default=None, help="Only this node (name or host).")
@click.option("--tail", "-t", "tail", type=click.IntRange(0), default=20, show_default=True,
              help="Lines per rank to show first.")
@click.option("--follow", is_flag=True, help="Keep printing new lines (Ctrl-C to stop).")
@click.option("--fetch", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Download every rank's log (and plog folders) into DIR/<node>/ instead.")
@flags.forks_option()
@job_inventory_option()
@flags.state_dir_option()
def logs_command(job_id: str | None, rank: int | None, node: str | None, tail: int,
                 follow: bool, fetch: Path | None, forks: int, inventory_path: Path | None,
                 state_dir: Path) -> None:
    """Show or fetch the ranks' logs of a job; lines are prefixed `[node/rank]`."""
    from orchestrator.job.logs import Selection

    if rank is not None and node is not None:
        raise click.UsageError("give --rank or --node, not both")
    from orchestrator.remote.group import NodeGroup

    _, record, inv = record_and_inventory(state_dir, job_id, inventory_path)
    if record.backend == "k8s":  # the pods' logs, from the API server
        from orchestrator.cli.k8s import logs_k8s

        if rank is not None or node is not None or follow or fetch is not None:
            raise click.UsageError("logs of a Kubernetes job: every pod's last --tail lines "
                                   "(no --rank, --node, --follow, --fetch)")
        return logs_k8s(record, tail)
    sel = Selection(rank=rank, node=node)
    with NodeGroup(inv, [inv.node(n.name) for n in record.nodes], forks=forks) as group:
        _logs(record, group, sel, tail, follow, fetch)


def _logs(record: Any, group: Any, sel: Any, tail: int, follow: bool,
          fetch: Path | None) -> None:
    from orchestrator.errors import JobError
    from orchestrator.job.logs import fetch_logs, tail_logs

    if fetch is not None:
        results = fetch_logs(record, group, fetch, sel, warn=lambda m: click.echo(m, err=True))
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
        for line in tail_logs(record, group, sel, tail=tail, follow=follow,
                              on_error=lambda m: click.echo(m, err=True)):
            click.echo(line)
    except KeyboardInterrupt:
        sys.exit(130)


@click.command("plot")
@job_argument
@click.option("--output", "-o", type=click.Path(path_type=Path), default=Path("loss.png"),
              show_default=True, help="Image file to write (png, svg, pdf).")
@job_inventory_option()
@flags.state_dir_option()
def plot_command(job_id: str | None, output: Path, inventory_path: Path | None,
                 state_dir: Path) -> None:
    """Plot loss (and tokens/s) against step from the ranks' log lines."""
    from orchestrator.backends import need_node_files
    from orchestrator.job.plot import plot_job
    from orchestrator.remote.group import NodeGroup

    _, record, inv = record_and_inventory(state_dir, job_id, inventory_path)
    need_node_files(record, "plot")
    with NodeGroup(inv, [inv.node(n.name) for n in record.nodes]) as group:
        path = plot_job(record, group, output)
    click.echo(f"wrote {path}")


COMMANDS = (status_command, logs_command, plot_command)
