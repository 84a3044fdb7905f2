"""`orchestrate inventory`: the nodes and devices as orchestrate understood them, and why.

    orchestrate inventory -i hostfile [--include FILTER | --exclude FILTER] [--json]

For each node: name, host (as written: an address or an ssh_config alias), the address, port
and user it is reached at (OpenSSH's own evaluation, `ssh -G`, with inventory values winning),
its devices, the ProxyJump hops, and where each value came from (inventory, ssh_config,
default) with the ssh_config blocks that applied. Touches no node.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from orchestrator.cli import options as flags

if TYPE_CHECKING:
    from orchestrator.config.inventory import Inventory, Node
    from orchestrator.remote.sshconfig import SSHSettings

_WHY = (("hostname", "address"), ("port", "port"), ("user", "user"),
        ("identityfile", "identity"), ("proxyjump", "jump"), ("proxycommand", "proxy"))


@click.command("inventory")
@flags.inventory_option(required=True)
@flags.inventory_filter_option()
@flags.json_option()
def inventory_command(inventory_path: Path, as_json: bool) -> None:
    """Show the nodes of an inventory YAML or hostfile as orchestrate reads them.

    \b
    Accepts what -i takes everywhere: the inventory YAML, or a hostfile
      DeepSpeed  `worker-1 slots=4`
      Open MPI   `worker-1 slots=4 max_slots=8`
      MPICH      `worker-1:4`
    whose hosts may be ssh_config aliases. Address, port, user, keys and ProxyJump come
    from `ssh -G` (Include, Match, wildcards and tokens as ssh itself reads them), inventory
    values winning; each value is labelled inventory, ssh_config or default.
    """
    inv = flags.load_selected(inventory_path)
    rows = [_describe(inv, n) for n in inv.nodes]
    if as_json:
        click.echo(json.dumps({"inventory": str(inv.path), "world_size": inv.world_size,
                               "nodes": rows}, indent=2))
        return
    _print(rows)
    click.echo(f"{len(rows)} node(s), {inv.world_size} device(s)")


def _describe(inv: Inventory, node: Node) -> dict[str, Any]:
    from orchestrator.config.inventory import Connection

    row: dict[str, Any] = {"name": node.name, "host": node.host,
                           "connection": node.connection.value, "devices": list(node.devices)}
    if node.connection is Connection.LOCAL:
        return {**row, "address": "localhost", "port": None, "user": None}
    from orchestrator.remote.sshconfig import resolve

    s = resolve(node, inv.ssh_config)
    return {**row, **_hop(s), "identity_files": list(s.identity_files),
            "jumps": [_hop(h) for h in s.jumps], "proxy_command": s.proxy_command,
            "sources": dict(s.sources), "ssh_config": s.config, "applied": list(s.applied),
            "evaluator": s.evaluator}


def _hop(s: SSHSettings) -> dict[str, Any]:
    return {"alias": s.alias, "address": s.hostname, "port": s.port, "user": s.user}


def _print(rows: list[dict[str, Any]]) -> None:
    table = [("NAME", "HOST", "ADDRESS", "PORT", "USER", "DEVICES", "VIA")]
    for r in rows:
        via = " -> ".join(f"{h['alias']}" for h in r.get("jumps", [])) or (
            "ProxyCommand" if r.get("proxy_command") else "-")
        table.append((r["name"], r["host"], r["address"], str(r["port"] or "-"),
                      r["user"] or "-", ",".join(map(str, r["devices"])), via))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    click.echo("where the values come from:")
    for r in rows:
        if "sources" not in r:
            click.echo(f"  {r['name']}: local (no SSH)")
            continue
        parts = [f"{label} {r['sources'][key]}" for key, label in _WHY
                 if key not in ("proxyjump", "proxycommand") or r["sources"][key] != "default"]
        click.echo(f"  {r['name']}: " + ", ".join(parts) + f" [{r['evaluator']}, "
                   f"{r['ssh_config']}]")
        for block in r["applied"]:
            click.echo(f"      applied {block}")


COMMANDS = (inventory_command,)
