"""Pure parsers for what Ascend hosts print about their devices (no I/O here).

    parse_hccn_ip("ipaddr:192.98.92.10")        # `hccn_tool -i N -ip -g`
    parse_hccn_conf(text)                       # /etc/hccn.conf address_N= lines
    parse_npu_mapping(text), parse_spod_info(text)   # `npu-smi info -m`, spod-info (A3)

Asking the nodes (over their Transports, `orchestrate ranktable --discover`, `up`) is
orchestrator/job/discover.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from orchestrator.config.inventory import is_valid_ipv4
from orchestrator.errors import RankTableError
from orchestrator.untrusted import MAX_LINE, lines, to_int

HCCN_CONF = "/etc/hccn.conf"

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
