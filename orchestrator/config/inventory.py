"""Inventory YAML -> frozen `Inventory`/`Node` dataclasses; every error names file, key and value.

Example (see DESIGN.md):

    defaults: {user: root, devices: 8, workdir: /home/bloom/run, python: python3}
    nodes:
      - host: 192.168.0.0
        name: node0
      - {host: 192.168.0.1, device_ips: {0: 192.98.92.10, 1: 192.98.93.10}}
    # or the shorthand:  hosts: [192.168.0.0, 192.168.0.1]
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from orchestrator.config import fields
from orchestrator.config.cluster import (
    DEFAULT_PYTHON,
    DEFAULT_WORKDIR,
    MAX_DEVICE_ID,
    Connection,
    HostKeyPolicy,
    Inventory,
    Node,
    is_valid_host,
    is_valid_ipv4,
    rank_order_key,
)
from orchestrator.config.faulttol import parse_fault_tolerance
from orchestrator.config.scheduler import KEYS as SCHEDULER_KEYS
from orchestrator.config.scheduler import parse_scheduler
from orchestrator.errors import InventoryError

__all__ = [  # the cluster types live in config/cluster.py; importers may name them from here
    "DEFAULT_PYTHON", "DEFAULT_WORKDIR", "MAX_DEVICE_ID", "Connection", "HostKeyPolicy",
    "Inventory", "Node", "is_valid_host", "is_valid_ipv4", "load_inventory", "parse_inventory",
    "rank_order_key",
]

_TOP_KEYS = {"defaults", "nodes", "hosts", "known_hosts", "host_key_policy", "ssh_config",
             "fault_tolerance", *SCHEDULER_KEYS}
_NODE_KEYS = {
    "host",
    "name",
    "user",
    "port",
    "devices",
    "workdir",
    "python",
    "env",
    "device_ips",
    "connection",
    "identity_file",
    "super_pod_id",
    "data_dir",
}
_DEFAULT_KEYS = _NODE_KEYS - {"host", "name", "device_ips"}


def load_inventory(path: Path | str) -> Inventory:
    """Read and validate an inventory file.

    Args:
        path: YAML file in the schema of DESIGN.md, or a DeepSpeed / Open MPI / MPICH
            hostfile (detected by content, see orchestrator/config/hostfile.py).

    Returns:
        The parsed inventory.

    Raises:
        InventoryError: one line naming the file, the key path and the bad value.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InventoryError(str(path), "", "file does not exist") from None
    except OSError as e:
        raise InventoryError(str(path), "", f"cannot read: {e.strerror}") from e
    text, digest = raw.decode("utf-8", errors="replace"), hashlib.sha256(raw).hexdigest()
    from orchestrator.config import hostfile  # DeepSpeed / Open MPI / MPICH hostfiles

    if hostfile.looks_like_hostfile(text):
        return hostfile.parse_hostfile(text, path, digest)
    return parse_inventory(text, path, digest)


def parse_inventory(text: str, path: Path | str = "<inventory>", digest: str = "") -> Inventory:
    """Validate inventory YAML text; `path` is only used in messages."""
    src = str(path)
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise InventoryError(src, "", f"YAML syntax error at {where}{problem}") from None
    if not isinstance(doc, dict):
        raise InventoryError(src, "", f"expected a mapping at top level, got {fields.show(doc)}")
    _reject_unknown(src, "", doc, _TOP_KEYS)
    defaults = doc.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise InventoryError(src, "defaults", f"expected a mapping, got {fields.show(defaults)}")
    _reject_unknown(src, "defaults", defaults, _DEFAULT_KEYS)
    entries = _node_entries(src, doc)
    nodes = tuple(_parse_node(src, f"nodes[{i}]", defaults, e) for i, e in enumerate(entries))
    _reject_duplicates(src, nodes)
    _reject_duplicate_ips(src, nodes)
    return Inventory(
        path=Path(src),
        nodes=nodes,
        digest=digest or hashlib.sha256(text.encode()).hexdigest(),
        known_hosts=tuple(fields.paths(src, "known_hosts", doc.get("known_hosts"))),
        host_key_policy=fields.choice(
            src, "host_key_policy", doc.get("host_key_policy", "strict"), HostKeyPolicy
        ),
        ssh_config=fields.path_or_none(src, "ssh_config", doc.get("ssh_config")),
        fault_tolerance=parse_fault_tolerance(src, doc.get("fault_tolerance")),
        scheduler=parse_scheduler(src, doc),
    )


