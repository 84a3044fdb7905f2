"""`orchestrate check` for MindSpore's dynamic cluster on real test hosts (issue 15.6):
the scheduler port reachable FROM every node, and distinct hostnames.

    python -m pytest tests/integration/test_check_cluster.py -q

th1 gets a route that makes th0 unreachable from it (inside th1's network namespace only:
SSH from this machine to both still works), and an inventory lists th0 twice, once by
address and once by its ssh_config alias (one machine: its hostname may repeat), and th1 renamed
th0 (another machine with th0's hostname: refused).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from orchestrator.config.inventory import load_inventory
from tests.integration.conftest import TestHosts, set_tag


def orch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True,
                          text=True, timeout=180, stdin=subprocess.DEVNULL,
                          cwd=Path(__file__).resolve().parents[2])


def inventory(hosts: TestHosts, tmp_path: Path, nodes: list[dict[str, str]]) -> Path:
    doc = yaml.safe_load(hosts.inventory.read_text())
    doc["nodes"] = nodes
    doc["defaults"]["devices"] = 1
    path = tmp_path / "inv.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_check_names_the_node_that_cannot_reach_the_scheduler_port(
        netns_hosts: TestHosts, tmp_path: Path) -> None:
    addr = {n.name: n.host for n in load_inventory(netns_hosts.inventory).nodes}
    inv = inventory(netns_hosts, tmp_path, [{"name": n, "host": addr[n]}
                                            for n in ("th0", "th1", "th2")])
    port = "24817"
    ok = orch("check", "-i", str(inv), "-c", "tiny", "--sched-port", port)
    assert ok.returncode == 0, ok.stdout + ok.stderr  # all reach th0, hostnames distinct
    ns = f"oth-{set_tag(netns_hosts.state)}-1"
    route = ["ip", "netns", "exec", ns, "ip", "route"]
    subprocess.run([*route, "add", "unreachable", f"{addr['th0']}/32"], check=True, timeout=30)
    try:
        res = orch("check", "-i", str(inv), "-c", "tiny", "--sched-port", port)
    finally:
        subprocess.run([*route, "del", "unreachable", f"{addr['th0']}/32"], check=True,
                       timeout=30)
    assert res.returncode == 1
    assert f"[th1] sched: cannot reach {addr['th0']}:{port} (th0)" in res.stderr, res.stderr
    assert "[th0] sched" not in res.stderr and "[th2] sched" not in res.stderr
    assert "check(s) failed" in res.stderr
    # nothing stays listening on th0: the scheduler could bind the port at once
    again = orch("check", "-i", str(inv), "-c", "tiny", "--sched-port", port)
    assert again.returncode == 0, again.stderr


def test_check_names_two_nodes_with_the_same_hostname(netns_hosts: TestHosts,
                                                      tmp_path: Path) -> None:
    addr = {n.name: n.host for n in load_inventory(netns_hosts.inventory).nodes}
    inv = inventory(netns_hosts, tmp_path, [{"name": "th0", "host": addr["th0"]},
                                            {"name": "th0-again", "host": "th0"},
                                            {"name": "th1", "host": addr["th1"]}])
    one_machine = orch("check", "-i", str(inv), "-c", "tiny")
    # th0 twice is one machine (same machine-id and boot id): its one hostname is the truth
    assert one_machine.returncode == 0 and "hostname:" not in one_machine.stderr, \
        one_machine.stderr
    assert netns_hosts.ssh("th1", "hostname th0").returncode == 0  # another machine, th0's name
    try:
        res = orch("check", "-i", str(inv), "-c", "tiny")
        ranktable = orch("check", "-i", str(inv), "-c", "tiny", "--mode", "ranktable")
    finally:
        assert netns_hosts.ssh("th1", "hostname th1").returncode == 0
    assert res.returncode == 1
    assert "[th0] hostname: th0 (same as th1)" in res.stderr, res.stderr
    assert "[th0-again] hostname: th0 (same as th1)" in res.stderr
    assert "[th1] hostname: th0 (same as th0, th0-again)" in res.stderr
    assert "hostname:" not in ranktable.stderr  # only the dynamic cluster needs them distinct
