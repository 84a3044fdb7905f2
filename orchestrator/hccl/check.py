"""Rank-table validation and parsing: every problem of a file in one list, one line each.

    orchestrate ranktable check hccl_12s_96p.json
    orchestrate ranktable merge hccl_8p_01234567_192.168.0.*.json -o hccl_12s_96p.json

`validate_doc` knows the format rules documented in `orchestrator/hccl/ranktable.py` (1.0 and 1.2);
`parse_table` turns a valid file into a `RankTable`, or raises `RankTableError` listing every
problem of it on one line (control characters from the file escaped).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import RankTableError
from orchestrator.hccl.fastcheck import fast_tables, table_is_valid
from orchestrator.hccl.ranktable import (
    STATUS_COMPLETED,
    VERSION_1_2,
    VERSIONS,
    RankDevice,
    RankServer,
    RankTable,
)

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
    if fast_tables([doc]) is not None:
        return []
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


def validate_table(table: RankTable) -> list[str]:
    """Every problem of the file `table.dumps()` would write (empty: valid)."""
    return [] if table_is_valid(table) else validate_doc(table.to_json())


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
    if (tables := fast_tables([doc])) is not None:
        return tables[0]
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


def parse_tables(texts: Sequence[str], sources: Sequence[str]) -> list[RankTable]:
    """`parse_table` of many texts (e.g. `ranktable merge` of 1,024 per-server files), the
    valid ones checked together in bulk; RankTableError names the first bad source."""
    docs = []
    for text in texts:
        try:
            docs.append(json.loads(text))
        except json.JSONDecodeError:
            docs.append(None)
    if None not in docs and (tables := fast_tables(docs)) is not None:
        return tables
    return [parse_table(t, s) for t, s in zip(texts, sources, strict=True)]
