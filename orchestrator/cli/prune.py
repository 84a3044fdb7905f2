"""`orchestrate prune`: what `up` cached on the nodes and locally, removed when no kept job
uses it (a dry run unless --yes).

    orchestrate prune -i inventories/12node.yaml               # what would go, per node
    orchestrate prune -i inventories/12node.yaml --yes         # remove it
    orchestrate prune -i INV --keep 1 --job-folders --yes      # and old jobs' folders
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import click

from orchestrator.cli import options as flags

DEFAULT_KEEP = 3  # ended jobs kept besides the live ones: the last few stay resumable


@click.command("prune")
@flags.inventory_option()
@click.option("--keep", type=click.IntRange(0), default=DEFAULT_KEEP, show_default=True,
              metavar="N", help="Ended jobs kept besides those that may still run: the N "
                                "newest. Their trees, skeletons, blobs and data stay.")
@click.option("--keep-job", "pinned", multiple=True, metavar="JOB",
              help="Keep this job too, however old. Repeatable.")
@click.option("--job-folders", "drop_jobs", is_flag=True,
              help="Also remove the job folders (logs, checkpoints) of ended jobs beyond "
                   "--keep; a folder holding checkpoints stays unless the job was collected "
                   "(collect-ckpt) or --include-output is given.")
@click.option("--include-output", is_flag=True,
              help="With --job-folders: remove folders holding checkpoints that were never "
                   "collected.")
@click.option("--grace", type=click.IntRange(0), default=None,
              show_default="60, the age at which a stage removes leftovers", metavar="MINUTES",
              help="Leave anything changed or linked this recently (a stage in progress may "
                   "be using it).")
@click.option("--yes", "-y", is_flag=True, help="Remove (without it: only say what would go).")
@flags.state_dir_option()
@flags.forks_option()
def prune_command(inventory_path: Path, keep: int, pinned: tuple[str, ...], drop_jobs: bool,
                  include_output: bool, grace: int | None, yes: bool, state_dir: Path,
                  forks: int) -> None:
    """Remove what `up` cached and no kept job uses: per node, the cached trees, job
    skeletons and blobs under the workdir, interrupted stages' temp names; locally, the
    prepared-data cache entries. A dry run unless --yes.

    \b
    Kept: every job that may still run (not ended, or ended without every node confirming
    the stop), the --keep newest other jobs, and each --keep-job. A job folder on a node with
    no record here is never judged, and what it holds stays. A node where a job is running
    is left alone; a node that fails does not stop the others (exit 1 at the end).
    \b
      orchestrate prune -i inventories/12node.yaml            # what would go, with bytes
      orchestrate prune -i inventories/12node.yaml --yes      # remove it
      orchestrate prune -i INV --keep 1 --job-folders --yes          # and older job folders
      orchestrate prune -i INV --job-folders --include-output --yes  # even uncollected checkpoints
    Bytes are file data actually freed: a cached file still linked from a job folder that
    stays frees nothing until that folder goes (--job-folders).
    """
    from orchestrator.ckpt.output import collected_for_job
    from orchestrator.config.inventory import load_inventory
    from orchestrator.errors import CheckpointError, JobError
    from orchestrator.job.prune import prune_local, prune_on, select
    from orchestrator.job.stage_first import LEFTOVER_AGE_MIN
    from orchestrator.job.state import JobStore
    from orchestrator.remote.group import NodeGroup, cause

    if include_output and not drop_jobs:
        raise click.UsageError("--include-output goes with --job-folders")
    grace_min = LEFTOVER_AGE_MIN if grace is None else grace

    def collected(job_id: str) -> bool:
        if include_output:
            return True
        try:
            collected_for_job(state_dir, job_id)
        except CheckpointError:
            return False
        return True

    store = JobStore(state_dir)
    inv = load_inventory(inventory_path)
    records = store.all()
    sel = select(records, keep, pinned, drop_jobs, collected)
    click.echo(f"keeping {len(sel.keep)} job(s)"
               + (f": {', '.join(sorted(sel.keep))}" if len(sel.keep) <= 8 else "")
               + (f"; the folders of {len(sel.drop)} other ended job(s) go (--job-folders)"
                  if sel.drop else ""))
    lock = threading.Lock()
    reports: list[Any] = []

    def on_done(name: str, value: object) -> None:
        with lock:
            if isinstance(value, BaseException):
                click.echo(f"[{name}] ERROR: {cause(value)}", err=True)
            else:
                reports.append(value)
                _show(value)

    with NodeGroup(inv, forks=forks) as group:
        result = group.map(lambda t: prune_on(t, sel, yes, grace_min), on_done=on_done)
    local = prune_local(store.data_cache, records, sel, yes, grace_min)
    _show(local)
    reports.append(local)
    failed = [f"{n} ({cause(e)})" for n, e in result.failed.items()]
    failed += [r.where for r in reports if r.errors]
    total = sum(r.freed for r in reports)
    n = sum(len(r.entries) for r in reports)
    click.echo(f"{'freed' if yes else 'would free'} {_bytes(total)} ({n} entries) on "
               f"{len(result.succeeded)} node(s) and locally"
               + ("" if yes or not n else "; run again with --yes to remove"))
    if failed:
        raise JobError(f"prune failed on: {'; '.join(failed)}")


def _bytes(n: int) -> str:
    from orchestrator.ckpt.collect import human_bytes

    return human_bytes(n)


def _show(r: Any) -> None:
    """One node's (or the local cache's) outcome: a summary line, then each entry but blobs."""
    from orchestrator.untrusted import scrub

    tag = f"[{r.where}]"
    if r.absent:
        click.echo(f"{tag} nothing to prune ({scrub(r.folder)} does not exist)")
        return
    if r.busy is not None:
        click.echo(f"{tag} skipped: job {scrub(r.busy)} is running there (prune it after "
                   "`orchestrate down`, or when it ended)")
        return
    counts: dict[str, int] = {}
    for e in r.entries:
        counts[e.kind] = counts.get(e.kind, 0) + 1
    what = ", ".join(f"{v} {k}{'s' if v > 1 else ''}" for k, v in counts.items()) or "nothing"
    verb = "removed" if r.removed else "would remove"
    click.echo(f"{tag} {verb} {what}: {_bytes(r.freed)} freed in {scrub(r.folder)}"
               + (f" ({r.recent} recent entries left, --grace)" if r.recent else ""))
    for e in r.entries:
        if e.kind != "blob":
            click.echo(f"{tag}   {e.kind:9} {scrub(e.name)}  {_bytes(e.bytes)}")
    for job_id, why in r.refused:
        click.echo(f"{tag}   kept job {scrub(job_id)}: {scrub(why)}")
    if r.unknown_jobs:
        names = ", ".join(scrub(j) for j in r.unknown_jobs[:5])
        click.echo(f"{tag}   left alone: {len(r.unknown_jobs)} job folder(s) without a record "
                   f"here ({names}{', ...' if len(r.unknown_jobs) > 5 else ''})")
    for entry, why in r.errors[:10]:
        click.echo(f"{tag} ERROR: could not remove {scrub(entry)}: {scrub(why)}", err=True)
    sys.stdout.flush()


COMMANDS = (prune_command,)
