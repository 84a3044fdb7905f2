"""`orchestrate exec`: run a shell command on every node, like pdsh (issue #4).

    orchestrate exec --inventory inventories/12node.yaml -- npu-smi info
    orchestrate exec -i INV --forks 16 --timeout 30 -- 'pgrep -f train | wc -l'
    orchestrate exec -i INV --group -- cat /etc/hccn.conf
    orchestrate exec -i INV --json -- hostname

The words after `--` are joined with spaces and run by each node's login shell, exactly as
`ssh host CMD...` does. Output is printed as each node finishes, every line prefixed `[name]`
(stderr lines go to stderr), or with `--group` once at the end, nodes with identical output
together. A summary table (node, exit code, seconds) follows on stderr, so stdout holds only
the nodes' output. Exit code 1 if any node failed (non-zero exit, timeout, or could not
connect).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from orchestrator.cli import options as flags
from orchestrator.untrusted import scrub

if TYPE_CHECKING:
    from orchestrator.remote.transport import CommandResult, Transport


@dataclass(frozen=True)
class NodeOutcome:
    """One row of the summary: what happened on one node."""

    name: str
    host: str
    exit_code: int | None  # None: no exit code (connect error, timeout)
    stdout: str
    stderr: str
    seconds: float
    error: str | None  # one-line error when the command could not run to completion

    @property
    def ok(self) -> bool:
        return self.error is None and self.exit_code == 0

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "host": self.host,
            "exit_code": self.exit_code,
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "stdout": self.stdout,
            "stderr": self.stderr,
            "error": self.error,
        }


def prefixed(name: str, text: str) -> str:
    """Every line of `text` as `[name] line` (a missing final newline is added)."""
    if not text:
        return ""
    return "".join(f"[{name}] {scrub(line)}\n" for line in text.splitlines())


def grouped(outcomes: list[NodeOutcome]) -> str:
    """Nodes with identical stdout+stderr+error printed once under a header (dshbak -c)."""
    groups: dict[tuple[str, str, str | None], list[str]] = {}
    for o in outcomes:
        groups.setdefault((o.stdout, o.stderr, o.error), []).append(o.name)
    parts = []
    for (out, err, error), names in groups.items():
        parts.append(f"==== {', '.join(names)} ({len(names)} node{'s' * (len(names) != 1)}) ====\n")
        parts.append(out if not out or out.endswith("\n") else out + "\n")
        if err:
            parts.append("".join(f"stderr: {line}\n" for line in err.splitlines()))
        if error:
            parts.append(f"error: {error}\n")
    return "".join(parts)


def summary_table(outcomes: list[NodeOutcome]) -> str:
    """Plain-text table: node, exit code (or ERROR), seconds, error."""
    width = max([4] + [len(o.name) for o in outcomes])
    lines = [f"{'node':<{width}}  {'exit':>5}  {'seconds':>7}  error"]
    for o in outcomes:
        code = "-" if o.exit_code is None else str(o.exit_code)
        lines.append(f"{o.name:<{width}}  {code:>5}  {o.seconds:7.2f}  {o.error or ''}".rstrip())
    failed = sum(not o.ok for o in outcomes)
    lines.append(f"{len(outcomes) - failed} ok, {failed} failed")
    return "\n".join(lines) + "\n"


def to_outcome(name: str, host: str, value: object, seconds: float) -> NodeOutcome:
    """Turn a fan-out outcome (CommandResult or exception) into a summary row."""
    from orchestrator.errors import RemoteCommandError
    from orchestrator.remote.transport import CommandResult

    if isinstance(value, RemoteCommandError):
        value = value.result
    if isinstance(value, CommandResult):
        return NodeOutcome(
            name, host, value.exit_code, value.stdout, value.stderr, value.seconds, None
        )
    from orchestrator.remote.group import cause

    return NodeOutcome(name, host, None, "", "", seconds,
                       cause(value) if isinstance(value, BaseException) else str(value))


@click.command("exec")
@flags.inventory_option(required=True)
@flags.inventory_filter_option()
@flags.forks_option()
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds each node's command may run; it is killed on the node after that.",
)
@click.option(
    "--connect-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds to connect to a node (each try; 3 tries).",
)
@click.option(
    "--node",
    "-n",
    "only",
    multiple=True,
    metavar="NAME",
    help="Run only on this node (name or host). Repeatable.",
)
@click.option(
    "--group", is_flag=True, help="Print output at the end, nodes with identical output together."
)
@flags.json_option()
@click.argument("command", nargs=-1, required=True)
@click.pass_context
def exec_command(
    ctx: click.Context,
    inventory_path: Path,
    forks: int,
    timeout: float | None,
    connect_timeout: float,
    only: tuple[str, ...],
    group: bool,
    as_json: bool,
    command: tuple[str, ...],
) -> None:
    """Run a shell command on every node; output prefixed [node]; summary table on stderr.

    \b
    The words after `--` are joined with spaces and run by each node's shell, as `ssh host
    CMD...` does:
      orchestrate exec -i inventories/12node.yaml -- npu-smi info
      orchestrate exec -i INV -- 'pgrep -f train | wc -l'
    Exit code 1 if any node failed (non-zero exit, timeout, or connection error).
    """
    from orchestrator.remote.group import NodeGroup

    inv = flags.load_selected(inventory_path)
    nodes = [inv.node(n) for n in only] if only else list(inv.nodes)
    line = " ".join(command)
    lock = threading.Lock()
    started: dict[str, float] = {}
    seconds: dict[str, float] = {}
    hosts = {n.name: n.host for n in nodes}

    def one(t: Transport) -> CommandResult:
        started[t.node.name] = time.monotonic()
        return t.run(line, check=True, timeout=timeout)

    def on_done(name: str, value: object) -> None:
        seconds[name] = time.monotonic() - started.get(name, time.monotonic())
        if as_json or group:
            return
        o = to_outcome(name, hosts[name], value, seconds[name])
        with lock:
            sys.stdout.write(prefixed(name, o.stdout))
            sys.stdout.flush()
            sys.stderr.write(prefixed(name, o.stderr))
            if o.error:
                sys.stderr.write(f"[{name}] ERROR: {scrub(o.error)}\n")
            sys.stderr.flush()

    with NodeGroup(inv, nodes, forks=forks, connect_timeout=connect_timeout) as nodegroup:
        result = nodegroup.map(one, on_done=on_done)
    outcomes = [
        to_outcome(name, hosts[name], value, seconds.get(name, 0.0))
        for name, value in result.outcomes.items()
    ]
    if _report(line, outcomes, as_json, group):
        ctx.exit(1)


def _report(line: str, outcomes: list[NodeOutcome], as_json: bool, group: bool) -> bool:
    """The end of `exec`: JSON on stdout, or (grouped output and) the summary on stderr;
    whether any node failed."""
    failed = [o.name for o in outcomes if not o.ok]
    if as_json:
        click.echo(
            json.dumps(
                {"command": line, "nodes": [o.to_json() for o in outcomes], "failed": failed},
                indent=2,
            )
        )
    else:
        if group:
            click.echo(scrub(grouped(outcomes)), nl=False)  # node text: no terminal escapes
        click.echo(scrub(summary_table(outcomes)), nl=False, err=True)
    return bool(failed)


COMMANDS = (exec_command,)
