"""`orchestrate down [JOB] [--all] [--yes] [--save]`: stop a job on every node (issue #7, #9, #16).

    orchestrate down tiny-k3f9 --yes
    orchestrate down tiny-k3f9 --save --yes   # every rank saves the same step, then exits
    orchestrate down --all --yes     # every job not ended, and every ended job not yet clean
"""

from __future__ import annotations

from pathlib import Path

import click

from orchestrator.cli import options as flags
from orchestrator.cli.job_common import (
    check_local_nodes,
    job_argument,
    job_inventory_option,
    store_for,
)


@click.command("down")
@job_argument
@click.option("--all", "all_jobs", is_flag=True,
              help="Every job in the state dir that may still have processes: not ended, or "
                   "ended (FAILED, or a down that missed a node) without every node "
                   "confirming the stop.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--save", is_flag=True,
              help="Ask the ranks to save a checkpoint at the next step and exit together "
                   "(the step is recorded; `orchestrate resume` continues from it); what is "
                   "still running after --save-timeout is stopped as without --save.")
@click.option("--save-timeout", type=click.FloatRange(min=0), default=300.0, show_default=True,
              metavar="SECONDS", help="How long --save waits for the ranks to save and exit.")
@job_inventory_option()
@flags.state_dir_option()
@flags.forks_option()
def down_command(job_id: str | None, all_jobs: bool, yes: bool, save: bool, save_timeout: float,
                 inventory_path: Path | None, state_dir: Path, forks: int) -> None:
    """Stop a job on every node and verify nothing of it is left; mark it CANCELLED.

    JOB defaults to the latest job still running (else the latest job). A job that had
    already ended keeps its outcome (SUCCEEDED / FAILED) and is marked clean.

    Stop the job's background guard, SIGTERM each rank's process group, wait, SIGKILL what
    is left, then kill anything still carrying the job's id. Idempotent. Unreachable nodes
    are named (exit 1); run `down` again once they are back (`down --all` finds them).

    With --save, first ask the ranks to save at the next step boundary and exit 0 together
    (a stop-request file every rank polls, agreed with an all-reduce), wait up to
    --save-timeout s, then stop as above; the record says CANCELLED and which step was saved
    on every rank.
    """
    from orchestrator.config.inventory import load_inventory
    from orchestrator.errors import JobError
    from orchestrator.job.graceful import save_and_stop
    from orchestrator.job.guard import stop_guard
    from orchestrator.job.state import needs_stop
    from orchestrator.job.teardown import stop_job
    from orchestrator.remote.group import NodeGroup

    store = store_for(state_dir)
    if all_jobs:
        if job_id:
            raise click.UsageError("give JOB or --all, not both")
        targets = [r for r in store.all() if needs_stop(r)]
        if not targets:
            click.echo("nothing to stop: every job ended and every node confirmed it")
            return
    else:
        targets = [store.load(store.resolve(job_id, prefer_live=True))]
    names = ", ".join(f"{r.job_id} ({r.status.value})" for r in targets)
    if not yes and not click.confirm(f"stop {names}?", default=False):
        raise click.Abort()
    unreachable = []
    for record in targets:
        stop_guard(store, record.job_id)
        inv = load_inventory(inventory_path or record.inventory_path)
        check_local_nodes(record, inv)
        with NodeGroup(inv, [], forks=forks) as group:  # job nodes and strays, on first use
            if save:
                record, failed = save_and_stop(record, group, store, save_timeout)
            else:
                record, failed = stop_job(record, group, store)
        for name, exc in failed.items():
            click.echo(f"[{name}] not cleaned: {exc}", err=True)
            unreachable.append(f"{record.job_id}@{name}")
        click.echo(f"job {record.job_id} {record.status.value}"
                   + (f" ({len(record.nodes) - len(failed)} of {len(record.nodes)} node(s) "
                      "cleaned)" if failed else "")
                   + (f": {record.message}" if save and record.message else ""))
    if unreachable:
        raise JobError(f"could not stop on: {', '.join(unreachable)} (run `orchestrate down` "
                       "again when reachable)")


COMMANDS = (down_command,)
