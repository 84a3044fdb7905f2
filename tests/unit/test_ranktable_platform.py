"""Platform rank tables (issue 15.4): ModelArts v0, v1.0/1.2 in the wrong server order,
"initializing" files that `up` waits for, and `up --rank-table` matched to the inventory.

    python -m pytest tests/unit/test_ranktable_platform.py -q
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from orchestrator.cli.main import cli
from orchestrator.config.inventory import parse_inventory
from orchestrator.errors import RankTableError
from orchestrator.hccl.platform import check_against_inventory, read_platform_table

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "ranktable"
GOLDEN_12 = FIXTURES / "s12_8dev" / "hccl_12s_96p.json"


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


def v0_of(golden: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    """ModelArts' jobstart_hccl.json for the golden table's servers: pods numbered in host
    order (192.168.0.2 is pod 2, before 192.168.0.10, which is pod 10), listed backwards,
    no rank ids."""
    def pod(s: dict[str, Any]) -> int:
        return int(s["server_id"].rsplit(".", 1)[1])
    instances = [{"pod_name": f"bloom-worker-{pod(s)}", "server_id": s["server_id"],
                  "devices": [{"device_id": d["device_id"], "device_ip": d["device_ip"]}
                              for d in s["device"]]}
                 for s in sorted(golden["server_list"], key=pod, reverse=True)]
    return {"status": status, "group_count": "1",
            "group_list": [{"group_name": "worker", "device_count": "96",
                            "instance_count": "12", "instance_list": instances}]}


def in_list_order(golden: dict[str, Any], order: list[int]) -> dict[str, Any]:
    """The golden servers listed in `order`, rank ids counted in that (wrong) order."""
    doc = json.loads(json.dumps(golden))
    doc["server_list"] = [doc["server_list"][i] for i in order]
    rank = 0
    for s in doc["server_list"]:
        for d in s["device"]:
            d["rank_id"] = str(rank)
            rank += 1
    return doc


def test_convert_v0_writes_v1_in_server_id_order(tmp_path: Path) -> None:
    golden = json.loads(GOLDEN_12.read_text())
    src, out = tmp_path / "jobstart_hccl.json", tmp_path / "hccl.json"
    src.write_text(json.dumps(v0_of(golden)))
    res = run("ranktable", "check", str(src))
    assert res.exit_code == 0 and "ok (ModelArts v0 layout, 12 servers, 96 ranks" in res.output
    res = run("ranktable", "convert", str(src), "-o", str(out))
    assert res.exit_code == 0, res.output
    assert "version 1.0 from v0, 12 servers, 96 ranks; ranks renumbered" in res.output
    assert json.loads(out.read_text()) == golden  # 192.168.0.10 holds ranks 16-23
    assert run("ranktable", "check", str(out)).exit_code == 0


def test_convert_v1_in_wrong_server_order_renumbers(tmp_path: Path) -> None:
    golden = json.loads(GOLDEN_12.read_text())
    src, out = tmp_path / "hccl.json", tmp_path / "fixed.json"
    src.write_text(json.dumps(in_list_order(golden, [2, 3, 0, 1, *range(4, 12)])))
    res = run("ranktable", "check", str(src))
    assert res.exit_code == 1
    assert "rank order does not follow the dictionary order of server_id" in res.output
    assert "`orchestrate ranktable convert` writes it in server_id order" in res.output
    res = run("ranktable", "convert", str(src), "-o", str(out))
    assert res.exit_code == 0 and "ranks renumbered in server_id order" in res.output
    assert json.loads(out.read_text()) == golden
    res = run("ranktable", "convert", str(GOLDEN_12), "-o", str(out))
    assert res.exit_code == 0 and "already in server_id order" in res.output


def test_v1_2_keeps_its_version_and_pods() -> None:
    golden = json.loads(GOLDEN_12.read_text())
    doc = in_list_order(golden, list(range(11, -1, -1)))
    doc["version"] = "1.2"
    for s in doc["server_list"]:
        for d in s["device"]:
            d["super_device_id"] = str(int(d["device_ip"].split(".")[-1]) * 8
                                       + int(d["device_id"]))
    ids = [s["server_id"] for s in doc["server_list"]]
    doc["super_pod_list"] = [{"super_pod_id": "0", "server_list": [{"server_id": i}
                                                                   for i in ids]}]
    found = read_platform_table(json.dumps(doc), "t.json")
    assert found.table.version == "1.2" and found.reordered
    assert [s.server_id for s in found.table.servers] == sorted(ids)
    assert found.table.servers[2].super_pod_id == "0"


@pytest.mark.parametrize(("doc", "message"), [
    ({"status": "completed", "group_list": []}, "`group_list` must be a non-empty list"),
    ({"status": "completed", "group_list": [{"instance_list": [
        {"pod_name": "worker", "server_id": "1.1.1.1", "devices": []}]}]},
     "pod_name 'worker' does not end in a number"),
    ({"status": "completed", "group_list": [{"instance_list": [
        {"pod_name": "w-0", "server_id": "1.1.1.1",
         "devices": [{"device_id": "0", "device_ip": "1.2.3.999"}]}]}]},
     "device_ip '1.2.3.999' is not a valid IPv4 address"),
])
def test_bad_v0_is_one_line_naming_the_problem(doc: dict[str, Any], message: str,
                                                tmp_path: Path) -> None:
    src, out = tmp_path / "jobstart_hccl.json", tmp_path / "o.json"
    src.write_text(json.dumps(doc))
    res = run("ranktable", "convert", str(src), "-o", str(out))
    assert res.exit_code == 1 and message in res.output and str(src) in res.output
    assert len(res.output.strip().splitlines()) == 1 and not out.exists()


def test_initializing_is_refused_without_waiting(tmp_path: Path) -> None:
    src = tmp_path / "hccl.json"
    src.write_text(json.dumps({"status": "initializing"}))
    res = run("ranktable", "check", str(src))
    assert res.exit_code == 1 and 'status is "initializing"' in res.output
    res = run("ranktable", "convert", str(src), "-o", str(tmp_path / "o.json"))
    assert res.exit_code == 1 and "not ready after 0 s" in res.output
    assert 'status "initializing"' in res.output and not (tmp_path / "o.json").exists()


def _local_table(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    inv = tmp_path / "inv.yaml"
    inv.write_text("defaults: {connection: local, devices: 2, workdir: w}\n"
                   "nodes:\n  - {host: 127.0.0.1, name: local}\n")
    table = {"version": "1.0", "server_count": "1", "status": "completed",
             "server_list": [{"server_id": "127.0.0.1", "host_nic_ip": "reserve", "device": [
                 {"device_id": "1", "device_ip": "192.98.91.1", "rank_id": "0"},
                 {"device_id": "0", "device_ip": "192.98.90.1", "rank_id": "1"}]}]}
    return inv, table


def test_up_waits_while_the_platform_initializes_the_table(tmp_path: Path) -> None:
    inv, table = _local_table(tmp_path)
    src = tmp_path / "hccl.json"
    src.write_text(json.dumps({"status": "initializing"}))

    def platform_finishes() -> None:
        time.sleep(1.5)
        src.write_text("{")  # mid-write: not JSON yet, still waited for
        time.sleep(0.5)
        src.write_text(json.dumps(table))

    writer = threading.Thread(target=platform_finishes)
    writer.start()
    t0 = time.monotonic()
    res = CliRunner().invoke(cli, [
        "up", "-i", str(inv), "-c", "tiny", "--set", "data.path=/data/mr", "--dry-run",
        "--rank-table", str(src), "--rank-table-timeout", "60",
        "--state-dir", str(tmp_path / "state")])
    writer.join()
    assert res.exit_code == 0, res.output
    assert time.monotonic() - t0 >= 2.0  # it did wait for the rewrite
    assert f'waiting for rank table {src}: status "initializing"' in res.output
    assert "rank table" in res.output and "ranks renumbered in server_id order" in res.output
    assert "ranktable mode, 2 ranks" in res.output
    rendered = next((tmp_path / "state" / "jobs").glob("*/nodes/local/rank_table.json"))
    got = json.loads(rendered.read_text())
    assert [d["device_id"] for d in got["server_list"][0]["device"]] == ["0", "1"]
    assert [d["rank_id"] for d in got["server_list"][0]["device"]] == ["0", "1"]


def test_up_gives_up_after_rank_table_timeout(tmp_path: Path) -> None:
    inv, _ = _local_table(tmp_path)
    res = run("up", "-i", str(inv), "-c", "tiny", "--set", "data.path=/data/mr", "--dry-run",
              "--rank-table", str(tmp_path / "missing.json"), "--rank-table-timeout", "1",
              "--state-dir", str(tmp_path / "state"))
    assert res.exit_code == 1
    assert "not ready after 1 s (--rank-table-timeout): file does not exist yet" in res.output
    assert not (tmp_path / "state" / "jobs").exists() or \
        not list((tmp_path / "state" / "jobs").iterdir())
    res = run("up", "-i", str(inv), "-c", "tiny", "--dry-run", "--mode", "msrun",
              "--rank-table", str(tmp_path / "x.json"))
    assert res.exit_code == 2 and "--rank-table is ranktable mode" in res.output


def test_servers_are_matched_to_nodes_by_server_id(repo: Path) -> None:
    golden = read_platform_table(GOLDEN_12.read_text(), "t").table
    inv = parse_inventory((repo / "inventories" / "12node.yaml").read_text(), "12node.yaml")
    check_against_inventory(golden, inv)  # every server is a node's host
    fewer = parse_inventory("defaults: {devices: 8}\nhosts: [192.168.0.0, 192.168.0.1, "
                            "192.168.0.2, 10.9.9.9]\n", "inv.yaml")
    with pytest.raises(RankTableError) as e:
        check_against_inventory(golden, fewer)
    assert "server(s) not in inv.yaml: 192.168.0.10, 192.168.0.11, 192.168.0.3," in str(e.value)
    assert "node(s) not in the table: 10.9.9.9" in str(e.value)
    four = parse_inventory("defaults: {devices: 4}\nhosts: [" + ", ".join(
        s.server_id for s in golden.servers) + "]\n", "inv.yaml")
    with pytest.raises(RankTableError, match=r"devices \[0, 1, 2, 3, 4, 5, 6, 7\], the "
                                             r"inventory \[0, 1, 2, 3\]"):
        check_against_inventory(golden, four)


def test_up_dry_run_on_12_nodes_msrun_by_default_ranktable_when_asked(
        tmp_path: Path, repo: Path) -> None:
    inv = repo / "inventories" / "12node.yaml"
    common = ["up", "-i", str(inv), "-c", "7.1b", "--set", "data.path=/data/mr", "--dry-run"]
    state = tmp_path / "state"
    src = tmp_path / "jobstart_hccl.json"
    src.write_text(json.dumps(v0_of(json.loads(GOLDEN_12.read_text()))))
    modes = {}
    for name, extra in (("default", []), ("asked", ["--mode", "ranktable"]),
                        ("table", ["--rank-table", str(src)])):
        before = set((state / "jobs").glob("*/nodes"))
        res = run(*common, *extra, "--state-dir", str(state))
        assert res.exit_code == 0, res.output
        job = (set((state / "jobs").glob("*/nodes")) - before).pop().parent
        modes[name] = (res.output, job)
    out, job = modes["default"]
    assert "msrun mode, 96 ranks" in out
    assert "dynamic cluster: scheduler on 192.168.0.0 at 192.168.0.0:" in out
    launch = (job / "nodes" / "192.168.0.10" / "launch.sh").read_text()
    assert "MS_ROLE=MS_WORKER MS_NODE_ID=16 DEVICE_ID=0" in launch
    assert "MS_SCHED_HOST=192.168.0.0" in launch and "RANK_TABLE_FILE" not in launch
    assert not (job / "nodes" / "192.168.0.10" / "rank_table.json").exists()
    for name in ("asked", "table"):
        out, job = modes[name]
        assert "ranktable mode, 96 ranks" in out and "HCCL rank table: RANK_TABLE_FILE" in out
        launch = (job / "nodes" / "192.168.0.10" / "launch.sh").read_text()
        assert "RANK_ID=16 DEVICE_ID=0" in launch and "MS_SCHED_HOST" not in launch
    table = json.loads((modes["table"][1] / "nodes" / "192.168.0.10" / "rank_table.json")
                       .read_text())
    assert table == json.loads(GOLDEN_12.read_text())
