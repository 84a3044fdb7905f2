"""`orchestrate check`: evaluation of the node probe and a real probe of this machine."""

from __future__ import annotations

import time
from pathlib import Path

from orchestrator.config.inventory import parse_inventory
from orchestrator.job.check import _evaluate, check_nodes

INV = """
defaults: {devices: 8, workdir: /w, python: /opt/py}
nodes: [{host: 10.0.0.1, name: a}, {host: 10.0.0.2, name: b}]
"""


def _items(out: dict[str, str], target: str = "Ascend", mode: str = "ranktable",
           port: int | None = None) -> dict[str, tuple[bool, str]]:
    node = parse_inventory(INV, "inv.yaml").nodes[0]
    now = time.time()
    items = _evaluate(node, out, now, now + 0.01, target, mode, port)
    return {i.name: (i.ok, i.fix) for i in items}


def test_ready_ascend_node_passes() -> None:
    items = _items({"python": "/opt/py", "mindspore": "2.10.0", "disk_kb": str(50 << 20),
                    "time": str(time.time()), "npu": "8", "hccn": "yes"})
    assert all(ok for ok, _ in items.values()), items
    assert set(items) == {"ssh", "python", "mindspore", "disk", "clock", "devices", "hccn"}


def test_each_failure_names_its_fix() -> None:
    items = _items({"python": "", "mindspore": "", "disk_kb": "1000",
                    "time": str(time.time() + 120), "npu": "4", "hccn": "no", "port": "busy"},
                   port=23456, mode="ranktable")
    for name in ("python", "mindspore", "disk", "clock", "devices", "hccn", "port"):
        ok, fix = items[name]
        assert not ok and fix, name
    assert "pip install mindspore" in items["mindspore"][1]
    assert "--sched-port" in items["port"][1]


def test_cpu_jobs_skip_device_checks() -> None:
    items = _items({"python": "/p", "mindspore": "2.10.0", "disk_kb": str(50 << 20),
                    "time": str(time.time())}, target="CPU", mode="msrun")
    assert "devices" not in items and "hccn" not in items


def test_probe_this_machine(tmp_path: Path) -> None:
    inv = parse_inventory(f"defaults: {{connection: local, workdir: {tmp_path}, devices: 1}}\n"
                          "nodes: [{host: 127.0.0.1, name: here}]\n", "local.yaml")
    from orchestrator.remote.group import NodeGroup

    with NodeGroup(inv) as group:
        report = check_nodes(group, device_target="CPU", mode="msrun", sched_port=None)
    items = {i.name: i for i in report.nodes[0].items}
    assert items["python"].ok and items["mindspore"].ok and items["disk"].ok, report
    assert report.ok
