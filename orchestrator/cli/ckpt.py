"""`orchestrate collect-ckpt` (issue #8).

orchestrate collect-ckpt [JOB] [-i inventories/local.yaml] [-o ckpt/] [-f 8]
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from orchestrator.cli import options as flags


@click.command(
    "collect-ckpt",
    cls=flags.RenamedOptions,
    renamed={"--job": flags.JOB, "--dest": "--output", "--jobs": "--forks",
             "--no-check": "--no-load-check", "--preset": "--config"},
)
@click.argument("job_id", required=False, metavar="[JOB]")
@flags.inventory_option(job=True)
@flags.state_dir_option()
@flags.output_option(
    help="Local folder for rank_<r>/, strategy/ and merged/ [default: ckpt/<job>].",
)
@click.option("--step", type=click.IntRange(0), default=None, help="Collect this step.")
@click.option(
    "--config",
    "-c",
    "preset",
    default=None,
    help="Preset name for the output file name (default: the job's; the load check uses "
    "the model section of the manifests).",
)
@click.option(
    "--keep-optimizer", is_flag=True, help="Keep optimizer state and gradient accumulators."
)
@click.option(
    "--dst-strategy",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="Transform to every rank of this (merged) strategy instead of one device, e.g. to "
    "restart on another layout: OUTPUT/merged/<name>_<strategy>/rank_<r>/.",
)
@click.option(
    "--processes",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="With --dst-strategy: destination ranks transformed at once on this machine "
    "(MindFormers' transform_process_num); host memory grows with it.",
)
@click.option("--no-load-check", "no_check", is_flag=True,
              help="Skip loading the result into the model.")
@flags.forks_option(default=8, help="Parallel download streams (files fetched at once).")
def collect_ckpt_command(
    job_id: str | None,
    inventory_path: Path | None,
    state_dir: Path,
    output: Path | None,
    step: int | None,
    preset: str | None,
    keep_optimizer: bool,
    dst_strategy: Path | None,
    processes: int,
    no_check: bool,
    forks: int,
) -> None:
    """Gather a job's rank checkpoints and strategy files, merge them into one checkpoint.

    JOB defaults to the latest job; a JOB without a record (with -i) is looked for in the
    inventory's rank order under <workdir>/jobs/JOB.

    \b
    1. lists every node's checkpoints in parallel and picks the newest step complete
       (manifest present, sha256 matching on the node) on every rank, or --step N;
    2. downloads the strategy files and one replica of every needed shard into
       OUTPUT/strategy/ and OUTPUT/rank_<r>/ (data-parallel replicas are fetched once),
       sha256-verified against the manifests; a rerun skips verified files and
       resumes partial ones; free disk is checked first;
    3. strips optimizer state, merges pipeline strategies and transforms to one
       device: OUTPUT/merged/bloom_<preset>_step<N>.ckpt plus a JSON manifest;
    4. loads it into the preset's BloomLMHeadModel and names any missing,
       unexpected or mis-shaped parameter.

    \b
    Resources per billion parameters (fp32 weights, 4 GB/B; fp16: half):
      disk   the gathered shards (weights + Adam state ~ 12 GB/B, less with DP
             dedupe) + stripped shards (4 GB/B) + merged (4 GB/B)
      memory strip and the one-device transform stream: one parameter at a
             time (the largest is the word embedding, vocab x hidden x 4 bytes)
             + ~0.5 GB runtime, whatever the model size (measured: 0.64 GiB peak
             for a 1 GiB fp32 MP2 x PP2 checkpoint); the load check holds the
             model once (~4 GB/B) + one parameter (measured 1.64 GiB there);
             --dst-strategy uses MindSpore's transform: the needed shards + the
             result, ~3x the output size, x --processes. The summary prints
             the measured peak.
    \f
    Over 60 lines only by this help text and the options; the work is _job_targets,
    _download_bar and ckpt.collect.collect.
    """
    from rich.console import Console
    from rich.text import Text

    from orchestrator.ckpt.collect import Options, collect
    from orchestrator.ckpt.output import record_collected
    from orchestrator.job.state import JobStore
    from orchestrator.remote.group import NodeGroup
    from orchestrator.untrusted import scrub

    store = JobStore(state_dir)
    job_id, inv, targets, preset, job = _job_targets(store, job_id, inventory_path, preset)
    console = Console(stderr=True)
    bar, progress = _download_bar(console)
    with NodeGroup(inv, [inv.node(t.name) for t in targets]) as group, _stopping(bar):
        res = collect(
            group,
            job_id,
            output if output is not None else Path("ckpt") / job_id,
            Options(step, preset, keep_optimizer, dst_strategy, processes, not no_check, forks),
            say=lambda m: console.print(Text(scrub(m))),  # node text: no markup
            progress=progress,
            targets=targets,
            job=job,
        )
    times = ", ".join(f"{k} {v:.1f} s" for k, v in res.seconds.items())
    console.print(
        f"step {res.step}, preset {res.preset}: ranks {res.fetched_ranks} gathered "
        f"({res.downloaded / 2**20:.1f} MiB downloaded, {res.saved_bytes / 2**20:.1f} MiB saved "
        f"by DP dedupe); {times}; peak host memory {res.peak_rss / 2**20:.0f} MiB"
    )
    if dst_strategy is None and res.merged is not None:
        record_collected(state_dir, job_id, res.step, res.merged)
    click.echo(f"merged checkpoint: {res.merged}")


def _job_targets(store: Any, job_id: str | None, inventory_path: Path | None,
                 preset: str | None) -> tuple[str, Any, list[Any], str | None, Any]:
    """(job id, inventory, nodes to collect from, preset, (backend, record) or None): from
    the job's record, else (a JOB with -i but no record) the inventory's nodes in rank
    order."""
    from orchestrator.ckpt.collect import targets_from_inventory
    from orchestrator.config.inventory import load_inventory
    from orchestrator.errors import JobError

    try:
        record = store.load(store.resolve(job_id))
    except JobError:
        if job_id is None or inventory_path is None:
            raise
        inv = load_inventory(inventory_path)
        return job_id, inv, list(targets_from_inventory(inv, job_id)), preset, None
    from orchestrator.backends import backend_for, need_node_files

    need_node_files(record, "collect-ckpt")
    inv = load_inventory(inventory_path or Path(record.inventory_path))
    return (record.job_id, inv, list(record.nodes), preset or record.preset,
            (backend_for(record), record))


def _download_bar(console: Any) -> tuple[Any, Any]:
    """A rich progress bar for the downloads and the `progress(total)` hook collect calls."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )

    def progress(total: int):  # type: ignore[no-untyped-def]
        task = bar.add_task("gather", total=total)
        bar.start()
        return lambda n: bar.advance(task, n)

    return bar, progress


@contextmanager
def _stopping(bar: Any) -> Iterator[None]:
    try:
        yield
    finally:
        bar.stop()


COMMANDS = (collect_ckpt_command,)
