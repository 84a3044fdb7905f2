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

import enum
import hashlib
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

import yaml

from orchestrator.config.scheduler import KEYS as SCHEDULER_KEYS
from orchestrator.config.scheduler import Scheduler, parse_scheduler
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


_TOP_KEYS = {"defaults", "nodes", "hosts", "known_hosts", "host_key_policy", "ssh_config",
             *SCHEDULER_KEYS}
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
_HOSTNAME_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_USER = re.compile(r"^[A-Za-z0-9._][A-Za-z0-9._-]{0,63}$")


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
        raise InventoryError(src, "", f"expected a mapping at top level, got {_show(doc)}")
    _reject_unknown(src, "", doc, _TOP_KEYS)
    defaults = doc.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise InventoryError(src, "defaults", f"expected a mapping, got {_show(defaults)}")
    _reject_unknown(src, "defaults", defaults, _DEFAULT_KEYS)
    entries = _node_entries(src, doc)
    nodes = tuple(_parse_node(src, f"nodes[{i}]", defaults, e) for i, e in enumerate(entries))
    _reject_duplicates(src, nodes)
    return Inventory(
        path=Path(src),
        nodes=nodes,
        digest=digest or hashlib.sha256(text.encode()).hexdigest(),
        known_hosts=tuple(_paths(src, "known_hosts", doc.get("known_hosts"))),
        host_key_policy=_enum(
            src, "host_key_policy", doc.get("host_key_policy", "strict"), HostKeyPolicy
        ),
        ssh_config=_path_or_none(src, "ssh_config", doc.get("ssh_config")),
        scheduler=parse_scheduler(src, doc),
    )


def _node_entries(src: str, doc: dict[str, Any]) -> list[dict[str, Any]]:
    if "nodes" in doc and "hosts" in doc:
        raise InventoryError(src, "hosts", "give either `nodes` or the `hosts` shorthand, not both")
    if "hosts" in doc:
        hosts = doc["hosts"]
        if not isinstance(hosts, list):
            raise InventoryError(src, "hosts", f"expected a list of addresses, got {_show(hosts)}")
        entries: list[Any] = [{"host": h} for h in hosts]
        key = "hosts"
    else:
        nodes = doc.get("nodes")
        key = "nodes"
        if nodes is None:
            raise InventoryError(src, "nodes", "missing: list the nodes (or use `hosts: [...]`)")
        if not isinstance(nodes, list):
            raise InventoryError(src, "nodes", f"expected a list of mappings, got {_show(nodes)}")
        entries = nodes
    if not entries:
        raise InventoryError(src, key, "empty: an inventory needs at least one node")
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise InventoryError(src, f"nodes[{i}]", f"expected a mapping, got {_show(e)}")
    return entries


