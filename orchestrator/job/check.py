"""`orchestrate check`: is every node ready to run a job? One probe per node, in parallel.

    report = check_nodes(group, device_target="CPU", mode="msrun", sched_port=8118)
    report.failures   # [(node, check, message with the fix)]

Checks: SSH reachable with a known host key; python present; mindspore version (same on
every node); Ascend: `npu-smi` device count >= requested, hccn_tool or /etc/hccn.conf for
rank-table mode; free disk in the workdir; clock skew; msrun: distinct hostnames, the
scheduler port free on the first node and reachable from every node (check_cluster.py).
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field

from orchestrator.config.inventory import Node
from orchestrator.job.check_cluster import (
    HOSTNAME_FIX,
    cluster_probe,
    flag_same_hostnames,
    reach_item,
    tft_item,
)
from orchestrator.job.render import shell_path
from orchestrator.remote.group import NodeGroup, node_address
from orchestrator.remote.transport import Transport
from orchestrator.untrusted import to_int

MIN_FREE_BYTES = 1 << 30  # 1 GiB in the workdir
MAX_SKEW_S = 10.0


@dataclass(frozen=True)
class Item:
    name: str  # ssh, python, mindspore, devices, hccn, disk, clock, port
    ok: bool
    value: str  # what we saw
    fix: str = ""  # how to fix it, when not ok


@dataclass(frozen=True)
class NodeCheck:
    node: str
    items: tuple[Item, ...]


@dataclass(frozen=True)
class CheckReport:
    nodes: tuple[NodeCheck, ...]
    columns: tuple[str, ...] = field(default=())

    @property
    def failures(self) -> list[tuple[str, Item]]:
        return [(n.node, i) for n in self.nodes for i in n.items if not i.ok]

    @property
    def ok(self) -> bool:
        return not self.failures


def probe_command(node: Node, device_target: str, mode: str, sched_port: int | None) -> str:
    py = shlex.quote(node.python)
    wd = shell_path(str(node.workdir))
    lines = [
        f'echo "python=$(command -v {py} 2>/dev/null)"',
        f"echo \"mindspore=$({py} -c 'import importlib.metadata as m; "
        f"print(m.version(\"mindspore\"))' 2>/dev/null)\"",
        'echo "time=$(date +%s.%N)"',
        'echo "hostname=$(hostname 2>/dev/null || cat /proc/sys/kernel/hostname)"',
        'echo "machine=$(cat /etc/machine-id 2>/dev/null)/$(cat /proc/sys/kernel/random/boot_id'
        ' 2>/dev/null)"',
        f"mkdir -p {wd} 2>/dev/null; echo \"disk_kb=$(df -Pk {wd} 2>/dev/null | "
        "awk 'NR==2{print $4}')\"",
    ]
    if device_target == "Ascend":
        lines.append("echo \"npu=$(npu-smi info -l 2>/dev/null | awk -F: '/Total Count/{print $2}' "
                     "| tr -d ' ')\"")
        if mode == "ranktable":
            lines.append("if command -v hccn_tool >/dev/null 2>&1 || [ -f /etc/hccn.conf ]; "
                         "then echo hccn=yes; else echo hccn=no; fi")
    if sched_port is not None:
        lines.append(
            f"echo \"port=$({py} -c 'import socket; s=socket.socket(); "
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
            f"s.bind((\"\", {int(sched_port)})); print(\"free\")' 2>/dev/null || echo busy)\"")
    return "\n".join(lines)


def _evaluate(node: Node, out: dict[str, str], t0: float, t1: float, device_target: str,
              mode: str, sched_port: int | None) -> list[Item]:
    items = [Item("ssh", True, "ok")]
    py = out.get("python", "")
    items.append(Item("python", bool(py), py or f"{node.python} not found",
                      f"install Python or set `python:` for {node.name} in the inventory"))
    ms = out.get("mindspore", "")
    items.append(Item("mindspore", bool(ms), ms or "not importable",
                      f"pip install mindspore with {node.python} on {node.name}"))
    disk = out.get("disk_kb", "")
    free = (to_int(disk) or 0) * 1024 if to_int(disk) is not None else -1
    items.append(Item("disk", free >= MIN_FREE_BYTES,
                      f"{free / 2**30:.1f} GiB free" if free >= 0 else "unknown",
                      f"free space in {node.workdir} (need >= {MIN_FREE_BYTES >> 30} GiB)"))
    try:
        skew = float(out.get("time", "")) - (t0 + t1) / 2
        items.append(Item("clock", abs(skew) <= MAX_SKEW_S + (t1 - t0) / 2, f"{skew:+.1f} s",
                          "sync the clock (chrony/ntp): ranks compare timestamps"))
    except ValueError:
        items.append(Item("clock", False, "unknown", "`date` failed on the node"))
    if device_target == "Ascend":
        npu = out.get("npu", "")
        have = to_int(npu) or 0
        need = max(node.devices) + 1 if node.devices else 0
        items.append(Item("devices", have >= need, f"{have} NPUs (need {need})",
                          "check `npu-smi info` and the driver, or `devices:` in the inventory"))
        if mode == "ranktable":
            items.append(Item("hccn", out.get("hccn") == "yes", out.get("hccn", "no"),
                              "install hccn_tool or write /etc/hccn.conf (device IPs)"))
    if sched_port is not None:
        items.append(Item("port", out.get("port") == "free", f"{sched_port} {out.get('port', '?')}",
                          f"free port {sched_port} on {node.name} or pass --sched-port"))
    return items


def check_nodes(group: NodeGroup, nodes: tuple[Node, ...] | None = None,
                device_target: str = "CPU", mode: str = "msrun",
                sched_port: int | None = None) -> CheckReport:
    """Probe every node in parallel, one command each. msrun: every node's hostname must be
    its own, and with `sched_port` the first node (rank order) binds the scheduler port while
    every node connects to it (job/check_cluster.py)."""
    nodes = nodes or group.inventory.in_rank_order()
    first = nodes[0].name
    sched = mode == "msrun" and sched_port is not None
    host = node_address(nodes[0], group.inventory) if sched else ""
    ft = group.inventory.fault_tolerance
    tft_port = ft.tft_port if ft is not None else None

    def one(t: Transport) -> list[Item]:
        port = sched_port if (sched and t.node.name == first) else None
        cmd = probe_command(t.node, device_target, mode, None)
        if sched and sched_port is not None:
            cmd += "\n" + cluster_probe(t.node.python, t.node.name == first, len(nodes), host,
                                        sched_port, tft_port)
        t0 = time.time()
        res = t.run(cmd, check=False, timeout=60)
        t1 = time.time()
        out = {}
        for line in res.stdout.splitlines():
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
        items = _evaluate(t.node, out, t0, t1, device_target, mode, port)
        if mode == "msrun":
            name = out.get("hostname", "")
            items.append(Item("hostname", bool(name), name or "unknown", HOSTNAME_FIX))
            items.append(Item("machine", True, out.get("machine", ""), ""))  # not a column
        if sched and sched_port is not None:
            items.append(reach_item(out, t.node.name, first, host, sched_port))
            if tft_port is not None:
                items.append(tft_item(out, t.node.name, t.node.name == first, first, host,
                                      tft_port))
        return items

    results = group.map(one, nodes)
    checks = []
    for node in nodes:
        r = results[node.name]
        if isinstance(r, BaseException):
            checks.append(NodeCheck(node.name, (Item("ssh", False, str(r).splitlines()[0][:120],
                                                     "start sshd / fix the address, user, key "
                                                     "or known_hosts"),)))
        else:
            checks.append(NodeCheck(node.name, tuple(r)))
    versions = {i.value for c in checks for i in c.items if i.name == "mindspore" and i.ok}
    if len(versions) > 1:
        checks = [NodeCheck(c.node, tuple(
            Item(i.name, False, i.value, f"mindspore differs across nodes "
                 f"({', '.join(sorted(versions))}); install the same version everywhere")
            if i.name == "mindspore" else i
            for i in c.items)) for c in checks]
    checks = flag_same_hostnames(checks)
    columns = ("ssh", "python", "mindspore", "devices", "hccn", "disk", "clock", "hostname",
               "port", "sched", "tft")
    used = tuple(c for c in columns if any(i.name == c for n in checks for i in n.items))
    return CheckReport(nodes=tuple(checks), columns=used)
