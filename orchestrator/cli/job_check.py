"""`orchestrate check`, and the node check `up` and the watch loop's restarts run.

    orchestrate check --inventory inventories/12node.yaml --config 65b
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from orchestrator.cli import options as flags


def print_check(report: Any) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from orchestrator.untrusted import scrub

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
            # a node's reply (versions, paths) is text, never markup
            cells.append(Text("" if i is None else scrub(str(i.value)), style=color))
        table.add_row(n.node, *cells)
    Console().print(table)
    for node, item in report.failures:
        click.echo(scrub(f"[{node}] {item.name}: {item.value} -> {item.fix}"), err=True)


def run_check(group: Any, spec: Any, mode: str, sched_port: int | None) -> Any:
    from orchestrator.job.check import check_nodes

    target = str(spec.value("train.device_target")) if spec is not None else "CPU"
    return check_nodes(group, device_target=target, mode=mode, sched_port=sched_port)


def rechecker(group: Any, spec: Any, mode: str, sched_port: int | None, skip: bool) -> Any:
    """`recheck()` for the watch loop: node -> what its check found wrong ({}: all ok)."""
    def recheck() -> dict[str, str]:
        if skip:
            return {}
        report = run_check(group, spec, mode, sched_port)
        problems: dict[str, str] = {}
        for node, item in report.failures:
            problems[node] = "; ".join(filter(None, (problems.get(node),
                                                     f"{item.name}: {item.value}")))
        return problems

    return recheck


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
