"""Helpers shared by the job commands (jobs.py, job_view.py, job_down.py): options, record
lookup, the live watch of `status --watch` / `resume --wait`, and the background guard.

    orchestrate status --watch [JOB]
    orchestrate resume [JOB] [--wait]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

job_argument = click.argument("job_id", required=False, metavar="[JOB]")

no_guard_option = click.option(
    "--no-guard", is_flag=True,
    help="Without --wait: do not leave the background guard that stops the job on every node "
         "when a rank fails (then `status` or `down` does it).")


def store_for(state_dir: Path) -> Any:
    from orchestrator.job.state import JobStore

    return JobStore(state_dir)


def record_and_inventory(state_dir: Path, job_id: str | None,
                         inventory_path: Path | None) -> tuple[Any, Any, Any]:
    """The store, the job's record (latest when no id) and the inventory to reach it with."""
    from orchestrator.config.inventory import load_inventory

    store = store_for(state_dir)
    record = store.load(store.resolve(job_id))
    inv = load_inventory(inventory_path or record.inventory_path)
    if inv.digest != record.inventory_digest:
        click.echo(f"warning: {inv.path} changed since job {record.job_id} started; "
                   "using its current entries for the job's nodes", err=True)
    check_local_nodes(record, inv)
    return store, record, inv


def check_local_nodes(record: Any, inv: Any) -> None:
    """JobError if a `connection: local` node's job folder in the record is not its own
    `<workdir>/jobs/<id>` (a planted record must not choose what runs on this machine)."""
    from orchestrator.config.inventory import Connection
    from orchestrator.job.statedir import check_local_job_dir

    if record.backend == "k8s":  # its job folders are in pods: nothing runs here
        return
    local = {n.name: n for n in inv.nodes if n.connection is Connection.LOCAL}
    for n in record.nodes:
        if n.name in local:
            check_local_job_dir(n.job_dir, str(local[n.name].workdir), record.job_id, n.name)


def job_inventory_option() -> Any:
    from orchestrator.cli.options import inventory_option

    return inventory_option(job=True)


def attempt_lines(record: Any) -> list[str]:
    """One line per finished attempt: status, resumed step, duration, cause."""
    lines = []
    for h in record.history:
        resumed = h.get("resumed_step")
        lines.append(f"attempt {h.get('attempt')}: {h.get('status')}"
                     + (f", resumed from step {resumed}" if resumed is not None else "")
                     + (f", {h.get('ended_at', 0) - h.get('started_at', 0):.0f} s")
                     + (f" - {h['cause']}" if h.get("cause") else ""))
    return lines


def start_guard(store: Any, record: Any) -> None:
    """Leave the job's background guard (job/guard.py) and say so."""
    from orchestrator.job.guard import spawn_guard

    pid = spawn_guard(store, record.job_id)
    click.echo(f"guard: pid {pid} stops job {record.job_id} on every node if a rank fails "
               f"(log {store.job_dir(record.job_id) / 'guard.log'})")


def launch_then(record: Any, group: Any, store: Any, follow: Any) -> None:
    """`up` after the record: stage + start through the job's backend (lifecycle.launch;
    Ctrl-C stops what was started, exit 130), say how to follow, then `follow(record)`."""
    from orchestrator.job.lifecycle import launch

    try:
        record = launch(record, group, store, echo=click.echo)
    except KeyboardInterrupt:
        click.echo(f"job {record.job_id} cancelled: nothing left running", err=True)
        sys.exit(130)
    click.echo(f"job {record.job_id} running. Follow it with `orchestrate status --watch "
               f"{record.job_id}`, stop it with `orchestrate down {record.job_id}`.")
    follow(record)


def detached_message(job_id: str) -> str:
    return (f"\ndetached; job {job_id} keeps running. Re-attach with "
            f"`orchestrate status --watch {job_id}`, stop it with `orchestrate down {job_id}`.")


