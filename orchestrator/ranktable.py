"""Pure HCCL rank-table logic: rank ranges, per-server and merged tables, merge, validation.

    orchestrate ranktable --inventory inventories/12node.yaml --per-server-dir tables/
    orchestrate ranktable merge hccl_8p_01234567_192.168.0.*.json -o hccl_12s_96p.json
    orchestrate ranktable check hccl_12s_96p.json

Format 1.0 is exactly what MindFormers' hccl_tools.py / merge_hccl.py write, every value a
string, keys in this order:

    {"version": "1.0", "server_count": "<n>",
     "server_list": [{"server_id": "<host ip>",
                      "device": [{"device_id": "<id>", "device_ip": "<ip>", "rank_id": "<r>"}],
                      "host_nic_ip": "reserve"}],
     "status": "completed"}

Format 1.2 (Atlas A3 SuperPoD) adds, per device, `super_device_id` (the SDID that
`npu-smi info -t spod-info` reports) between `device_ip` and `rank_id`, and after `server_list`
a `super_pod_list`: `[{"super_pod_id": "<id>", "server_list": [{"server_id": "<ip>"}]}]`, pods
in dictionary order of their id, servers in rank order; `version` is "1.2", the rest as in 1.0
(`host_nic_ip` stays "reserve"). `super_pod_id` is the node's `super_pod_id` in the inventory
(a logical pod, as HCCL_LOGIC_SUPERPOD_ID allows). The optional fields of CANN's A3 example
(`host_ip`, `device_port`, `backup_device_ip`, ...) are not written.

MindSpore numbers ranks in the dictionary order of `server_id` (192.168.0.10 sorts before
192.168.0.2), devices ascending within a server. `node_rank_ranges` is the one place that
order is computed; `plan`, `up` and `build_tables` (which numbers the merged table) use it.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from orchestrator.errors import RankTableError
from orchestrator.inventory import Inventory, Node

VERSION_1_0 = "1.0"
VERSION_1_2 = "1.2"  # Atlas A3 SuperPoD: super_device_id + super_pod_list
VERSIONS = (VERSION_1_0, VERSION_1_2)
HOST_NIC_IP = "reserve"
STATUS_COMPLETED = "completed"
GROUP_SIZE = 4  # hccl_tools: devices 0-3 and 4-7 (and 8-11, 12-15) form groups
FULL_RANGES = ((0, 8), (0, 16))  # the only ranges allowed to span several groups


@dataclass(frozen=True)
class NodeRanks:
    """A node's contiguous block of global ranks: [rank_start, rank_end)."""

    node: Node
    rank_start: int
    rank_end: int  # exclusive

    @property
    def ranks(self) -> range:
        return range(self.rank_start, self.rank_end)


def node_rank_ranges(inv: Inventory) -> tuple[NodeRanks, ...]:
    """Every node's rank range, in rank order. The one function `plan`, `ranktable` and `up` use."""
    out = []
    start = 0
    for node in inv.in_rank_order():
        out.append(NodeRanks(node=node, rank_start=start, rank_end=start + node.device_count))
        start += node.device_count
    return tuple(out)


@dataclass(frozen=True)
class RankDevice:
    """One device (one rank) of a server; its rank id is the server's `rank_start` + position."""

    device_id: int  # local device id on the server (DEVICE_ID)
    device_ip: str  # the device's NIC address (hccn_tool / hccn.conf)
    super_device_id: str | None = None  # SDID, format 1.2 only


@dataclass(frozen=True)
class RankServer:
    """One server of a rank table: a contiguous block of ranks, devices in ascending id.

    Every valid table has this shape (`validate_doc` checks it), so rank ids are not stored
    per device: renumbering a server for a merge replaces one integer.
    """

    server_id: str  # the host address (inventory `host`)
    devices: tuple[RankDevice, ...]  # ascending device id
    rank_start: int = 0  # rank id of the first device (0 in a per-server table)
    super_pod_id: str | None = None  # format 1.2 only

    @property
    def rank_end(self) -> int:
        return self.rank_start + len(self.devices)


