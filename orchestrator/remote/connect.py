"""Pick the transport for each node and keep a set of them open.

    inv = load_inventory("inventories/12node.yaml")
    with open_all(inv) as nodes:              # {name: Transport}, in inventory order
        result = run_all(nodes, "hostname")   # orchestrator.remote.fanout
    t = transport_for(inv.node("node0"), inv) # one node; use it as a context manager

`connection: ssh` nodes get an SSHTransport configured from the inventory (known_hosts,
host_key_policy, ssh_config); `connection: local` nodes get a LocalTransport. Nothing connects
until first use; leaving `open_all` closes every transport, even after errors.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from orchestrator.config.inventory import Connection, Inventory, Node
from orchestrator.remote.transport import Transport


def transport_for(node: Node, inventory: Inventory, **ssh_options: Any) -> Transport:
    """The transport for `node`; `ssh_options` override SSHOptions fields (e.g. connect_timeout).

    Imports paramiko/fabric only when an SSH node is asked for.
    """
    if node.connection is Connection.LOCAL:
        from orchestrator.remote.local import LocalTransport

        return LocalTransport(node)
    from orchestrator.remote.ssh import SSHOptions, SSHTransport

    return SSHTransport(node, SSHOptions.from_inventory(inventory, **ssh_options))


@contextmanager
def open_all(inventory: Inventory, nodes: Sequence[Node] | None = None,
             **ssh_options: Any) -> Iterator[dict[str, Transport]]:
    """Transports for `nodes` (default: all, inventory order) keyed by name; closed on exit."""
    chosen = inventory.nodes if nodes is None else tuple(nodes)
    transports = {n.name: transport_for(n, inventory, **ssh_options) for n in chosen}
    try:
        yield transports
    finally:
        errors = []
        for t in transports.values():
            try:
                t.close()
            except Exception as e:  # noqa: BLE001 - close every transport, report after
                errors.append(e)
        if errors:
            raise errors[0]


def node_address(node: Node, inventory: Inventory) -> str:
    """The address `node` is reached at: ssh_config's HostName for an alias (`ssh -G`), else
    `host`. Other nodes use it too (msrun's scheduler address), so an alias never leaks there.
    """
    if node.connection is Connection.LOCAL:
        return node.host
    from orchestrator.remote.sshconfig import resolve

    return resolve(node, inventory.ssh_config).hostname