def wait_options(f: Any) -> Any:
    """The options of the watch loop that acts (`up --wait`, `resume --wait`)."""
    opts = [
        click.option("--max-restarts", type=click.IntRange(0), default=0, show_default=True,
                     help="With --wait: when a rank fails, a node is lost or the job stalls, "
                          "stop it everywhere, re-check the nodes and relaunch with --resume "
                          "(newest checkpoint complete on every rank), at most N times."),
        click.option("--exclude-after", type=click.IntRange(0), default=0, show_default=True,
                     metavar="K",
                     help="With --max-restarts: leave out a node on which K attempts in a row "
                          "failed (data-parallel jobs: DP recomputed, global batch kept, as "
                          "`resume --exclude-node`); stop with the reason when the job cannot "
                          "run without it. 0: never."),
        click.option("--restart-on-exit-codes", "restart_codes", default=None,
                     metavar="CODES",
                     help="Only restart after these exit codes (comma-separated; default: "
                          "any)."),
        click.option("--stall-timeout", type=click.FloatRange(min=1), default=None,
                     metavar="SECONDS",
                     help="With --wait: no rank logging anything for this long is a failure "
                          "(STALLED; default 1800 s, first-step compile is long)."),
        click.option("--node-lost-timeout", type=click.FloatRange(min=0), default=60.0,
                     show_default=True, metavar="SECONDS",
                     help="With --wait: a node unreachable this long fails the job (then "
                          "restarts)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def wait_policy(max_restarts: int, exclude_after: int, restart_codes: str | None,
                stall_timeout: float | None, node_lost_timeout: float) -> Any:
    """The WatchPolicy of `--wait` from the wait_options values."""
    from orchestrator.job.stall import DEFAULT_STALL_TIMEOUT
    from orchestrator.job.watch import WatchPolicy

    codes = None
    if restart_codes is not None:
        try:
            codes = frozenset(int(c) for c in restart_codes.split(",") if c.strip())
        except ValueError:
            raise click.BadParameter(f"{restart_codes!r}: comma-separated integers expected",
                                     param_hint="--restart-on-exit-codes") from None
    return WatchPolicy(max_restarts=max_restarts, restart_on=codes,
                       stall_timeout=stall_timeout or DEFAULT_STALL_TIMEOUT,
                       node_lost_timeout=node_lost_timeout, exclude_after=exclude_after)


def watch_job(record: Any, group: Any, store: Any, policy: Any, recheck: Any = dict,
              guard_on_detach: bool = False) -> None:
    """Live progress until the job ends (job/watch.py); exit 1 unless it SUCCEEDED, 130 on
    Ctrl-C (which detaches, leaving the job's background guard when asked)."""
    from orchestrator.job.state import JobStatus
    from orchestrator.job.watch import watch

    try:
        click.echo(f"watching job {record.job_id} (Ctrl-C detaches; the job keeps running)",
                   err=True)
        record = watch(record, group, store, policy, recheck, echo=click.echo)
    except KeyboardInterrupt:
        now = store.load(record.job_id)
        if now.status is JobStatus.CANCELLED:
            click.echo(f"\njob {now.job_id} cancelled during a restart: nothing left running",
                       err=True)
        else:
            click.echo(detached_message(record.job_id), err=True)
            if guard_on_detach:
                start_guard(store, now)
        sys.exit(130)
    if len(record.history) > 1:
        for line in attempt_lines(record):
            click.echo(line)
    click.echo(f"job {record.job_id} {record.status.value}"
               + (f": {record.message}" if record.message else ""))
    warn_not_cleaned(record)
    if record.status is not JobStatus.SUCCEEDED:
        sys.exit(1)


def warn_not_cleaned(record: Any) -> None:
    """A FAILED job some node of which did not confirm the stop: say how to finish it."""
    from orchestrator.job.state import JobStatus

    if record.status is JobStatus.FAILED and not record.cleaned:
        click.echo(f"warning: not every node of job {record.job_id} confirmed the stop; run "
                   f"`orchestrate down {record.job_id}` (or `status`) when they answer",
                   err=True)
