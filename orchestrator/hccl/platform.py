"""Rank tables handed out by a platform: ModelArts' v0 layout, v1.0 / v1.2 in any server order.

    orchestrate ranktable convert /user/config/jobstart_hccl.json -o hccl.json
    orchestrate ranktable check /user/config/jobstart_hccl.json
    orchestrate up -i cluster.yaml -c 7.1b --rank-table /user/serverid/devindex/config/hccl.json

Layouts read (NOTES.md "MindSpore / Ascend ecosystem facts"):

- v1.0 / v1.2 (orchestrator/hccl/ranktable.py), servers in any order;
- ModelArts' v0 (`jobstart_hccl.json`): {"status", "group_count", "group_list": [{"group_name",
  "device_count", "instance_count", "instance_list": [{"pod_name", "server_id", "devices":
  [{"device_id", "device_ip"}]}]}]}, no rank ids: ranks follow the numeric suffix of pod_name
  (...-0 first), devices in order within a pod.

While a platform prepares the file its `status` is "initializing" (the ascend-operator writes
"completed" when the table is ready): `wait_for_table` polls until then. What comes out is
always the table MindSpore wants: servers in the dictionary order of server_id, devices
ascending, rank ids counted from 0 in that order, every rule of `ranktable check` met; so a
v0 table's pod order is replaced by server_id order, as is any other order.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.config.inventory import Inventory, Node
from orchestrator.errors import RankTableError
from orchestrator.hccl.check import parse_table
from orchestrator.hccl.ranktable import VERSION_1_0, RankTable

STATUS_INITIALIZING = "initializing"
LAYOUT_V0 = "v0"
_POD_INDEX = re.compile(r"([0-9]+)$")


@dataclass(frozen=True)
class PlatformTable:
    """A rank table file as a platform wrote it, made into the table MindSpore wants."""

    layout: str  # "v0", "1.0" or "1.2": what the file was
    table: RankTable  # servers in server_id order, ranks renumbered from 0
    reordered: bool  # the file's rank order was not server_id order (ranks renumbered)


def status_of(doc: Any) -> str | None:
    """The document's `status` ("initializing", "completed", ...), None if it has none."""
    status = doc.get("status") if isinstance(doc, dict) else None
    return status if isinstance(status, str) else None


def read_platform_table(text: str, source: str) -> PlatformTable:
    """Parse any of the three layouts into the server_id-ordered table MindSpore wants.

    Raises:
        RankTableError: bad JSON, still "initializing", or every problem of the result
            (one line naming `source`).
    """
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise RankTableError(f"{source}: bad JSON at line {e.lineno}, column {e.colno}: "
                             f"{e.msg}") from None
    if status_of(doc) == STATUS_INITIALIZING:
        raise RankTableError(f"{source}: status is \"initializing\": the platform has not "
                             "finished the table (`up --rank-table` waits for it)")
    if isinstance(doc, dict) and "group_list" in doc:
        v1, original = _from_v0(doc, source), None
        layout = LAYOUT_V0
    else:
        layout = str(doc.get("version")) if isinstance(doc, dict) else "?"
        original = _rank_ids(doc)
        v1 = _in_server_order(doc)
    table = parse_table(json.dumps(v1), source)
    reordered = layout == LAYOUT_V0 or original != _rank_ids(v1)
    return PlatformTable(layout=layout, table=table, reordered=reordered)


def _rank_ids(doc: Any) -> dict[Any, Any]:
    """(server_id, device_id) -> rank_id, to tell whether normalising changed any rank."""
    try:
        return {(s["server_id"], d["device_id"]): d["rank_id"]
                for s in doc["server_list"] for d in s["device"]}
    except (KeyError, TypeError):
        return {}


def _device_key(d: Any) -> int:
    return int(d["device_id"])


def _in_server_order(doc: Any) -> Any:
    """A copy of a v1.0 / v1.2 document with servers in server_id order, devices ascending and
    rank ids renumbered from 0; returned unchanged if too malformed to reorder (the full
    check then names its problems)."""
    try:
        servers = sorted(doc["server_list"], key=lambda s: s["server_id"] + "")
        devices = [sorted(s["device"], key=_device_key) for s in servers]
    except (KeyError, TypeError, ValueError, AttributeError):
        return doc
    out = dict(doc)
    rank = 0
    out["server_list"] = []
    for s, devs in zip(servers, devices, strict=True):
        renumbered = []
        for d in devs:
            renumbered.append({**d, "rank_id": str(rank)})
            rank += 1
        out["server_list"].append({**s, "device": renumbered})
    if isinstance(doc.get("super_pod_list"), list):  # servers of a pod in table order
        order = {s["server_id"]: i for i, s in enumerate(servers)}
        out["super_pod_list"] = [
            {**p, "server_list": sorted(p["server_list"],
                                        key=lambda e: order.get(e.get("server_id"), -1))}
            if isinstance(p, dict) and isinstance(p.get("server_list"), list)
            and all(isinstance(e, dict) for e in p["server_list"]) else p
            for p in doc["super_pod_list"]]
    return out