@dataclass(frozen=True)
class RankTable:
    """A whole rank table (per-server or merged)."""

    servers: tuple[RankServer, ...]  # in table order
    version: str = VERSION_1_0

    @property
    def world_size(self) -> int:
        return sum(len(s.devices) for s in self.servers)

    def rank_ranges(self) -> dict[str, tuple[int, int]]:
        """server_id -> (first rank, last rank + 1) as written in the table."""
        return {s.server_id: (s.rank_start, s.rank_end) for s in self.servers}

    def to_json(self) -> dict[str, Any]:
        """The table as MindFormers writes it: keys in its order, every value a string."""
        v12 = self.version == VERSION_1_2
        doc: dict[str, Any] = {
            "version": self.version,
            "server_count": str(len(self.servers)),
            "server_list": [_server_json(s, v12) for s in self.servers],
        }
        if v12:
            doc["super_pod_list"] = _super_pod_list(self.servers)
        doc["status"] = STATUS_COMPLETED
        return doc

    def dumps(self) -> str:
        """`json.dumps(self.to_json(), indent=4)` plus a newline, byte for byte, ~10x faster.

        (json's indenting encoder is pure Python; the layout here is fixed, so each device is
        one f-string and only the strings that may need escaping go through json's encoder.)
        """
        if not self.servers or not all(s.devices for s in self.servers):
            return _render(self.to_json(), 0) + "\n"
        v12 = self.version == VERSION_1_2
        enc = _encode_str
        pad_d = " " * 20
        servers = []
        for s in self.servers:
            devices = []
            for rank, d in enumerate(s.devices, start=s.rank_start):
                sdid = (f'\n{pad_d}"super_device_id": {enc(str(d.super_device_id))},' if v12
                        else "")
                devices.append(f'                {{\n{pad_d}"device_id": "{d.device_id}",\n'
                               f'{pad_d}"device_ip": {enc(d.device_ip)},{sdid}\n'
                               f'{pad_d}"rank_id": "{rank}"\n                }}')
            servers.append(f'        {{\n            "server_id": {enc(s.server_id)},\n'
                           f'            "device": [\n' + ",\n".join(devices)
                           + f'\n            ],\n            "host_nic_ip": {enc(HOST_NIC_IP)}'
                           f'\n        }}')
        pods = (",\n    \"super_pod_list\": " + _render(_super_pod_list(self.servers), 1)
                if v12 else "")
        return (f'{{\n    "version": {enc(self.version)},\n'
                f'    "server_count": "{len(self.servers)}",\n    "server_list": [\n'
                + ",\n".join(servers) + f"\n    ]{pods},\n"
                f'    "status": {enc(STATUS_COMPLETED)}\n}}\n')


_encode_str = json.encoder.encode_basestring_ascii  # the C string encoder json.dumps uses


