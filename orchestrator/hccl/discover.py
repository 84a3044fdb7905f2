"""Discover device IPs (and A3 super device ids) on the nodes; pure parsers for what they print.

    orchestrate ranktable --inventory cluster.yaml --discover

Per node, in parallel over all nodes, through any `Transport`:
  1. `hccn_tool -i <id> -ip -g` for each device id (parse `ipaddr:<ip>`);
  2. for the ids that gave nothing, the `address_<id>=<ip>` lines of `/etc/hccn.conf`;
  3. with `super_devices=True` (rank table format 1.2): `npu-smi info -m` maps each logical
     device id to its NPU id and chip id, then `npu-smi info -t spod-info -i <npu> -c <chip>`
     gives the device's `SDID` (its super_device_id).
A node that yields no IP for some device gives one error naming it and what was tried; every
node is tried before the error is raised.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from orchestrator.config.inventory import Node, is_valid_ipv4
from orchestrator.errors import DeviceDiscoveryError, RankTableError
from orchestrator.remote.group import NodeGroup, cause
from orchestrator.remote.transport import CommandResult, Transport
from orchestrator.untrusted import MAX_LINE, lines, to_int

HCCN_CONF = "/etc/hccn.conf"
# hccn_tool and npu-smi live here on Ascend hosts; a non-login SSH shell may not have them on PATH
ASCEND_TOOL_DIRS = ("/usr/local/Ascend/driver/tools", "/usr/local/sbin", "/usr/local/bin")
DEFAULT_TIMEOUT = 30.0

_IPADDR = re.compile(r"ipaddr\s*:\s*(\S+)", re.IGNORECASE)
_ADDRESS = re.compile(r"address_([0-9]{1,6})\s*=\s*(\S*)")
_KEY = re.compile(r"[A-Za-z][A-Za-z ()_-]{0,63}")  # a `Key : value` line's key


# --- pure parsers ------------------------------------------------------------------------------


def parse_hccn_ip(text: str) -> str | None:
    """The IPv4 address in `hccn_tool -i N -ip -g` output (`ipaddr:192.98.92.10`), else None.

    Tolerates CRLF, spaces around the colon, other lines (netmask, ipv6addr) in any order.
    An `ipaddr` line whose value is not an IPv4 address counts as no address.
    """
    for line in lines(text):
        m = _IPADDR.fullmatch(line.strip())
        if m:
            value = m.group(1)
            return value if is_valid_ipv4(value) else None
    return None


def parse_hccn_conf(text: str) -> dict[int, str]:
    """Device id -> IP from the `address_<id>=<ip>` lines of /etc/hccn.conf.

    Skips blank lines, `#` comments (whole-line or trailing) and other keys (netmask_N,
    netdetect_N, gateway_N, ...); tolerates CRLF and spaces around `=`. A later line for the
    same id wins, as in hccl_tools.

    Raises:
        RankTableError: an address line holds something that is not an IPv4 address
            (names the line).
    """
    out: dict[int, str] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw[:MAX_LINE].split("#", 1)[0].strip()
        m = _ADDRESS.fullmatch(line)
        if not m:
            continue
        dev, ip = int(m.group(1)), m.group(2)
        if not is_valid_ipv4(ip):
            raise RankTableError(f"{HCCN_CONF} line {lineno}: address_{dev} is {ip!r}, "
                                 f"not an IPv4 address")
        out[dev] = ip
    return out


def _fields(text: str) -> dict[str, str]:
    """`Key : value` lines -> {lowercased key: value} (first occurrence wins).

    Linear in the output (a split, never a backtracking regex over the line): a node's 1 MB
    line costs one pass, not hours."""
    out: dict[str, str] = {}
    for line in lines(text):
        key, colon, value = line.partition(":")
        key = key.strip()
        if colon and _KEY.fullmatch(key):
            out.setdefault(key.lower(), value.strip())
    return out


@dataclass(frozen=True)
class SpodInfo:
    """What `npu-smi info -t spod-info -i <npu> -c <chip>` reports for one device (Atlas A3)."""

    super_device_id: str  # `SDID`: the device's id in the SuperPoD (rank table super_device_id)
    super_pod_id: str | None  # `Super Pod ID`
    server_index: str | None  # `Server Index`


def parse_spod_info(text: str) -> SpodInfo | None:
    """Parse spod-info output (`SDID : 16777216`, `Super Pod ID : 0`, ...); None if no SDID."""
    fields = _fields(text)
    sdid = fields.get("sdid", "")
    if to_int(sdid) is None:
        return None
    return SpodInfo(super_device_id=sdid, super_pod_id=fields.get("super pod id") or None,
                    server_index=fields.get("server index") or None)


def parse_npu_mapping(text: str) -> dict[int, tuple[int, int]]:
    """`npu-smi info -m` -> logical device id -> (NPU id, chip id).

    Rows are `NPU ID  Chip ID  Chip Logic ID  Chip Name`; rows whose logic id is `-` (the
    MCU) or whose NPU id is negative (unavailable) are skipped, as is the header.
    """
    out: dict[int, tuple[int, int]] = {}
    for line in lines(text):
        parts = line.split()
        if len(parts) < 3 or not all(to_int(p, signed=True) is not None for p in parts[:2]):
            continue
        npu, chip, logic = parts[0], parts[1], parts[2]
        if to_int(logic) is None or int(npu) < 0:
            continue
        out[int(logic)] = (int(npu), int(chip))
    return out


# --- discovery over transports -----------------------------------------------------------------


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
