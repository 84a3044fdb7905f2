"""`orchestrate ranktable` and `ranktable merge`: files written, errors, nothing half-done."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from orchestrator.cli.main import cli

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "ranktable"


def inventory_with_ips(tmp_path: Path, servers: str = "s3", machine: int = 8,
                       devices: str = "8", extra: str = "") -> Path:
    """An inventory whose nodes carry `device_ips` taken from the hccn fixture."""
    from orchestrator.hccl.discover import parse_hccn_conf

    confs = yaml.safe_load((FIXTURES / "hccn" / f"{servers}_{machine}dev.yaml").read_text())
    nodes = [{"host": h, "device_ips": parse_hccn_conf(t)} for h, t in confs.items()]
    path = tmp_path / "inv.yaml"
    path.write_text(f"defaults: {{devices: {devices}}}\n" + extra
                    + yaml.safe_dump({"nodes": nodes}))
    return path


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_generate_writes_golden_merged_and_per_server(tmp_path: Path) -> None:
    inv = inventory_with_ips(tmp_path)
    out = tmp_path / "merged.json"
    res = run("ranktable", "--inventory", str(inv), "-o", str(out),
              "--per-server-dir", str(tmp_path / "per"))
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text()) == \
        json.loads((FIXTURES / "s3_8dev" / "hccl_3s_24p.json").read_text())
    golden = json.loads((FIXTURES / "s3_8dev" / "per_server.json").read_text())
    assert {p.name: json.loads(p.read_text()) for p in (tmp_path / "per").iterdir()} == golden
    assert "wrote 3 per-server tables" in res.output
    assert run("ranktable", "check", str(out)).exit_code == 0


def test_generate_default_name_in_current_folder(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    inv = inventory_with_ips(tmp_path, "s2", 16, "16")
    monkeypatch.chdir(tmp_path)
    res = run("ranktable", "-i", str(inv))
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "hccl_2s_32p.json").read_text()) == \
        json.loads((FIXTURES / "s2_16dev" / "hccl_2s_32p.json").read_text())


def test_generate_without_ips_names_nodes_and_writes_nothing(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             repo: Path) -> None:
    monkeypatch.chdir(tmp_path)
    res = run("ranktable", "--inventory", str(repo / "inventories" / "12node.yaml"))
    assert res.exit_code == 1
    assert "device IPs are needed for 12 node(s) without `device_ips`: 192.168.0.0, " in res.output
    assert "--discover" in res.output
    assert list(tmp_path.iterdir()) == []


def test_generate_bad_device_range_writes_nothing(tmp_path: Path) -> None:
    inv = inventory_with_ips(tmp_path, devices="[3, 4, 5]")
    res = run("ranktable", "-i", str(inv), "-o", str(tmp_path / "m.json"),
              "--per-server-dir", str(tmp_path / "per"))
    assert res.exit_code == 1
    assert "devices [3,6) cross the 4-device group boundary at 4" in res.output
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "per").exists()


def test_format_1_2_refused_clearly(tmp_path: Path) -> None:
    inv = inventory_with_ips(tmp_path)
    res = run("ranktable", "-i", str(inv), "--format", "1.2", "-o", str(tmp_path / "m.json"))
    assert res.exit_code == 1
    assert "--format 1.2 needs --discover" in res.output
    res = run("ranktable", "-i", str(inv), "--format", "1.2", "--discover",
              "-o", str(tmp_path / "m.json"))
    assert res.exit_code == 1
    assert "--format 1.2 needs `super_pod_id` for every node" in res.output
    assert not (tmp_path / "m.json").exists()


def test_no_inventory_is_a_usage_error() -> None:
    res = CliRunner(env={"ORCHESTRATE_INVENTORY": None}).invoke(cli, ["ranktable"])
    assert res.exit_code == 2
    assert "give --inventory" in res.output


def test_merge_sorts_and_matches_golden(tmp_path: Path) -> None:
    per_server = json.loads((FIXTURES / "s12_8dev" / "per_server.json").read_text())
    paths = []
    for name, table in per_server.items():
        (tmp_path / name).write_text(json.dumps(table, indent=4))
        paths.append(str(tmp_path / name))
    paths.reverse()  # argument order must not matter
    out = tmp_path / "out" / "merged.json"
    res = run("ranktable", "merge", *paths, "-o", str(out))
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text()) == \
        json.loads((FIXTURES / "s12_8dev" / "hccl_12s_96p.json").read_text())
    assert "12 servers, 96 ranks" in res.output


def test_merge_refuses_bad_input_and_writes_nothing(tmp_path: Path) -> None:
    good = tmp_path / "a.json"
    good.write_text(json.dumps(
        json.loads((FIXTURES / "s2_8dev" / "per_server.json").read_text())
        ["hccl_8p_01234567_10.1.0.9.json"]))
    bad = tmp_path / "b.json"
    bad.write_text('{"version": "1.0", "server_count": 1}')
    out = tmp_path / "m.json"
    res = run("ranktable", "merge", str(good), str(bad), "-o", str(out))
    assert res.exit_code == 1
    assert f"{bad}: 3 problem(s): missing key `server_list`" in res.output
    assert not out.exists()
    res = run("ranktable", "merge", str(good), str(good), "-o", str(out))
    assert res.exit_code == 1 and "server_id 10.1.0.9 is in both" in res.output
    assert not out.exists()


@pytest.mark.skipif(Path("/etc/hccn.conf").exists() or shutil.which("hccn_tool") is not None,
                    reason="this machine has Ascend device IPs")
def test_discover_on_a_local_node_without_device_ips_names_what_was_tried(
        tmp_path: Path, repo: Path) -> None:
    out = tmp_path / "t.json"
    res = run("ranktable", "-i", str(repo / "inventories" / "local.yaml"), "--discover",
              "-o", str(out))
    assert res.exit_code == 1
    assert "device discovery failed on 1 of 1 node(s): [local] no device IP for device(s) 0, 1: " \
           "tried `hccn_tool -i <id> -ip -g` (not installed) and /etc/hccn.conf (cannot read" \
           in res.output
    assert not out.exists()
