"""A `RankTable` as JSON: the dict MindFormers writes and its `indent=4` text, fast.

    doc = table_to_json(table)     # == json.loads(dump_table(table))
    text = dump_table(table)       # == json.dumps(doc, indent=4) + "\\n", byte for byte

The layout is the one documented in orchestrator/hccl/ranktable.py (formats 1.0 and 1.2).
json's indenting encoder is pure Python; the layout here is fixed, so each device is one
string operation and only strings that may need escaping go through json's C encoder.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from orchestrator.hccl.ranktable import HOST_NIC_IP, STATUS_COMPLETED, VERSION_1_2

if TYPE_CHECKING:
    from orchestrator.hccl.ranktable import RankServer, RankTable

_encode_str = json.encoder.encode_basestring_ascii  # the C string encoder json.dumps uses
_PAD_D = " " * 20
# one device of the indent=4 layout, cut around its four values
_D0 = " " * 16 + "{\n" + _PAD_D + '"device_id": "'
_D1 = '",\n' + _PAD_D + '"device_ip": '
_D_SDID = ",\n" + _PAD_D + '"super_device_id": '
_D2 = ",\n" + _PAD_D + '"rank_id": "'
_D3 = '"\n' + " " * 16 + "}"


def table_to_json(table: RankTable) -> dict[str, Any]:
    """The table as MindFormers writes it: keys in its order, every value a string."""
    v12 = table.version == VERSION_1_2
    doc: dict[str, Any] = {
        "version": table.version,
        "server_count": str(len(table.servers)),
        "server_list": [_server_json(s, v12) for s in table.servers],
    }
    if v12:
        doc["super_pod_list"] = super_pod_list(table.servers)
    doc["status"] = STATUS_COMPLETED
    return doc


def _server_json(s: RankServer, v12: bool) -> dict[str, Any]:
    if v12:
        devices = [{"device_id": str(d.device_id), "device_ip": d.device_ip,
                    "super_device_id": str(d.super_device_id), "rank_id": str(rank)}
                   for rank, d in enumerate(s.devices, start=s.rank_start)]
    else:
        devices = [{"device_id": str(d.device_id), "device_ip": d.device_ip,
                    "rank_id": str(rank)}
                   for rank, d in enumerate(s.devices, start=s.rank_start)]
    return {"server_id": s.server_id, "device": devices, "host_nic_ip": HOST_NIC_IP}


def super_pod_list(servers: Sequence[RankServer]) -> list[dict[str, Any]]:
    """Format 1.2's `super_pod_list`: pods in dictionary order, servers in table order."""
    pods: dict[str, list[str]] = {}
    for s in servers:
        pods.setdefault(str(s.super_pod_id), []).append(s.server_id)
    return [{"super_pod_id": pod, "server_list": [{"server_id": sid} for sid in pods[pod]]}
            for pod in sorted(pods)]


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


def _server_text(s: RankServer, v12: bool) -> str:
    enc = _encode_str
    if v12:
        devices = [f"{_D0}{d.device_id}{_D1}{enc(d.device_ip)}{_D_SDID}"
                   f"{enc(str(d.super_device_id))}{_D2}{rank}{_D3}"
                   for rank, d in enumerate(s.devices, start=s.rank_start)]
    else:
        devices = [f"{_D0}{d.device_id}{_D1}{enc(d.device_ip)}{_D2}{rank}{_D3}"
                   for rank, d in enumerate(s.devices, start=s.rank_start)]
    return (f'        {{\n            "server_id": {enc(s.server_id)},\n'
            '            "device": [\n' + ",\n".join(devices)
            + f'\n            ],\n            "host_nic_ip": "{HOST_NIC_IP}"\n        }}')


def dump_table(table: RankTable) -> str:
    """`json.dumps(table_to_json(table), indent=4)` plus a newline, byte for byte."""
    if not table.servers or not all(s.devices for s in table.servers):
        return _render(table_to_json(table), 0) + "\n"
    v12 = table.version == VERSION_1_2
    servers = ",\n".join([_server_text(s, v12) for s in table.servers])
    pods = (',\n    "super_pod_list": ' + _render(super_pod_list(table.servers), 1)
            if v12 else "")
    return (f'{{\n    "version": {_encode_str(table.version)},\n'
            f'    "server_count": "{len(table.servers)}",\n    "server_list": [\n'
            f"{servers}\n    ]{pods},\n"
            f'    "status": "{STATUS_COMPLETED}"\n}}\n')
