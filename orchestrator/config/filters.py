"""DeepSpeed's `--include` / `--exclude` resource filters, applied to an Inventory.

    orchestrate up -i hostfile --include 'worker-0@worker-1:0,2'   # all of worker-0, 2 of w-1
    orchestrate exec -i inv.yaml --exclude worker-1 -- hostname     # every node but worker-1

Syntax and meaning are DeepSpeed's: `host[:slot[,slot...]][@host[:slot...]]`; a slot is a
device id of the node (DeepSpeed: a local GPU index). `--include` keeps only what it names (a
bare host keeps all its devices; naming a slot twice, or a host twice, is harmless);
`--exclude` drops what it names (a bare host drops the node, a node left without devices is
dropped). The two are mutually exclusive; an unknown host or slot is an error, as is a filter
that leaves no node. Hosts match a node's name or its host. Node order stays the inventory's.
"""

from __future__ import annotations

from dataclasses import replace

from orchestrator.config.inventory import Inventory, Node
from orchestrator.errors import InventoryError

FilterSpec = list[tuple[str, tuple[int, ...] | None]]  # (host, slots or None: all)


def parse_filter(option: str, text: str) -> FilterSpec:
    """`host[:slot[,slot]][@host...]` -> [(host, slots | None)]; InventoryError if malformed."""
    out: FilterSpec = []
    for element in text.split("@"):
        host, colon, slots = element.partition(":")
        if not host or (colon and not slots):
            raise InventoryError(option, "", f"{text!r}: expected host[:slot[,slot...]]"
                                             f"[@host[:slot...]], got element {element!r}")
        if not colon:
            out.append((host, None))
            continue
        parts = slots.split(",")
        if not all(p.isdigit() for p in parts):
            raise InventoryError(option, "", f"{text!r}: slots of {host!r} must be device "
                                             f"ids separated by commas, got {slots!r}")
        out.append((host, tuple(int(p) for p in parts)))
    return out


def apply_filters(inv: Inventory, include: str | None, exclude: str | None) -> Inventory:
    """The inventory with only the nodes/devices `include` keeps or `exclude` leaves.

    Raises:
        InventoryError: both given, malformed, unknown host or slot, or nothing left.
    """
    if include and exclude:
        raise InventoryError("--include/--exclude", "", "give --include or --exclude, not both")
    text = include or exclude
    if not text:
        return inv
    option = "--include" if include else "--exclude"
    chosen: dict[str, set[int]] = {}
    for host, slots in parse_filter(option, text):
        node = _node(inv, option, host)
        for slot in slots or ():
            if slot not in node.devices:
                have = ",".join(map(str, node.devices))
                raise InventoryError(option, "", f"no slot {slot} on {host!r} (devices {have})")
        chosen.setdefault(node.name, set()).update(node.devices if slots is None else slots)
    nodes = []
    for node in inv.nodes:
        picked = chosen.get(node.name, set())
        keep = picked if include else set(node.devices) - picked
        if keep:  # a bare host in --exclude named every device: the node goes
            nodes.append(replace(node, devices=tuple(d for d in node.devices if d in keep)))
    if not nodes:
        raise InventoryError(option, "", f"{text!r} leaves no node of {inv.path}")
    return replace(inv, nodes=tuple(nodes))


def first_nodes(inv: Inventory, count: int | None) -> Inventory:
    """The first `count` nodes in inventory order (`-N/--nodes`, as DeepSpeed's --num_nodes and
    Slurm's --nodes), applied after --include/--exclude; None keeps every node.

    Raises:
        InventoryError: more nodes asked for than the inventory (after filters) has.
    """
    if count is None:
        return inv
    if count > len(inv.nodes):
        raise InventoryError("--nodes", "", f"{count} asked for, {inv.path} has "
                                            f"{len(inv.nodes)} node(s) after filters")
    return replace(inv, nodes=inv.nodes[:count])


def _node(inv: Inventory, option: str, host: str) -> Node:
    if (found := inv.find(host)) is not None:
        return found
    known = ", ".join(n.name for n in inv.nodes)
    raise InventoryError(option, "", f"no host {host!r} in {inv.path} (nodes: {known})")