def _node_entries(src: str, doc: dict[str, Any]) -> list[dict[str, Any]]:
    if "nodes" in doc and "hosts" in doc:
        raise InventoryError(src, "hosts", "give either `nodes` or the `hosts` shorthand, not both")
    if "hosts" in doc:
        hosts = doc["hosts"]
        if not isinstance(hosts, list):
            raise InventoryError(src, "hosts",
                                 f"expected a list of addresses, got {fields.show(hosts)}")
        entries: list[Any] = [{"host": h} for h in hosts]
        key = "hosts"
    else:
        nodes = doc.get("nodes")
        key = "nodes"
        if nodes is None:
            raise InventoryError(src, "nodes", "missing: list the nodes (or use `hosts: [...]`)")
        if not isinstance(nodes, list):
            raise InventoryError(src, "nodes",
                                 f"expected a list of mappings, got {fields.show(nodes)}")
        entries = nodes
    if not entries:
        raise InventoryError(src, key, "empty: an inventory needs at least one node")
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise InventoryError(src, f"nodes[{i}]", f"expected a mapping, got {fields.show(e)}")
    return entries


def _parse_node(src: str, key: str, defaults: dict[str, Any], entry: dict[str, Any]) -> Node:
    _reject_unknown(src, key, entry, _NODE_KEYS)
    if "host" not in entry:
        raise InventoryError(src, f"{key}.host", "missing")

    def pick(name: str) -> tuple[str, Any]:
        if name in entry:
            return f"{key}.{name}", entry[name]
        return f"defaults.{name}", defaults.get(name)

    host = fields.host(src, f"{key}.host", entry["host"])
    name = fields.name(src, f"{key}.name", entry.get("name", host))
    connection = fields.choice(src, *_default(pick("connection"), "ssh"), Connection)
    return Node(
        name=name,
        host=host,
        user=fields.user(src, *pick("user")),
        port=fields.port(src, *pick("port")),
        devices=fields.devices(src, *_default(pick("devices"), 8)),
        workdir=fields.workdir(src, *_default(pick("workdir"), DEFAULT_WORKDIR),
                                connection is Connection.LOCAL),
        python=fields.nonempty(src, *_default(pick("python"), DEFAULT_PYTHON)),
        env=MappingProxyType(fields.env(src, *_default(pick("env"), {}))),
        device_ips=fields.device_ips(src, f"{key}.device_ips", entry.get("device_ips")),
        connection=connection,
        identity_file=fields.opt_str(src, *pick("identity_file")),
        super_pod_id=fields.opt_str(src, *pick("super_pod_id"), allow_int=True),
        data_dir=fields.node_path(src, *pick("data_dir")),
    )


def _default(kv: tuple[str, Any], value: Any) -> tuple[str, Any]:
    return (kv[0], value) if kv[1] is None else kv


def _reject_unknown(src: str, key: str, mapping: dict[Any, Any], allowed: set[str]) -> None:
    for k in mapping:
        if k not in allowed:
            shown = k if isinstance(k, str) and k.isprintable() and k.strip() else repr(k)
            where = f"{key}.{shown}" if key else shown
            hint = ", ".join(sorted(allowed))
            raise InventoryError(src, where, f"unknown key (allowed: {hint})")


def _reject_duplicate_ips(src: str, nodes: tuple[Node, ...]) -> None:
    """HCCL needs a distinct IP per device, within a node and across nodes."""
    seen: dict[str, str] = {}
    for i, n in enumerate(nodes):
        for dev, ip in sorted((n.device_ips or {}).items()):
            where = f"nodes[{i}].device_ips.{dev}"
            if ip in seen:
                raise InventoryError(src, where, f"duplicate device IP {ip!r} (same as "
                                                 f"{seen[ip]}); HCCL needs one IP per device")
            seen[ip] = where


def _reject_duplicates(src: str, nodes: tuple[Node, ...]) -> None:
    seen_addr: dict[tuple[str, int], int] = {}
    seen_name: dict[str, int] = {}
    for i, n in enumerate(nodes):
        addr = (n.host, n.port or 22)
        if addr in seen_addr:
            raise InventoryError(
                src,
                f"nodes[{i}].host",
                f"duplicate host {n.host!r} (same as nodes[{seen_addr[addr]}])",
            )
        if n.name in seen_name:
            raise InventoryError(
                src,
                f"nodes[{i}].name",
                f"duplicate name {n.name!r} (same as nodes[{seen_name[n.name]}])",
            )
        seen_addr[addr] = i
        seen_name[n.name] = i

