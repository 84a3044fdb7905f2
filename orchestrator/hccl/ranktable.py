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

from collections.abc import Iterable, Mapping, Sequence
from itertools import accumulate, repeat
from pathlib import Path
from typing import Any, NamedTuple

from orchestrate_bloom.fileio import write_atomic

from orchestrator.config.inventory import Inventory, Node
from orchestrator.errors import RankTableError

VERSION_1_0 = "1.0"
VERSION_1_2 = "1.2"  # Atlas A3 SuperPoD: super_device_id + super_pod_list
VERSIONS = (VERSION_1_0, VERSION_1_2)
HOST_NIC_IP = "reserve"
STATUS_COMPLETED = "completed"
GROUP_SIZE = 4  # hccl_tools: devices 0-3 and 4-7 (and 8-11, 12-15) form groups
FULL_RANGES = ((0, 8), (0, 16))  # the only ranges allowed to span several groups
# Builds a NamedTuple from a tuple in C (the NamedTuples' own __new__ is Python code): tables
# of 1,024 servers x 8 devices are built in one go (bench/ranktable.py).
_new_tuple = tuple.__new__


class NodeRanks(NamedTuple):
    """A node's contiguous block of global ranks: [rank_start, rank_end)."""

    node: Node
    rank_start: int
    rank_end: int  # exclusive

    @property
    def ranks(self) -> range:
        return range(self.rank_start, self.rank_end)


def node_rank_ranges(inv: Inventory) -> tuple[NodeRanks, ...]:
    """Every node's rank range, in rank order. The one function `plan`, `ranktable` and `up` use."""
    nodes = inv.in_rank_order()
    if not nodes:
        return ()
    ends = list(accumulate([len(n.devices) for n in nodes]))
    return tuple(map(_new_tuple, repeat(NodeRanks),
                     zip(nodes, [0, *ends[:-1]], ends, strict=True)))


class RankDevice(NamedTuple):
    """One device (one rank) of a server; its rank id is the server's `rank_start` + position.

    A NamedTuple rather than a dataclass: tables of 8,192 devices are built in one go.
    """

    device_id: int  # local device id on the server (DEVICE_ID)
    device_ip: str  # the device's NIC address (hccn_tool / hccn.conf)
    super_device_id: str | None = None  # SDID, format 1.2 only


def make_devices(ids: Sequence[int], ips: Sequence[str],
                 sdids: Sequence[str] | None = None) -> tuple[RankDevice, ...]:
    """RankDevices from parallel lists, built in C (a NamedTuple's own __new__ is Python code,
    and tables of 8,192 devices are built in one go)."""
    rows = zip(ids, ips, sdids if sdids is not None else repeat(None), strict=False)
    return tuple(map(_new_tuple, repeat(RankDevice), rows))


class RankServer(NamedTuple):
    """One server of a rank table: a contiguous block of ranks, devices in ascending id.

    Every valid table has this shape (`validate_doc` checks it), so rank ids are not stored
    per device: renumbering a server for a merge replaces one integer. (Immutable tuples,
    as RankDevice and RankTable: 1,024-server tables are built, merged and compared whole.)
    """

    server_id: str  # the host address (inventory `host`)
    devices: tuple[RankDevice, ...]  # ascending device id
    rank_start: int = 0  # rank id of the first device (0 in a per-server table)
    super_pod_id: str | None = None  # format 1.2 only

    @property
    def rank_end(self) -> int:
        return self.rank_start + len(self.devices)


class RankTable(NamedTuple):
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
        from orchestrator.hccl.jsonfmt import table_to_json

        return table_to_json(self)

    def dumps(self) -> str:
        """`json.dumps(self.to_json(), indent=4)` plus a newline, byte for byte (fast)."""
        from orchestrator.hccl.jsonfmt import dump_table

        return dump_table(self)


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

_GOOD_RANGES: set[tuple[int, ...]] = set()  # device tuples check_device_range accepted


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
    key = tuple(devices)
    if key not in _GOOD_RANGES:
        check_device_range(devices, where)
        _GOOD_RANGES.add(key)
    ids = sorted(devices)
    try:
        ips = [device_ips[d] for d in ids]
    except KeyError:
        missing = [d for d in ids if d not in device_ips]
        known = ", ".join(str(d) for d in sorted(device_ips)) or "none"
        raise RankTableError(f"{where}: no device IP for device(s) "
                             f"{', '.join(map(str, missing))} (known: {known})") from None
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
    dev = make_devices(ids, ips,
                       [sdids[d] for d in ids] if sdids else None)
    server = _new_tuple(RankServer, (server_id, dev, first_rank,
                                     super_pod_id if version == VERSION_1_2 else None))
    return _new_tuple(RankTable, ((server,), version))


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
        s = one.servers[0]
        merged.append(_new_tuple(RankServer, (s.server_id, s.devices, r.rank_start,
                                              s.super_pod_id)))
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
        out.append(_new_tuple(RankServer, (s.server_id, s.devices, start, s.super_pod_id)))
        start += len(s.devices)
    return RankTable(servers=tuple(out), version=versions.pop())


# --- files ---------------------------------------------------------------------------------


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temp file in the same folder and os.replace.

    Raises:
        RankTableError: the folder cannot be created or written (names the path).
    """
    path = Path(path)
    try:
        write_atomic(path, text)
    except OSError as e:
        raise RankTableError(f"{path}: cannot write: {e.strerror}") from e


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