def _parse_node(src: str, key: str, defaults: dict[str, Any], entry: dict[str, Any]) -> Node:
    _reject_unknown(src, key, entry, _NODE_KEYS)
    if "host" not in entry:
        raise InventoryError(src, f"{key}.host", "missing")

    def pick(name: str) -> tuple[str, Any]:
        if name in entry:
            return f"{key}.{name}", entry[name]
        return f"defaults.{name}", defaults.get(name)

    host = _host(src, f"{key}.host", entry["host"])
    name = _name(src, f"{key}.name", entry.get("name", host))
    connection = _enum(src, *_default(pick("connection"), "ssh"), Connection)
    return Node(
        name=name,
        host=host,
        user=_opt_user(src, *pick("user")),
        port=_opt_port(src, *pick("port")),
        devices=_devices(src, *_default(pick("devices"), 8)),
        workdir=_workdir(src, *_default(pick("workdir"), DEFAULT_WORKDIR), connection),
        python=_nonempty(src, *_default(pick("python"), DEFAULT_PYTHON)),
        env=MappingProxyType(_env(src, *_default(pick("env"), {}))),
        device_ips=_device_ips(src, f"{key}.device_ips", entry.get("device_ips")),
        connection=connection,
        identity_file=_opt_str(src, *pick("identity_file")),
        super_pod_id=_opt_str(src, *pick("super_pod_id"), allow_int=True),
        data_dir=_path_or_none_posix(src, *pick("data_dir")),
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


def _show(value: Any) -> str:
    """A value as it appears in messages: repr for scalars, the type for containers."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


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


def _host(src: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not is_valid_host(value):
        raise InventoryError(src, key, f"expected an IPv4 address or host name, got {_show(value)}")
    return value


def _name(src: str, key: str, value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if (
        not isinstance(value, str)
        or not value
        or len(value) > 64
        or "/" in value
        or value in (".", "..")
        or any(ord(c) < 32 or ord(c) == 127 for c in value)
    ):
        raise InventoryError(
            src,
            key,
            f"expected a name of 1..64 printable characters without '/', got {_show(value)}",
        )
    return value


def _opt_user(src: str, key: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _USER.match(value):
        raise InventoryError(src, key, f"expected a user name, got {_show(value)}")
    return value


def _opt_port(src: str, key: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InventoryError(src, key, f"expected an integer 1..65535, got {_show(value)}")
    return value


def _devices(src: str, key: str, value: Any) -> tuple[int, ...]:
    limit = MAX_DEVICE_ID + 1
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= limit:
            raise InventoryError(src, key, f"expected a device count 1..{limit}, got {value!r}")
        return tuple(range(value))
    if not isinstance(value, list) or not value:
        raise InventoryError(
            src,
            key,
            f"expected a count 1..{limit} or a non-empty list of device ids, got {_show(value)}",
        )
    seen: set[int] = set()
    for i, d in enumerate(value):
        if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d <= MAX_DEVICE_ID:
            raise InventoryError(
                src, f"{key}[{i}]", f"expected a device id 0..{MAX_DEVICE_ID}, got {_show(d)}"
            )
        if d in seen:
            raise InventoryError(src, f"{key}[{i}]", f"duplicate device id {d}")
        seen.add(d)
    return tuple(sorted(seen))


def _workdir(src: str, key: str, value: Any, connection: Connection) -> PurePosixPath:
    if not isinstance(value, str) or not value or "\0" in value or "\n" in value:
        raise InventoryError(src, key, f"expected a directory path, got {_show(value)}")
    ok = value.startswith("/") or value == "~" or value.startswith("~/")
    if not ok and connection is not Connection.LOCAL:
        raise InventoryError(src, key, f"expected an absolute path or one under ~/, got {value!r}")
    return PurePosixPath(value)


def _nonempty(src: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or "\n" in value:
        raise InventoryError(src, key, f"expected a non-empty string, got {_show(value)}")
    return value


def _opt_str(src: str, key: str, value: Any, allow_int: bool = False) -> str | None:
    if value is None:
        return None
    if allow_int and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _nonempty(src, key, value)


def _env(src: str, key: str, value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise InventoryError(src, key, f"expected a mapping NAME: value, got {_show(value)}")
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not _ENV_NAME.match(k):
            raise InventoryError(src, f"{key}.{k}", "expected an environment variable name")
        if isinstance(v, bool):
            v = "1" if v else "0"
        if not isinstance(v, (str, int, float)):
            raise InventoryError(src, f"{key}.{k}", f"expected a scalar value, got {_show(v)}")
        out[k] = str(v)
    return out


def _device_ips(src: str, key: str, value: Any) -> Mapping[int, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        raise InventoryError(src, key, f"expected a mapping device_id: IPv4, got {_show(value)}")
    out: dict[int, str] = {}
    for k, v in value.items():
        dev = int(k) if isinstance(k, str) and k.isdigit() else k
        if isinstance(dev, bool) or not isinstance(dev, int) or not 0 <= dev <= MAX_DEVICE_ID:
            raise InventoryError(
                src, f"{key}.{k}", f"expected a device id 0..{MAX_DEVICE_ID}, got {_show(k)}"
            )
        if not isinstance(v, str) or not is_valid_ipv4(v):
            raise InventoryError(src, f"{key}.{k}", f"expected an IPv4 address, got {_show(v)}")
        out[dev] = v
    return MappingProxyType(out)


def _enum(src: str, key: str, value: Any, kind: type[enum.Enum]) -> Any:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(str(m.value) for m in kind)
        raise InventoryError(src, key, f"expected one of {allowed}, got {_show(value)}") from None


def _paths(src: str, key: str, value: Any) -> list[Path]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    base = Path(src).parent
    out = []
    for i, v in enumerate(items):
        if not isinstance(v, str) or not v:
            raise InventoryError(src, f"{key}[{i}]", f"expected a file path, got {_show(v)}")
        p = Path(v).expanduser()
        out.append(p if p.is_absolute() else base / p)
    return out


def _path_or_none(src: str, key: str, value: Any) -> Path | None:
    paths = _paths(src, key, value)
    return paths[0] if paths else None


def _path_or_none_posix(src: str, key: str, value: Any) -> PurePosixPath | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/"):
        raise InventoryError(src, key, f"expected an absolute path, got {_show(value)}")
    return PurePosixPath(value)
