"""`orchestrate check` as the user sees it: run the node checks on a group, print the table and
the fixes, and the re-check the watch loop calls (`orchestrate check|up`)."""

from __future__ import annotations

from typing import Any

import click


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
