"""`orchestrate resume`, and the registry of every job command: check lives in job_check.py,
up in job_up.py, status / logs / plot in job_view.py, down in job_down.py.

    orchestrate check  --inventory inventories/12node.yaml --config 65b
    orchestrate up     --inventory inventories/local.yaml --config tiny --wait
    orchestrate resume [JOB] [--wait]

JOB defaults to the latest job in the state dir.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from orchestrator.cli import options as flags
from orchestrator.cli.job_check import check_command, rechecker
from orchestrator.cli.job_common import (
    job_argument,
    job_inventory_option,
    no_guard_option,
    record_and_inventory,
    start_guard,
    wait_options,
    wait_policy,
    watch_job,
)
from orchestrator.cli.job_down import down_command
from orchestrator.cli.job_up import up_command
from orchestrator.cli.job_view import logs_command, plot_command, status_command


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
    from orchestrator.config.presets import load_job_spec
    from orchestrator.job.lifecycle import resume_job
    from orchestrator.remote.group import NodeGroup

    policy = wait_policy(max_restarts, exclude_after, restart_codes, stall_timeout,
                         node_lost_timeout)
    store, record, inv = record_and_inventory(state_dir, job_id, inventory_path)
    with NodeGroup(inv, [inv.node(n.name) for n in record.nodes], forks=forks) as group:
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
