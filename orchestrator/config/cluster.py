"""What a cluster is, once parsed: Node, Inventory, how a node is reached, rank order, addresses.

    inv.nodes, inv.in_rank_order(), inv.node("node0"), rank_order_key(node)
    is_valid_host("192.168.0.10"), is_valid_ipv4("10.0.0.1")

Frozen dataclasses with defaults applied; built by config/inventory.py (YAML) and
config/hostfile.py (DeepSpeed / Open MPI / MPICH hostfiles), used everywhere else.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from orchestrator.config.faulttol import FaultTolerance
from orchestrator.config.scheduler import Scheduler
from orchestrator.errors import InventoryError

MAX_DEVICE_ID = 15  # Ascend servers have at most 16 devices (ids 0..15)
DEFAULT_WORKDIR = "~/orchestrate"
DEFAULT_PYTHON = "python3"


class Connection(enum.Enum):
    """How the control plane reaches a node."""

    SSH = "ssh"  # OpenSSH server on the node, through remote/ssh.py
    LOCAL = "local"  # this machine, no SSH at all (inventories/local.yaml)


class HostKeyPolicy(enum.Enum):
    """What to do with a host key that is not in known_hosts."""

    STRICT = "strict"  # refuse unknown and changed keys (default)
    ACCEPT_NEW = "accept-new"  # add unknown keys to known_hosts; still refuse changed keys


@dataclass(frozen=True)
class Node:
    """One machine of the cluster, with defaults already applied."""

    name: str  # label used in logs, paths and `--node`; defaults to host
    host: str  # address we SSH to; also the rank table's server_id
    user: str | None = None  # None: from ~/.ssh/config, else the local user
    port: int | None = None  # None: from ~/.ssh/config, else 22
    devices: tuple[int, ...] = tuple(range(8))  # device ids (CPU: one rank per entry)
    workdir: PurePosixPath = PurePosixPath(DEFAULT_WORKDIR)  # jobs live in <workdir>/jobs/<id>
    python: str = DEFAULT_PYTHON  # interpreter on the node that has mindspore
    env: Mapping[str, str] = field(default_factory=dict, hash=False)  # exported for every rank
    device_ips: Mapping[int, str] | None = field(default=None, hash=False)  # else discovered
    connection: Connection = Connection.SSH
    identity_file: str | None = None  # private key; else ssh-agent / ~/.ssh/config
    super_pod_id: str | None = None  # Atlas A3 rank table v1.2 only
    data_dir: PurePosixPath | None = None  # dataset already on the node: do not stage it

    @property
    def device_count(self) -> int:
        return len(self.devices)


@dataclass(frozen=True)
class Inventory:
    """A parsed, validated inventory file."""

    path: Path  # the file it came from (for messages)
    nodes: tuple[Node, ...]  # in file order
    digest: str  # sha256 of the file bytes; job records keep it
    known_hosts: tuple[Path, ...] = ()  # extra known_hosts files besides ~/.ssh/known_hosts
    host_key_policy: HostKeyPolicy = HostKeyPolicy.STRICT
    ssh_config: Path | None = None  # ssh_config file to read instead of ~/.ssh/config
    fault_tolerance: FaultTolerance | None = None  # MindSpore's (config/faulttol.py)
    scheduler: Scheduler = Scheduler()  # backend and Slurm options (config/scheduler.py)

    @property
    def world_size(self) -> int:
        return sum(n.device_count for n in self.nodes)

    def find(self, name: str) -> Node | None:
        """The node called `name`, else the one with that host, else None."""
        return (next((n for n in self.nodes if n.name == name), None)
                or next((n for n in self.nodes if n.host == name), None))

    def node(self, name: str) -> Node:
        """The node called `name` (or with that host); InventoryError if none."""
        if (found := self.find(name)) is not None:
            return found
        known = ", ".join(n.name for n in self.nodes)
        raise InventoryError(str(self.path), "", f"no node named {name!r} (nodes: {known})")

    def in_rank_order(self) -> tuple[Node, ...]:
        """Nodes in the order MindSpore numbers ranks: dictionary order of `host` (server_id)."""
        return tuple(sorted(self.nodes, key=rank_order_key))


def rank_order_key(node: Node) -> tuple[str, int, str]:
    """Sort key of rank order: host as a *string* (192.168.0.10 < 192.168.0.2), then port, name."""
    return (node.host, node.port or 22, node.name)



_HOSTNAME_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")


def is_valid_ipv4(text: str) -> bool:
    """True for dotted-quad IPv4 addresses such as 192.168.0.10."""
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def is_valid_host(text: str) -> bool:
    """True for an IPv4 address or an RFC 1123 host name (which must not look like an IP)."""
    if re.fullmatch(r"[0-9.]+", text):
        return is_valid_ipv4(text)
    if len(text) > 253:
        return False
    return all(_HOSTNAME_LABEL.match(label) for label in text.rstrip(".").split("."))