def _from_v0(doc: dict[str, Any], source: str) -> dict[str, Any]:
    """ModelArts' v0 layout as a v1.0 document in server_id order."""
    groups = doc.get("group_list")
    if not isinstance(groups, list) or not groups:
        raise RankTableError(f"{source}: `group_list` must be a non-empty list")
    pods: list[tuple[int, str, dict[str, Any]]] = []
    for gi, group in enumerate(groups):
        where = f"group_list[{gi}]"
        instances = group.get("instance_list") if isinstance(group, dict) else None
        if not isinstance(instances, list) or not instances:
            raise RankTableError(f"{source}: {where}.instance_list must be a non-empty list")
        for ii, inst in enumerate(instances):
            iwhere = f"{where}.instance_list[{ii}]"
            if not isinstance(inst, dict):
                raise RankTableError(f"{source}: {iwhere}: expected an object")
            for key in ("pod_name", "server_id", "devices"):
                if key not in inst:
                    raise RankTableError(f"{source}: {iwhere}: missing key `{key}`")
            name = inst["pod_name"]
            m = _POD_INDEX.search(name) if isinstance(name, str) else None
            if m is None:
                raise RankTableError(f"{source}: {iwhere}: pod_name {name!r} does not end in "
                                     "a number (ranks follow the pod index)")
            pods.append((int(m.group(1)), f"{iwhere} ({name})", inst))
    pods.sort(key=lambda p: p[0])
    servers = []
    for _index, where, inst in pods:
        devices = inst["devices"]
        if not isinstance(devices, list) or not devices:
            raise RankTableError(f"{source}: {where}: `devices` must be a non-empty list")
        if not all(isinstance(d, dict) for d in devices):
            raise RankTableError(f"{source}: {where}: every device must be an object")
        servers.append({"server_id": inst["server_id"],
                        "device": [{"device_id": d.get("device_id"),
                                    "device_ip": d.get("device_ip"), "rank_id": "0"}
                                   for d in devices],
                        "host_nic_ip": "reserve"})
    v1 = {"version": VERSION_1_0, "server_count": str(len(servers)), "server_list": servers,
          "status": "completed"}
    return _in_server_order(v1)


Echo = Callable[[str], None]


def wait_for_table(path: Path, timeout: float, echo: Echo, poll: float = 1.0,
                   report_every: float = 10.0) -> PlatformTable:
    """Read `path` until it is a finished table: a missing file, a file the platform is still
    writing (bad JSON) and status "initializing" are waited for, with a progress line every
    `report_every` seconds.

    Raises:
        RankTableError: not ready after `timeout` seconds (says what it last saw), or the
            finished table has problems.
    """
    start = time.monotonic()
    last_report = None
    while True:
        seen = _not_ready(path)
        if seen is None:
            return read_platform_table(path.read_text(encoding="utf-8"), str(path))
        waited = time.monotonic() - start
        if waited >= timeout:
            raise RankTableError(f"{path}: not ready after {timeout:g} s (--rank-table-timeout)"
                                 f": {seen}")
        if last_report is None or time.monotonic() - last_report >= report_every:
            echo(f"waiting for rank table {path}: {seen} ({waited:.0f} s of {timeout:g} s)")
            last_report = time.monotonic()
        time.sleep(min(poll, max(0.0, timeout - waited)))


def _not_ready(path: Path) -> str | None:
    """Why `path` is not a finished table yet, or None when it is (or is broken for good)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return "file does not exist yet"
    except (OSError, UnicodeDecodeError) as e:
        raise RankTableError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}") from e
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        return "not valid JSON yet (being written?)"
    if status_of(doc) == STATUS_INITIALIZING:
        return 'status "initializing"'
    return None


def check_against_inventory(table: RankTable, inv: Inventory,
                            address_of: Callable[[Node], str] | None = None) -> None:
    """Match the table's servers to the inventory's nodes by server_id and check they agree.

    A server matches the node whose `host` is its server_id, else (with `address_of`, e.g.
    ssh_config's HostName of an alias) the node reached at that address. Every server and
    every node must match; each node's `devices` must be the server's device ids; and the
    inventory's rank order must be the table's server_id order (so `plan`, the launch
    scripts and MindSpore number ranks alike).

    Raises:
        RankTableError: naming unmatched servers and nodes, or the first disagreement.
    """
    by_host = {n.host: n for n in inv.nodes}
    by_addr = {address_of(n): n for n in inv.nodes} if address_of is not None else {}
    matched: dict[str, Node] = {}
    unmatched = []
    for s in table.servers:
        node = by_host.get(s.server_id) or by_addr.get(s.server_id)
        if node is None:
            unmatched.append(s.server_id)
        else:
            matched[s.server_id] = node
    extra = [n.name for n in inv.nodes if n not in matched.values()]
    if unmatched or extra:
        parts = ([f"server(s) not in {inv.path}: {', '.join(unmatched)}"] if unmatched else []) \
            + ([f"node(s) not in the table: {', '.join(extra)}"] if extra else [])
        raise RankTableError("rank table and inventory differ (servers are matched to nodes "
                             "by server_id = node host): " + "; ".join(parts))
    for s in table.servers:
        node, ids = matched[s.server_id], tuple(d.device_id for d in s.devices)
        if tuple(sorted(node.devices)) != ids:
            raise RankTableError(
                f"node {node.name}: the rank table gives server {s.server_id} devices "
                f"{list(ids)}, the inventory {sorted(node.devices)}; set `devices: "
                f"{list(ids)}` for it in {inv.path}")
    in_table = [matched[s.server_id].name for s in table.servers]
    in_plan = [n.name for n in inv.in_rank_order()]
    if in_table != in_plan:
        raise RankTableError(
            f"rank order differs: the table numbers ranks over {', '.join(in_table)} "
            f"(server_id order), the inventory over {', '.join(in_plan)} (host order); "
            f"use the server ids as the nodes' `host` in {inv.path}")