def _render(value: Any, level: int) -> str:
    """`json.dumps(value, indent=4)` for dicts, lists and strings (C string encoder)."""
    if isinstance(value, str):
        return _encode_str(value)
    pad = "    " * (level + 1)
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{pad}{_encode_str(k)}: "
                 f"{_encode_str(v) if type(v) is str else _render(v, level + 1)}"
                 for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + "    " * level + "}"
    if isinstance(value, list):
        if not value:
            return "[]"
        items = [pad + _render(v, level + 1) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + "    " * level + "]"
    return json.dumps(value)


def _server_json(s: RankServer, v12: bool) -> dict[str, Any]:
    if v12:
        devices = [{"device_id": str(d.device_id), "device_ip": d.device_ip,
                    "super_device_id": str(d.super_device_id), "rank_id": str(rank)}
                   for rank, d in enumerate(s.devices, start=s.rank_start)]
    else:
        devices = [{"device_id": str(d.device_id), "device_ip": d.device_ip, "rank_id": str(rank)}
                   for rank, d in enumerate(s.devices, start=s.rank_start)]
    return {"server_id": s.server_id, "device": devices, "host_nic_ip": HOST_NIC_IP}


def _super_pod_list(servers: Sequence[RankServer]) -> list[dict[str, Any]]:
    pods: dict[str, list[str]] = {}
    for s in servers:
        pods.setdefault(str(s.super_pod_id), []).append(s.server_id)
    return [{"super_pod_id": pod, "server_list": [{"server_id": sid} for sid in pods[pod]]}
            for pod in sorted(pods)]


# --- device ranges (hccl_tools' rules) ------------------------------------------------------


def check_device_range(devices: Sequence[int], where: str) -> None:
    """Refuse device sets that hccl_tools' `--device_num "[a,b)"` cannot express.

    The devices must be one contiguous range [a, b) with b <= 16, and must stay inside one
    group of 4 devices ([0,4), [4,8), [8,12), [12,16)) unless they are all of [0,8) or [0,16).

    Args:
        devices: the node's device ids.
        where: names the node in the message (e.g. "node 192.168.0.3").

    Raises:
        RankTableError: naming the node, the devices and the rule broken.
    """
    ids = sorted(devices)
    if not ids:
        raise RankTableError(f"{where}: no devices")
    first, end = ids[0], ids[-1] + 1
    if ids != list(range(first, end)):
        raise RankTableError(
            f"{where}: devices {ids} are not contiguous; a rank table (like hccl_tools "
            f"--device_num \"[a,b)\") needs one range of consecutive device ids")
    if first < 0 or end > 16:
        raise RankTableError(f"{where}: devices [{first},{end}) are outside [0,16)")
    if (first, end) in FULL_RANGES:
        return
    if first // GROUP_SIZE != (end - 1) // GROUP_SIZE:
        boundary = (first // GROUP_SIZE + 1) * GROUP_SIZE
        raise RankTableError(
            f"{where}: devices [{first},{end}) cross the {GROUP_SIZE}-device group boundary at "
            f"{boundary}; use a range inside one group ([0,4), [4,8), [8,12), [12,16)) or all "
            f"of [0,8) or [0,16)")


# --- building tables -----------------------------------------------------------------------


def per_server_table(server_id: str, devices: Sequence[int], device_ips: Mapping[int, str], *,
                     version: str = VERSION_1_0,
                     super_device_ids: Mapping[int, str] | None = None,
                     super_pod_id: str | None = None, first_rank: int = 0,
                     label: str | None = None) -> RankTable:
    """One server's table, as hccl_tools writes it on that server (ranks from `first_rank`).

    `label` names the node in messages (default: the server id).

    Raises:
        RankTableError: the device range breaks hccl_tools' rules, or a device has no IP
            (or no super_device_id in format 1.2).
    """
    where = f"node {label or server_id}"
    check_device_range(devices, where)
    ids = sorted(devices)
    missing = [d for d in ids if d not in device_ips]
    if missing:
        known = ", ".join(str(d) for d in sorted(device_ips)) or "none"
        raise RankTableError(f"{where}: no device IP for device(s) "
                             f"{', '.join(map(str, missing))} (known: {known})")
    sdids: Mapping[int, str] = {}
    if version == VERSION_1_2:
        sdids = super_device_ids or {}
        lacking = [d for d in ids if d not in sdids]
        if lacking:
            raise RankTableError(f"{where}: no super_device_id for device(s) "
                                 f"{', '.join(map(str, lacking))}; format 1.2 needs the SDID "
                                 f"of every device (npu-smi info -t spod-info)")
        if super_pod_id is None:
            raise RankTableError(f"{where}: format 1.2 needs `super_pod_id` in the inventory")
    elif version != VERSION_1_0:
        raise RankTableError(f"unknown rank table format {version!r} "
                             f"(known: {', '.join(VERSIONS)})")
    dev = tuple(RankDevice(device_id=d, device_ip=device_ips[d], super_device_id=sdids.get(d))
                for d in ids)
    server = RankServer(server_id=server_id, devices=dev, rank_start=first_rank,
                        super_pod_id=super_pod_id if version == VERSION_1_2 else None)
    return RankTable(servers=(server,), version=version)


def build_tables(inv: Inventory, device_ips: Mapping[str, Mapping[int, str]], *,
                 version: str = VERSION_1_0,
                 super_device_ids: Mapping[str, Mapping[int, str]] | None = None,
                 ) -> tuple[RankTable, tuple[RankTable, ...]]:
    """The merged table and each node's per-server table, both in rank order.

    Args:
        inv: the inventory; each node's `host` is its server_id.
        device_ips: node name -> device id -> IP (see `resolve_device_ips`).
        version: "1.0" or "1.2".
        super_device_ids: node name -> device id -> SDID (format 1.2 only).

    Raises:
        RankTableError: duplicate server ids, device-range rules, missing IPs or SDIDs.
    """
    _reject_duplicate_hosts(inv)
    if version == VERSION_1_2:
        no_pod = [n.name for n in inv.nodes if n.super_pod_id is None]
        if no_pod:
            raise RankTableError(
                f"format 1.2 needs `super_pod_id` for every node in {inv.path}; missing for: "
                f"{', '.join(no_pod)}")
    per_server = []
    merged = []
    for r in node_rank_ranges(inv):
        node = r.node
        if node.name not in device_ips:
            raise RankTableError(f"node {node.name}: no device IPs")
        sdids = (super_device_ids or {}).get(node.name)
        one = per_server_table(node.host, node.devices, device_ips[node.name], version=version,
                               super_device_ids=sdids, super_pod_id=node.super_pod_id,
                               label=node.name if node.name == node.host
                               else f"{node.name} ({node.host})")
        per_server.append(one)
        merged.append(replace(one.servers[0], rank_start=r.rank_start))
    return RankTable(servers=tuple(merged), version=version), tuple(per_server)


def _reject_duplicate_hosts(inv: Inventory) -> None:
    seen: dict[str, str] = {}
    for n in inv.nodes:
        if n.host in seen:
            raise RankTableError(f"{inv.path}: nodes {seen[n.host]} and {n.name} share host "
                                 f"{n.host}; a rank table needs one server_id per server")
        seen[n.host] = n.name


def resolve_device_ips(inv: Inventory, discovered: Mapping[str, Mapping[int, str]] | None = None,
                       ) -> dict[str, Mapping[int, str]]:
    """Device IPs per node name: the inventory's `device_ips` first, else `discovered`.

    Raises:
        RankTableError: some nodes have neither (names them and says what to do).
    """
    out: dict[str, Mapping[int, str]] = {}
    missing = []
    for n in inv.nodes:
        if n.device_ips is not None:
            out[n.name] = n.device_ips
        elif discovered is not None and n.name in discovered:
            out[n.name] = discovered[n.name]
        else:
            missing.append(n.name)
    if missing:
        shown = ", ".join(missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20
                                           else "")
        hint = ("discovery found none for them" if discovered is not None else
                "add `device_ips: {0: <ip>, ...}` to these nodes or run with --discover "
                "(hccn_tool / /etc/hccn.conf over SSH)")
        raise RankTableError(f"{inv.path}: device IPs are needed for {len(missing)} node(s) "
                             f"without `device_ips`: {shown}; {hint}")
    return out


def nodes_needing_discovery(inv: Inventory) -> tuple[Node, ...]:
    """Nodes whose device IPs are not in the inventory."""
    return tuple(n for n in inv.nodes if n.device_ips is None)


# --- file names ----------------------------------------------------------------------------


def per_server_filename(table: RankTable) -> str:
    """hccl_tools' name: `hccl_<k>p_<device ids concatenated>_<server ip>.json`."""
    if len(table.servers) != 1:
        raise RankTableError(f"a per-server table has one server, not {len(table.servers)}")
    s = table.servers[0]
    ids = "".join(str(d.device_id) for d in s.devices)
    return f"hccl_{len(s.devices)}p_{ids}_{s.server_id}.json"


def merged_filename(table: RankTable) -> str:
    """merge_hccl's name: `hccl_<n>s_<total>p.json`."""
    return f"hccl_{len(table.servers)}s_{table.world_size}p.json"


# --- merge ---------------------------------------------------------------------------------


def merge_tables(tables: Sequence[RankTable], sources: Sequence[str] | None = None) -> RankTable:
    """Merge tables into one: servers sorted by server_id as strings, ranks renumbered from 0.

    Unlike merge_hccl.py, which keeps the order of its arguments, the result follows
    MindSpore's rule whatever order the inputs come in.

    Raises:
        RankTableError: no tables, mixed versions, or a server_id found twice (names sources).
    """
    if not tables:
        raise RankTableError("nothing to merge")
    names = list(sources) if sources is not None else [f"table {i}" for i in range(len(tables))]
    versions = {t.version for t in tables}
    if len(versions) > 1:
        raise RankTableError(f"cannot merge tables of versions {', '.join(sorted(versions))}")
    origin: dict[str, str] = {}
    servers = []
    for name, t in zip(names, tables, strict=True):
        for s in t.servers:
            if s.server_id in origin:
                raise RankTableError(f"server_id {s.server_id} is in both {origin[s.server_id]} "
                                     f"and {name}")
            origin[s.server_id] = name
            servers.append(s)
    servers.sort(key=lambda s: s.server_id)
    out = []
    start = 0
    for s in servers:
        out.append(replace(s, rank_start=start))
        start += len(s.devices)
    return RankTable(servers=tuple(out), version=versions.pop())


# --- parsing and validation ----------------------------------------------------------------

_TOP_KEYS = ("version", "server_count", "server_list", "status")
_SERVER_KEYS = ("server_id", "device")
_DEVICE_KEYS = ("device_id", "device_ip", "rank_id")
_DEVICE_KEYS_SET = frozenset(_DEVICE_KEYS)
_DEVICE_KEYS_V12 = frozenset(_DEVICE_KEYS + ("super_device_id",))
_DIGITS = re.compile(r"[0-9]+")
_DOTTED = re.compile(r"[0-9.]+")
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


def is_valid_ipv4(text: str) -> bool:
    """Dotted-quad IPv4 without leading zeros (what `ipaddress.IPv4Address` accepts), fast."""
    return _IPV4.fullmatch(text) is not None


def validate_text(text: str) -> list[str]:
    """Every problem of a rank table given as JSON text, in a stable order (empty: valid)."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        return [f"bad JSON at line {e.lineno}, column {e.colno}: {e.msg}"]
    return validate_doc(doc)


def validate_doc(doc: Any) -> list[str]:
    """Every problem of a parsed rank table (format 1.0, or 1.2 with its extra fields).

    Checks: required keys, every value a string, version/status, server_count, duplicate
    server ids, duplicate device ids in a server, duplicate device IPs across the cluster,
    rank ids exactly 0..N-1, rank order = dictionary order of server_id with devices
    ascending, IPv4 addresses, and (1.2) super_device_id / super_pod_list.
    """
    problems: list[str] = []
    if not isinstance(doc, dict):
        return [f"expected a JSON object at top level, got {type(doc).__name__}"]
    for key in _TOP_KEYS:
        if key not in doc:
            problems.append(f"missing key `{key}`")
    for key in ("version", "server_count", "status"):
        if key in doc and not isinstance(doc[key], str):
            problems.append(f"`{key}` must be a string, got {doc[key]!r}")
    version = doc.get("version")
    v12 = version == VERSION_1_2
    if isinstance(version, str) and version not in VERSIONS:
        problems.append(f"`version` is {version!r}, expected one of {', '.join(VERSIONS)}")
    if isinstance(doc.get("status"), str) and doc["status"] != STATUS_COMPLETED:
        problems.append(f"`status` is {doc['status']!r}, expected {STATUS_COMPLETED!r}")
    servers = doc.get("server_list")
    if "server_list" in doc and not isinstance(servers, list):
        problems.append(f"`server_list` must be a list, got {type(servers).__name__}")
        servers = []
    if isinstance(servers, list) and not servers:
        problems.append("`server_list` is empty")
    servers = servers or []
    count = doc.get("server_count")
    if isinstance(count, str) and "server_list" in doc:
        if not _DIGITS.fullmatch(count):
            problems.append(f"`server_count` {count!r} is not a number")
        elif int(count) != len(servers):
            problems.append(f"`server_count` is {count} but `server_list` has {len(servers)} "
                            f"server(s)")
    parsed = _check_servers(servers, v12, problems)
    _check_duplicates(parsed, problems)
    _check_ranks(parsed, problems)
    if v12:
        _check_super_pods(doc, parsed, problems)
    return problems


@dataclass
class _Seen:
    """What the validator could read of one server (None where unreadable)."""

    index: int  # position in server_list
    where: str
    server_id: str | None
    devices: list[tuple[int, int | None, str | None, int | None]]  # index, dev id, ip, rank

    def device(self, j: int) -> str:
        """Where device `j` of this server is, for messages."""
        return f"{self.where} device[{j}]"


def _check_servers(servers: list[Any], v12: bool, problems: list[str]) -> list[_Seen]:
    out = []
    for i, s in enumerate(servers):
        where = f"server_list[{i}]"
        if not isinstance(s, dict):
            problems.append(f"{where}: expected an object, got {type(s).__name__}")
            continue
        sid = _string(s, "server_id", where, problems)
        if sid is not None:
            where = f"{where} ({sid})"
            if _DOTTED.fullmatch(sid) and not is_valid_ipv4(sid):
                problems.append(f"{where}: server_id {sid!r} is not a valid IPv4 address")
        for key in _SERVER_KEYS:
            if key not in s:
                problems.append(f"{where}: missing key `{key}`")
        if "host_nic_ip" in s:
            _string(s, "host_nic_ip", where, problems)
        devices = s.get("device", [])
        if not isinstance(devices, list):
            problems.append(f"{where}: `device` must be a list, got {type(devices).__name__}")
            devices = []
        if "device" in s and not devices:
            problems.append(f"{where}: `device` is empty")
        seen = _Seen(index=i, where=where, server_id=sid, devices=[])
        need = _DEVICE_KEYS_V12 if v12 else _DEVICE_KEYS_SET
        for j, d in enumerate(devices):
            if type(d) is dict and d.keys() >= need:  # fast path for well-formed devices
                dev_id, ip, rank = d["device_id"], d["device_ip"], d["rank_id"]
                if (type(dev_id) is str and type(rank) is str and type(ip) is str
                        and _DIGITS.fullmatch(dev_id) and _DIGITS.fullmatch(rank)
                        and _IPV4.fullmatch(ip)
                        and (not v12 or (type(d["super_device_id"]) is str
                                         and _DIGITS.fullmatch(d["super_device_id"])))):
                    seen.devices.append((j, int(dev_id), ip, int(rank)))
                    continue
            dwhere = seen.device(j)
            if not isinstance(d, dict):
                problems.append(f"{dwhere}: expected an object, got {type(d).__name__}")
                continue
            for key in _DEVICE_KEYS + (("super_device_id",) if v12 else ()):
                if key not in d:
                    problems.append(f"{dwhere}: missing key `{key}`")
            dev_id = _number(d, "device_id", dwhere, problems)
            ip = _string(d, "device_ip", dwhere, problems)
            if ip is not None and not is_valid_ipv4(ip):
                problems.append(f"{dwhere}: device_ip {ip!r} is not a valid IPv4 address")
            rank = _number(d, "rank_id", dwhere, problems)
            if v12:
                _number(d, "super_device_id", dwhere, problems)
            seen.devices.append((j, dev_id, ip, rank))
        out.append(seen)
    return out


def _string(obj: dict[str, Any], key: str, where: str, problems: list[str]) -> str | None:
    if key not in obj:
        return None
    value = obj[key]
    if not isinstance(value, str):
        problems.append(f"{where}: `{key}` must be a string, got {value!r}")
        return None
    return value


def _number(obj: dict[str, Any], key: str, where: str, problems: list[str]) -> int | None:
    value = _string(obj, key, where, problems)
    if value is None:
        return None
    if not _DIGITS.fullmatch(value):
        problems.append(f"{where}: `{key}` {value!r} is not a non-negative integer")
        return None
    return int(value)


def _check_duplicates(servers: list[_Seen], problems: list[str]) -> None:
    by_id: dict[str, str] = {}
    by_ip: dict[str, tuple[_Seen, int]] = {}
    for s in servers:
        if s.server_id is not None:
            if s.server_id in by_id:
                problems.append(f"duplicate server_id {s.server_id!r} in {by_id[s.server_id]} "
                                f"and {s.where}")
            else:
                by_id[s.server_id] = s.where
        ids: dict[int, int] = {}
        for j, dev_id, ip, _rank in s.devices:
            if dev_id is not None:
                if dev_id in ids:
                    problems.append(f"{s.where}: duplicate device_id {dev_id} in "
                                    f"{s.device(ids[dev_id])} and {s.device(j)}")
                else:
                    ids[dev_id] = j
            if ip is not None:
                if ip in by_ip:
                    first, k = by_ip[ip]
                    problems.append(f"duplicate device_ip {ip} in {first.device(k)} and "
                                    f"{s.device(j)}")
                else:
                    by_ip[ip] = (s, j)


def _check_ranks(servers: list[_Seen], problems: list[str]) -> None:
    ranks = [r for s in servers for (_w, _d, _ip, r) in s.devices]
    if not ranks or any(r is None for r in ranks):
        return  # already reported
    total = len(ranks)
    present = sorted(r for r in ranks if r is not None)
    if present != list(range(total)):
        dup = sorted(r for r, k in Counter(present).items() if k > 1)
        gaps = sorted(set(range(total)) - set(present))
        extra = sorted(r for r in set(present) if r >= total)
        detail = "; ".join(x for x in (
            f"duplicated: {_short(dup)}" if dup else "",
            f"missing: {_short(gaps)}" if gaps else "",
            f"out of range: {_short(extra)}" if extra else "") if x)
        problems.append(f"rank ids are not 0..{total - 1} each once ({detail})")
        return
    if any(s.server_id is None or any(d is None for (_w, d, _i, _r) in s.devices)
           for s in servers):
        return
    expected = 0
    for s in sorted(servers, key=lambda s: s.server_id or ""):
        for j, _dev, _ip, rank in sorted(s.devices, key=lambda t: t[1] or 0):
            if rank != expected:
                problems.append(
                    f"rank order does not follow the dictionary order of server_id (devices "
                    f"ascending): {s.device(j)} has rank_id {rank}, expected {expected}")
                return
            expected += 1


def _short(values: list[int]) -> str:
    shown = ", ".join(map(str, values[:10]))
    return shown + (f" ... ({len(values)} in all)" if len(values) > 10 else "")


def _check_super_pods(doc: dict[str, Any], servers: list[_Seen], problems: list[str]) -> None:
    pods = doc.get("super_pod_list")
    if not isinstance(pods, list):
        problems.append("format 1.2: missing or malformed `super_pod_list`")
        return
    listed: dict[str, str] = {}
    for i, p in enumerate(pods):
        where = f"super_pod_list[{i}]"
        if not isinstance(p, dict) or not isinstance(p.get("server_list"), list):
            problems.append(f"{where}: expected an object with `super_pod_id` and `server_list`")
            continue
        pod = _string(p, "super_pod_id", where, problems)
        if "super_pod_id" not in p:
            problems.append(f"{where}: missing key `super_pod_id`")
        for j, entry in enumerate(p["server_list"]):
            sid = _string(entry, "server_id", f"{where}.server_list[{j}]", problems) \
                if isinstance(entry, dict) else None
            if sid is None:
                problems.append(f"{where}.server_list[{j}]: expected {{\"server_id\": ...}}")
            elif sid in listed:
                problems.append(f"server_id {sid} is in {listed[sid]} and super pod {pod}")
            else:
                listed[sid] = f"super pod {pod}"
    sdid_at: dict[tuple[str, str], str] = {}  # (super pod, SDID) -> where; HCCL needs unique
    raw: list[Any] = doc.get("server_list") or []
    for s in servers:
        if s.server_id is not None and s.server_id not in listed:
            problems.append(f"{s.where}: not listed in any super pod of `super_pod_list`")
            continue
        raw_devices = raw[s.index].get("device")
        for j, _dev, _ip, _rank in s.devices:
            sdid = raw_devices[j].get("super_device_id")
            if not isinstance(sdid, str) or s.server_id is None:
                continue  # reported already
            key = (listed[s.server_id], sdid)
            if key in sdid_at:
                problems.append(f"duplicate super_device_id {sdid} in {key[0]}: "
                                f"{sdid_at[key]} and {s.device(j)}")
            else:
                sdid_at[key] = s.device(j)


def parse_table(text: str, source: str) -> RankTable:
    """Parse and validate a rank table; RankTableError lists every problem of `source`."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        doc = None
    problems = validate_doc(doc) if doc is not None else validate_text(text)
    if problems:
        text = "; ".join(problems)  # values from the file may hold newlines: escape them
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
        raise RankTableError(f"{source}: {len(problems)} problem(s): {text}")
    v12 = doc["version"] == VERSION_1_2
    pod_of: dict[str, str] = {}
    if v12:
        for p in doc["super_pod_list"]:
            for entry in p["server_list"]:
                pod_of[entry["server_id"]] = p["super_pod_id"]
    servers = []
    for s in doc["server_list"]:
        devs = sorted(s["device"], key=lambda d: int(d["device_id"]))  # ranks follow (validated)
        servers.append(RankServer(
            server_id=s["server_id"], rank_start=int(devs[0]["rank_id"]),
            super_pod_id=pod_of.get(s["server_id"]),
            devices=tuple(RankDevice(device_id=int(d["device_id"]), device_ip=d["device_ip"],
                                     super_device_id=d["super_device_id"] if v12 else None)
                          for d in devs)))
    return RankTable(servers=tuple(servers), version=doc["version"])


# --- files ---------------------------------------------------------------------------------


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temp file in the same folder and os.replace.

    Raises:
        RankTableError: the folder cannot be created or written (names the path).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise RankTableError(f"{path}: cannot write: {e.strerror}") from e
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise RankTableError(f"{path}: cannot write: {e.strerror}") from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_tables(merged: RankTable, merged_path: Path, per_server: Iterable[RankTable] = (),
                 per_server_dir: Path | None = None) -> list[Path]:
    """Write the merged table and (with a folder) each per-server table; returns the paths."""
    written = []
    if per_server_dir is not None:
        for t in per_server:
            p = Path(per_server_dir) / per_server_filename(t)
            write_text_atomic(p, t.dumps())
            written.append(p)
    write_text_atomic(merged_path, merged.dumps())
    written.append(Path(merged_path))
    return written
