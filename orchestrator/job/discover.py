"""Discover device IPs (and A3 super device ids) on the nodes, through any `Transport`.

    orchestrate ranktable --inventory cluster.yaml --discover

Per node, in parallel over all nodes:
  1. `hccn_tool -i <id> -ip -g` for each device id (parse `ipaddr:<ip>`);
  2. for the ids that gave nothing, the `address_<id>=<ip>` lines of `/etc/hccn.conf`;
  3. with `super_devices=True` (rank table format 1.2): `npu-smi info -m` maps each logical
     device id to its NPU id and chip id, then `npu-smi info -t spod-info -i <npu> -c <chip>`
     gives the device's `SDID` (its super_device_id).
A node that yields no IP for some device gives one error naming it and what was tried; every
node is tried before the error is raised. The parsers are orchestrator/hccl/discover.py.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from orchestrator.config.inventory import Node
from orchestrator.errors import DeviceDiscoveryError, RankTableError
from orchestrator.hccl.discover import (
    HCCN_CONF,
    parse_hccn_conf,
    parse_hccn_ip,
    parse_npu_mapping,
    parse_spod_info,
)
from orchestrator.remote.group import NodeGroup, cause
from orchestrator.remote.transport import CommandResult, Transport

# hccn_tool and npu-smi live here on Ascend hosts; a non-login SSH shell may not have them on PATH
ASCEND_TOOL_DIRS = ("/usr/local/Ascend/driver/tools", "/usr/local/sbin", "/usr/local/bin")
DEFAULT_TIMEOUT = 30.0


@dataclass(frozen=True)
class NodeProbe:
    """What discovery found on one node."""

    node: str  # node name
    device_ips: Mapping[int, str]  # device id -> IP, for the node's devices
    source: str  # "hccn_tool", "/etc/hccn.conf" or both joined by " + "
    super_device_ids: Mapping[int, str] | None = None  # device id -> SDID (format 1.2)
    super_pod_ids: frozenset[str] = frozenset()  # `Super Pod ID` values seen (format 1.2)


def _tool_command(*argv: str) -> str:
    """A shell command line running an Ascend tool with its usual folders on PATH."""
    extra = ":".join(ASCEND_TOOL_DIRS)
    return f'PATH="$PATH:{extra}" ' + shlex.join(argv)


def _tail(result: CommandResult) -> str:
    text = (result.stderr or result.stdout).strip().splitlines()
    return f"exit {result.exit_code}" + (f": {text[-1][:200]}" if text else "")


def probe_device_ips(t: Transport, devices: Sequence[int], *,
                     timeout: float = DEFAULT_TIMEOUT) -> tuple[dict[int, str], str]:
    """One node's device IPs: hccn_tool per device, then /etc/hccn.conf for the rest.

    Returns:
        (device id -> IP for every id in `devices`, the source(s) used).

    Raises:
        RankTableError: some device has no IP from either source (names node and attempts).
        RemoteError: the node could not be reached.
    """
    name = t.node.name
    found: dict[int, str] = {}
    tool_notes: list[str] = []
    for dev in devices:
        r = t.run(_tool_command("hccn_tool", "-i", str(dev), "-ip", "-g"), check=False,
                  timeout=timeout)
        if r.exit_code == 127 or "command not found" in r.stderr:
            tool_notes.append("not installed")
            break
        ip = parse_hccn_ip(r.stdout) if r.ok else None
        if ip is None:
            tool_notes.append(f"device {dev}: " + (_tail(r) if not r.ok else "no ipaddr line"))
        else:
            found[dev] = ip
    sources = ["hccn_tool"] if found else []
    missing = [d for d in devices if d not in found]
    if not missing:
        return found, "hccn_tool"
    r = t.run(["cat", HCCN_CONF], check=False, timeout=timeout)
    if r.ok:
        try:
            conf = parse_hccn_conf(r.stdout)
        except RankTableError as e:
            raise DeviceDiscoveryError(name, str(e)) from None
        for d in missing:
            if d in conf:
                found[d] = conf[d]
        if any(d in conf for d in missing):
            sources.append(HCCN_CONF)
        conf_note = (f"has no address_N line for device(s) "
                     f"{', '.join(str(d) for d in missing if d not in conf)}")
    else:
        conf_note = f"cannot read ({_tail(r)})"
    still = [d for d in devices if d not in found]
    if still:
        raise DeviceDiscoveryError(
            name, f"no device IP for device(s) {', '.join(map(str, still))}: tried "
            f"`hccn_tool -i <id> -ip -g` ({'; '.join(tool_notes[:3]) or 'no answer'}) and "
            f"{HCCN_CONF} ({conf_note})")
    return found, " + ".join(sources)


def probe_super_device_ids(t: Transport, devices: Sequence[int], *,
                           timeout: float = DEFAULT_TIMEOUT) -> tuple[dict[int, str], set[str]]:
    """One node's super_device_id (SDID) per device, through npu-smi (Atlas A3).

    Returns:
        (device id -> SDID, the `Super Pod ID` values reported).

    Raises:
        RankTableError: npu-smi is missing, or a device has no mapping or no SDID.
    """
    name = t.node.name
    r = t.run(_tool_command("npu-smi", "info", "-m"), check=False, timeout=timeout)
    if not r.ok:
        raise DeviceDiscoveryError(name, f"`npu-smi info -m` failed ({_tail(r)}); format 1.2 "
                             f"needs npu-smi to find each device's super_device_id")
    mapping = parse_npu_mapping(r.stdout)
    sdids: dict[int, str] = {}
    pods: set[str] = set()
    for dev in devices:
        if dev not in mapping:
            raise DeviceDiscoveryError(name, f"device {dev} is not in `npu-smi info -m` "
                                 f"(logical ids: {sorted(mapping) or 'none'})")
        npu, chip = mapping[dev]
        r = t.run(_tool_command("npu-smi", "info", "-t", "spod-info", "-i", str(npu), "-c",
                                str(chip)), check=False, timeout=timeout)
        info = parse_spod_info(r.stdout) if r.ok else None
        if info is None:
            raise DeviceDiscoveryError(name, f"no SDID for device {dev} from `npu-smi info -t "
                                 f"spod-info -i {npu} -c {chip}` ({_tail(r)})")
        sdids[dev] = info.super_device_id
        if info.super_pod_id is not None:
            pods.add(info.super_pod_id)
    return sdids, pods


def probe_node(t: Transport, *, super_devices: bool = False,
               timeout: float = DEFAULT_TIMEOUT) -> NodeProbe:
    """Everything discovery needs from one node (its devices are `t.node.devices`)."""
    devices = t.node.devices
    ips, source = probe_device_ips(t, devices, timeout=timeout)
    sdids: dict[int, str] | None = None
    pods: set[str] = set()
    if super_devices:
        sdids, pods = probe_super_device_ids(t, devices, timeout=timeout)
    return NodeProbe(node=t.node.name, device_ips=MappingProxyType(ips), source=source,
                     super_device_ids=MappingProxyType(sdids) if sdids is not None else None,
                     super_pod_ids=frozenset(pods))


def discover(group: NodeGroup, nodes: Sequence[Node], *, super_devices: bool = False,
             timeout: float = DEFAULT_TIMEOUT) -> dict[str, NodeProbe]:
    """Probe `nodes` in parallel over the group's connections (`group.forks` at once).

    Every node is probed even when some fail. Returns node name -> NodeProbe.

    Raises:
        RankTableError: one or more nodes failed; the message names each and why.
    """
    if not nodes:
        return {}
    result = group.map(lambda t: probe_node(t, super_devices=super_devices, timeout=timeout),
                       nodes)
    failed = [f"[{name}] {cause(exc)}" for name, exc in result.failed.items()]
    if failed:
        raise RankTableError(f"device discovery failed on {len(failed)} of {len(nodes)} "
                             f"node(s): " + "; ".join(failed))
    return dict(result.succeeded)
