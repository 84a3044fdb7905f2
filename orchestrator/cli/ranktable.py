"""`orchestrate ranktable`: build, merge and check HCCL rank tables.

    orchestrate ranktable --inventory inventories/12node.yaml [-o hccl_12s_96p.json]
                          [--per-server-dir DIR] [--discover] [--format 1.0|1.2]
    orchestrate ranktable merge hccl_8p_*.json -o hccl_12s_96p.json
    orchestrate ranktable check hccl_12s_96p.json
    orchestrate ranktable convert /user/config/jobstart_hccl.json -o hccl.json
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from orchestrator.cli import options as flags

if TYPE_CHECKING:
    from orchestrator.config.inventory import Inventory, Node
    from orchestrator.job.discover import NodeProbe


@click.group("ranktable", invoke_without_command=True)
@flags.inventory_option(optional=True)
@click.option("--output", "-o", type=click.Path(path_type=Path), default=None,
              help="Merged table to write [default: ./hccl_<servers>s_<ranks>p.json].")
@click.option("--per-server-dir", type=click.Path(path_type=Path), default=None,
              help="Also write each server's own table here, named as hccl_tools names it: "
                   "hccl_<k>p_<device ids>_<server ip>.json (rank ids 0..k-1).")
@click.option("--discover", is_flag=True,
              help="Ask nodes without `device_ips` in the inventory over SSH: "
                   "`hccn_tool -i <id> -ip -g`, else address_<id>= lines of /etc/hccn.conf.")
@click.option("--format", "version", type=click.Choice(["1.0", "1.2"]), default="1.0",
              show_default=True,
              help="1.2 (Atlas A3 SuperPoD) adds per-device super_device_id (found with "
                   "npu-smi, so it needs --discover) and super_pod_list (from each node's "
                   "`super_pod_id` in the inventory).")
@flags.inventory_filter_option()
@flags.forks_option()
@click.pass_context
def ranktable_group(ctx: click.Context, inventory_path: Path | None, output: Path | None,
                    per_server_dir: Path | None, discover: bool, version: str,
                    forks: int) -> None:
    """Build the HCCL rank table of an inventory (or merge / check tables).

    The merged table lists servers in the dictionary order of server_id (the node's host:
    192.168.0.10 before 192.168.0.2) with rank ids counted from 0 in that order and devices
    ascending, as MindSpore requires; `orchestrate plan` shows the same rank ranges. Device
    IPs come from the inventory's `device_ips`, else (with --discover) from the nodes.
    Every value in the file is a string, as in MindFormers' hccl_tools.py / merge_hccl.py.
    """
    if ctx.invoked_subcommand is not None:
        return
    if inventory_path is None:
        raise click.UsageError("give --inventory (or a subcommand: merge, check)")
    for line in _generate(inventory_path, output, per_server_dir, discover, version, forks):
        click.echo(line)


def _generate(inventory_path: Path, output: Path | None, per_server_dir: Path | None,
              discover: bool, version: str, forks: int) -> list[str]:
    """Build and write the tables; returns the lines to print."""
    from collections import Counter

    from orchestrator.errors import RankTableError
    from orchestrator.hccl.ranktable import (
        VERSION_1_2,
        build_tables,
        merged_filename,
        nodes_needing_discovery,
        resolve_device_ips,
        write_tables,
    )

    inv = flags.load_selected(inventory_path)
    if version == VERSION_1_2 and not discover:
        raise RankTableError("--format 1.2 needs --discover: the super_device_id (SDID) of "
                             "each device is read from the nodes with npu-smi")
    if version == VERSION_1_2:
        no_pod = [n.name for n in inv.nodes if n.super_pod_id is None]
        if no_pod:
            raise RankTableError(f"--format 1.2 needs `super_pod_id` for every node in "
                                 f"{inventory_path}; missing for: {', '.join(no_pod)}")
    discovered = None
    sdids = None
    lines = []
    if discover:
        # 1.2 probes every node (SDIDs); 1.0 only those without device_ips in the inventory
        probe_nodes = inv.nodes if version == VERSION_1_2 else nodes_needing_discovery(inv)
        probes = _discover(inv, probe_nodes, version == VERSION_1_2, forks)
        no_ips = {n.name for n in nodes_needing_discovery(inv)}
        discovered = {name: p.device_ips for name, p in probes.items() if name in no_ips}
        if version == VERSION_1_2:
            sdids = {name: p.super_device_ids or {} for name, p in probes.items()}
        by_source = Counter(p.source for p in probes.values())
        lines.append(f"discovered device IPs on {len(probes)} node(s): "
                     + ", ".join(f"{k} on {v}" for k, v in sorted(by_source.items())))
    ips = resolve_device_ips(inv, discovered)
    merged, per_server = build_tables(inv, ips, version=version, super_device_ids=sdids)
    from orchestrator.hccl.check import validate_table

    problems = validate_table(merged)  # e.g. two devices given the same IP in the inventory
    if problems:
        raise RankTableError(f"{inventory_path}: the table would be invalid: "
                             + "; ".join(problems))
    out = output or Path(merged_filename(merged))
    written = write_tables(merged, out, per_server, per_server_dir)
    if per_server_dir is not None:
        lines.append(f"wrote {len(written) - 1} per-server tables to {per_server_dir}")
    lines.append(f"wrote {out} (version {version}, {len(merged.servers)} servers, "
                 f"{merged.world_size} ranks)")
    return lines


def _discover(inv: Inventory, nodes: tuple[Node, ...], super_devices: bool,
              forks: int) -> dict[str, NodeProbe]:
    """Open a transport to each node and probe them all in parallel."""
    from orchestrator.job.discover import discover

    if not nodes:
        return {}
    from orchestrator.remote.group import NodeGroup

    with NodeGroup(inv, nodes, forks=forks) as group:
        return discover(group, nodes, super_devices=super_devices)


@ranktable_group.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
def check_command(files: tuple[Path, ...]) -> None:
    """Check rank tables (ours, hand-made or a platform's) and print every problem; exit 1
    if any.

    Checks: JSON syntax, required keys, every value a string, server_count, duplicate
    server ids, duplicate device ids in a server, duplicate device IPs across the cluster,
    rank ids 0..N-1 each once, rank order following the dictionary order of server_id,
    IPv4 addresses, and for version 1.2 super_device_id and super_pod_list. ModelArts' v0
    layout (group_list / instance_list, no rank ids) is checked as `convert` would write it;
    a table whose status is still "initializing" is reported as not ready.
    """
    from orchestrator.errors import RankTableError

    bad = 0
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            click.echo(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}", err=True)
            bad += 1
            continue
        ok, lines = _check_one(text, str(path))
        bad += not ok
        for line in lines:
            click.echo(f"{path}: {line}", err=not ok)
    if bad:
        raise RankTableError(f"{bad} of {len(files)} rank table(s) have problems")


def _check_one(text: str, source: str) -> tuple[bool, list[str]]:
    """(valid, lines to print) for one file of any layout."""
    import json

    from orchestrator.errors import RankTableError
    from orchestrator.hccl.check import parse_table, validate_text
    from orchestrator.hccl.platform import STATUS_INITIALIZING, read_platform_table, status_of

    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        doc = None
    if status_of(doc) == STATUS_INITIALIZING:
        return False, ['status is "initializing": the platform has not finished the table']
    if isinstance(doc, dict) and "group_list" in doc:
        try:
            t = read_platform_table(text, source).table
        except RankTableError as e:
            return False, [str(e).removeprefix(f"{source}: ")]
        return True, [f"ok (ModelArts v0 layout, {len(t.servers)} servers, {t.world_size} "
                      "ranks; `orchestrate ranktable convert` writes it as version 1.0)"]
    problems = validate_text(text)
    if problems:
        if any(p.startswith("rank order") for p in problems):
            problems.append("`orchestrate ranktable convert` writes it in server_id order")
        return False, problems
    t = parse_table(text, source)
    return True, [f"ok (version {t.version}, {len(t.servers)} servers, {t.world_size} ranks)"]


@ranktable_group.command("convert")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True,
              help="Where to write the version 1.0 (or 1.2) table.")
@click.option("--timeout", type=click.FloatRange(0), default=0, show_default=True,
              help="Seconds to wait while FILE is missing or its status is \"initializing\".")
def convert_command(file: Path, output: Path, timeout: float) -> None:
    """Write a platform's rank table as the table MindSpore wants.

    FILE may be ModelArts' v0 layout (/user/config/jobstart_hccl.json: group_list /
    instance_list / pod_name / devices, no rank ids) or version 1.0 / 1.2 in any server
    order. OUTPUT is version 1.0 (1.2 stays 1.2): servers in the dictionary order of
    server_id, devices ascending, rank ids counted from 0 in that order, checked as
    `ranktable check` does. Nothing is written if FILE has a problem.

    \b
      orchestrate ranktable convert /user/config/jobstart_hccl.json -o hccl.json
    """
    from orchestrator.hccl.platform import wait_for_table
    from orchestrator.hccl.ranktable import write_text_atomic

    found = wait_for_table(file, timeout, lambda line: click.echo(line, err=True))
    t = found.table
    write_text_atomic(output, t.dumps())
    how = ("ranks renumbered in server_id order" if found.reordered
           else "already in server_id order")
    click.echo(f"wrote {output} (version {t.version} from {found.layout}, {len(t.servers)} "
               f"servers, {t.world_size} ranks; {how})")


@ranktable_group.command("merge")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(path_type=Path), default=None,
              help="Merged table to write [default: ./hccl_<servers>s_<ranks>p.json].")
def merge_command(files: tuple[Path, ...], output: Path | None) -> None:
    """Merge per-server tables (e.g. from hccl_tools.py) into one.

    Unlike merge_hccl.py, which numbers ranks in the order of its arguments, servers are
    sorted by server_id as strings and ranks renumbered from 0 in that order, whatever the
    order of FILES. Each input is checked first; nothing is written if any has a problem.
    """
    from orchestrator.errors import RankTableError
    from orchestrator.hccl.check import parse_tables
    from orchestrator.hccl.ranktable import merge_tables, merged_filename, write_text_atomic

    texts = []
    for path in files:
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise RankTableError(f"{path}: cannot read: "
                                 f"{getattr(e, 'strerror', None) or e}") from e
    names = [str(p) for p in files]
    merged = merge_tables(parse_tables(texts, names), names)
    out = output or Path(merged_filename(merged))
    write_text_atomic(out, merged.dumps())
    click.echo(f"wrote {out} ({len(merged.servers)} servers, {merged.world_size} ranks)")


COMMANDS = (ranktable_group,)
