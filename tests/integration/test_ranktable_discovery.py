"""Rank-table discovery over real SSH equals the offline result for the same device IPs.

Each netns test host has its own /etc/hccn.conf (tests/testhosts.sh keeps a copy in
<state>/hosts/<name>/hccn.conf); the hosts have no hccn_tool, so discovery takes the
/etc/hccn.conf fallback, as hccl_tools does on machines without the tool.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from orchestrator.cli.main import cli
from orchestrator.config.inventory import load_inventory
from orchestrator.errors import RankTableError
from orchestrator.hccl.discover import parse_hccn_conf
from orchestrator.hccl.ranktable import build_tables, per_server_filename
from orchestrator.job.discover import discover
from orchestrator.remote.group import NodeGroup

pytestmark = pytest.mark.integration


def offline_ips(hosts, inv) -> dict[str, dict[int, str]]:
    """Device IPs read from the local copies of each host's /etc/hccn.conf."""
    return {n.name: parse_hccn_conf((hosts.state / "hosts" / n.name / "hccn.conf").read_text())
            for n in inv.nodes}


def test_discovery_equals_offline(netns_hosts) -> None:
    inv = load_inventory(netns_hosts.inventory)
    with NodeGroup(inv) as transports:
        probes = discover(transports, inv.nodes)
    assert {name: dict(p.device_ips) for name, p in probes.items()} == offline_ips(netns_hosts, inv)
    assert {p.source for p in probes.values()} == {"/etc/hccn.conf"}
    ips = {name: dict(p.device_ips) for name, p in probes.items()}
    assert len({ip for m in ips.values() for ip in m.values()}) == 8 * len(inv.nodes)


def test_cli_discover_writes_the_offline_tables(netns_hosts, tmp_path: Path) -> None:
    inv = load_inventory(netns_hosts.inventory)
    merged, per_server = build_tables(inv, offline_ips(netns_hosts, inv))
    out = tmp_path / "rank_table.json"
    res = CliRunner().invoke(cli, ["ranktable", "--inventory", str(netns_hosts.inventory),
                                   "--discover", "-o", str(out),
                                   "--per-server-dir", str(tmp_path / "per")])
    assert res.exit_code == 0, res.output
    assert f"discovered device IPs on {len(inv.nodes)} node(s): /etc/hccn.conf on " \
           f"{len(inv.nodes)}" in res.output
    assert json.loads(out.read_text()) == merged.to_json()
    assert {p.name: json.loads(p.read_text()) for p in (tmp_path / "per").iterdir()} == \
        {per_server_filename(t): t.to_json() for t in per_server}
    assert CliRunner().invoke(cli, ["ranktable", "check", str(out)]).exit_code == 0


def test_inventory_device_ips_win_over_discovery(netns_hosts, tmp_path: Path) -> None:
    doc = yaml.safe_load(netns_hosts.inventory.read_text())
    first = doc["nodes"][0]
    first["device_ips"] = {d: f"10.200.{d}.1" for d in range(8)}
    inv_path = tmp_path / "inventory.yaml"
    inv_path.write_text(yaml.safe_dump(doc))
    out = tmp_path / "t.json"
    res = CliRunner().invoke(cli, ["ranktable", "-i", str(inv_path), "--discover", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert f"discovered device IPs on {len(doc['nodes']) - 1} node(s)" in res.output
    servers = {s["server_id"]: s for s in json.loads(out.read_text())["server_list"]}
    assert [d["device_ip"] for d in servers[first["host"]]["device"]] == \
        [f"10.200.{d}.1" for d in range(8)]


def test_devices_missing_from_hccn_conf_name_every_node(netns_hosts, tmp_path: Path) -> None:
    doc = yaml.safe_load(netns_hosts.inventory.read_text())
    doc.setdefault("defaults", {})["devices"] = 16
    for node in doc["nodes"]:
        node.pop("devices", None)
    inv_path = tmp_path / "inventory.yaml"
    inv_path.write_text(yaml.safe_dump(doc))
    inv = load_inventory(inv_path)
    with NodeGroup(inv) as transports, pytest.raises(RankTableError) as e:
        discover(transports, inv.nodes)
    msg = str(e.value)
    assert msg.startswith(f"device discovery failed on {len(inv.nodes)} of {len(inv.nodes)}")
    for n in inv.nodes:
        assert f"[{n.name}] no device IP for device(s) 8, 9, 10, 11, 12, 13, 14, 15: tried " \
               f"`hccn_tool -i <id> -ip -g` (not installed) and /etc/hccn.conf (has no " \
               f"address_N line for device(s) 8, 9, 10, 11, 12, 13, 14, 15)" in msg


def test_up_with_a_platform_table_stages_its_ips_not_discovery(netns_hosts, tmp_path: Path
                                                               ) -> None:
    """`up --rank-table` (issue 15.4): the platform's v0 table, in server_id order, is what every
    node gets; /etc/hccn.conf on the hosts is not asked."""
    inv = load_inventory(netns_hosts.inventory)
    nodes = [n for n in inv.nodes if n.name in ("th0", "th1")]
    doc = yaml.safe_load(netns_hosts.inventory.read_text())
    doc["nodes"] = [{"name": n.name, "host": n.host} for n in nodes]
    inv_path = tmp_path / "inventory.yaml"
    inv_path.write_text(yaml.safe_dump(doc))
    table = {"status": "completed", "group_count": "1", "group_list": [{
        "group_name": "worker", "instance_list": [
            {"pod_name": f"job-worker-{i}", "server_id": n.host,
             "devices": [{"device_id": str(d), "device_ip": f"10.201.{d}.{i + 1}"}
                         for d in n.devices]}
            for i, n in enumerate(nodes)]}]}
    src = tmp_path / "jobstart_hccl.json"
    src.write_text(json.dumps(table))
    state = tmp_path / "state"
    res = CliRunner().invoke(cli, ["up", "-i", str(inv_path), "-c", "tiny", "--set", "data.path=",
                                   "--rank-table", str(src), "--entrypoint", "true", "--wait",
                                   "--no-guard", "--state-dir", str(state)])
    assert res.exit_code == 0, res.output
    record = json.loads(next((state / "jobs").glob("tiny-*.json")).read_text())
    assert record["mode"] == "ranktable" and record["status"] == "SUCCEEDED"
    for node in record["nodes"]:
        got = netns_hosts.ssh(node["name"], f"cat {node['job_dir']}/rank_table.json")
        assert got.returncode == 0, got.stderr
        served = {s["server_id"]: [d["device_ip"] for d in s["device"]]
                  for s in json.loads(got.stdout)["server_list"]}
        assert served == {n.host: [f"10.201.{d}.{i + 1}" for d in n.devices]
                          for i, n in enumerate(nodes)}
