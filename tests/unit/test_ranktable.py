"""Rank tables: golden equality with the manual MindFormers flow, ordering, ranges, merge, files."""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.config.inventory import load_inventory, parse_inventory
from orchestrator.errors import RankTableError
from orchestrator.hccl.check import is_valid_ipv4, parse_table, validate_doc
from orchestrator.hccl.discover import parse_hccn_conf
from orchestrator.hccl.ranktable import (
    RankDevice,
    RankServer,
    RankTable,
    build_tables,
    check_device_range,
    merge_tables,
    merged_filename,
    node_rank_ranges,
    per_server_filename,
    per_server_table,
    resolve_device_ips,
    write_tables,
    write_text_atomic,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "ranktable"
VARIANTS = {"8dev": ("[0, 1, 2, 3, 4, 5, 6, 7]", 8), "lo4": ("4", 8), "hi4": ("[4, 5, 6, 7]", 8),
            "16dev": ("16", 16)}
CASES = [f"s{n}_{v}" for n in (2, 3, 12, 128) for v in VARIANTS]


def load_case(case: str):
    """(inventory, device IPs from each hccn.conf, golden merged path, golden per-server)."""
    servers, variant = case.split("_")
    devices, machine = VARIANTS[variant]
    confs = yaml.safe_load((FIXTURES / "hccn" / f"{servers}_{machine}dev.yaml").read_text())
    inv = parse_inventory(f"defaults: {{devices: {devices}}}\nhosts: {json.dumps(list(confs))}\n",
                          f"{case}.yaml")
    ips = {host: parse_hccn_conf(text) for host, text in confs.items()}
    merged_path = next(p for p in (FIXTURES / case).glob("hccl_*.json"))
    per_server = json.loads((FIXTURES / case / "per_server.json").read_text())
    return inv, ips, merged_path, per_server


@pytest.mark.parametrize("case", CASES)
def test_tables_equal_golden(case: str) -> None:
    inv, ips, merged_path, golden_per_server = load_case(case)
    merged, per_server = build_tables(inv, ips)
    assert merged_filename(merged) == merged_path.name
    assert merged.to_json() == json.loads(merged_path.read_text())
    assert {per_server_filename(t): t.to_json() for t in per_server} == golden_per_server


@pytest.mark.parametrize("case", ["s3_8dev", "s12_16dev"])
def test_merging_golden_per_server_files_gives_golden_merged(case: str) -> None:
    _inv, _ips, merged_path, per_server = load_case(case)
    names = sorted(per_server, reverse=True)  # any order: merge sorts by server_id
    tables = [parse_table(json.dumps(per_server[n]), n) for n in names]
    assert merge_tables(tables, names).to_json() == json.loads(merged_path.read_text())


def test_json_text_key_order_and_strings() -> None:
    table = per_server_table("192.168.0.3", (0, 1), {0: "192.98.92.10", 1: "192.98.93.10"})
    text = table.dumps()
    assert list(json.loads(text)) == ["version", "server_count", "server_list", "status"]
    server = json.loads(text)["server_list"][0]
    assert list(server) == ["server_id", "device", "host_nic_ip"]
    assert list(server["device"][0]) == ["device_id", "device_ip", "rank_id"]
    assert server["device"][1] == {"device_id": "1", "device_ip": "192.98.93.10", "rank_id": "1"}
    assert json.loads(text)["server_count"] == "1" and text.startswith('{\n    "version": "1.0"')
    assert per_server_filename(table) == "hccl_2p_01_192.168.0.3.json"


def test_merged_order_is_dictionary_order_of_server_id() -> None:
    inv = parse_inventory("defaults: {devices: 2}\nhosts: [192.168.0.2, 192.168.0.10, 10.0.0.1]\n")
    ips = {n.name: {0: f"1.1.{i}.1", 1: f"1.1.{i}.2"} for i, n in enumerate(inv.nodes)}
    merged, _ = build_tables(inv, ips)
    assert [s.server_id for s in merged.servers] == ["10.0.0.1", "192.168.0.10", "192.168.0.2"]
    assert merged.rank_ranges() == {"10.0.0.1": (0, 2), "192.168.0.10": (2, 4),
                                    "192.168.0.2": (4, 6)}


def test_plan_json_agrees_with_merged_table_on_12node(repo: Path) -> None:
    from click.testing import CliRunner

    from orchestrator.cli.main import cli

    inv_path = repo / "inventories" / "12node.yaml"
    res = CliRunner().invoke(cli, ["plan", "--inventory", str(inv_path), "--config", "65b",
                                   "--json"])
    assert res.exit_code == 0, res.output
    nodes = json.loads(res.output)["nodes"]
    plan_ranges = {n["host"]: (n["rank_start"], n["rank_end"]) for n in nodes}
    inv = load_inventory(inv_path)
    confs = yaml.safe_load((FIXTURES / "hccn" / "s12_8dev.yaml").read_text())
    merged, _ = build_tables(inv, {h: parse_hccn_conf(t) for h, t in confs.items()})
    assert merged.rank_ranges() == plan_ranges
    assert plan_ranges["192.168.0.10"] == (16, 24)
    assert {r.node.host: (r.rank_start, r.rank_end) for r in node_rank_ranges(inv)} == plan_ranges


# --- hccl_tools' device-range rules ----------------------------------------------------------


@pytest.mark.parametrize("devices", [range(8), range(16), range(4), range(4, 8), range(1),
                                     [2, 3], range(8, 12), range(12, 16), [5]])
def test_device_ranges_hccl_tools_accepts(devices) -> None:
    check_device_range(list(devices), "node x")


@pytest.mark.parametrize(("devices", "message"), [
    ([3, 4, 5], r"devices \[3,6\) cross the 4-device group boundary at 4"),
    ([0, 1, 2, 3, 4], r"devices \[0,5\) cross .* boundary at 4"),
    ([1, 2, 3, 4, 5, 6, 7], r"devices \[1,8\) cross"),
    ([4, 5, 6, 7, 8, 9, 10, 11], r"devices \[4,12\) cross .* at 8"),
    ([8, 9, 10, 11, 12, 13, 14, 15], r"devices \[8,16\) cross .* at 12"),
    ([0, 2, 4, 6], r"devices \[0, 2, 4, 6\] are not contiguous"),
])
def test_device_ranges_hccl_tools_refuses(devices, message) -> None:
    with pytest.raises(RankTableError, match=f"node x: {message}"):
        check_device_range(devices, "node x")


def test_device_without_ip_is_named() -> None:
    with pytest.raises(RankTableError, match=r"node 10.0.0.1: no device IP for device\(s\) 2, 3 "
                                             r"\(known: 0, 1\)"):
        per_server_table("10.0.0.1", [0, 1, 2, 3], {0: "1.1.1.1", 1: "1.1.1.2"})


def test_missing_device_ips_name_the_nodes_and_invent_nothing() -> None:
    inv = parse_inventory("nodes:\n  - {host: 10.0.0.1, devices: 1, device_ips: {0: 1.1.1.1}}\n"
                          "  - {host: 10.0.0.2, name: b, devices: 1}\n"
                          "  - {host: 10.0.0.3, name: c, devices: 1}\n", "inv.yaml")
    with pytest.raises(RankTableError, match=r"inv.yaml: device IPs are needed for 2 node\(s\) "
                                             r"without `device_ips`: b, c; .*--discover"):
        resolve_device_ips(inv)
    ips = resolve_device_ips(inv, {"b": {0: "1.1.1.2"}, "c": {0: "1.1.1.3"},
                                   "10.0.0.1": {0: "9.9.9.9"}})
    assert ips["10.0.0.1"] == {0: "1.1.1.1"}  # the inventory wins over discovery
    assert ips["b"] == {0: "1.1.1.2"}


def test_duplicate_host_refused() -> None:
    inv = parse_inventory("nodes:\n  - {host: 10.0.0.1, port: 22, devices: 1}\n"
                          "  - {host: 10.0.0.1, port: 2222, name: twin, devices: 1}\n", "d.yaml")
    ips = {n.name: {0: f"1.1.1.{i}"} for i, n in enumerate(inv.nodes)}
    with pytest.raises(RankTableError, match="share host 10.0.0.1"):
        build_tables(inv, ips)


# --- merge -----------------------------------------------------------------------------------


def _one(host: str, last_octet: int, devices=(0, 1)) -> RankTable:
    return per_server_table(host, devices, {d: f"192.98.{90 + d}.{last_octet}" for d in devices})


def test_merge_sorts_by_server_id_whatever_the_argument_order() -> None:
    tables = [_one("192.168.0.2", 2), _one("192.168.0.10", 10), _one("192.168.0.1", 1)]
    merged = merge_tables(tables, ["a", "b", "c"])
    assert [s.server_id for s in merged.servers] == ["192.168.0.1", "192.168.0.10", "192.168.0.2"]
    ranks = [d["rank_id"] for s in merged.to_json()["server_list"] for d in s["device"]]
    assert ranks == [str(r) for r in range(6)]
    assert validate_doc(merged.to_json()) == []


def test_merge_refuses_a_server_twice() -> None:
    with pytest.raises(RankTableError, match="server_id 10.0.0.1 is in both a.json and b.json"):
        merge_tables([_one("10.0.0.1", 1), _one("10.0.0.1", 2)], ["a.json", "b.json"])


# --- format 1.2 ------------------------------------------------------------------------------


def test_format_1_2_fields() -> None:
    inv = parse_inventory("defaults: {devices: 2}\nnodes:\n"
                          "  - {host: 10.0.0.2, super_pod_id: 1}\n"
                          "  - {host: 10.0.0.10, super_pod_id: 0}\n"
                          "  - {host: 10.0.0.3, super_pod_id: 1}\n")
    ips = {n.name: {0: f"1.1.{i}.1", 1: f"1.1.{i}.2"} for i, n in enumerate(inv.nodes)}
    sdids = {n.name: {0: str(1000 * i), 1: str(1000 * i + 1)} for i, n in enumerate(inv.nodes)}
    merged, per_server = build_tables(inv, ips, version="1.2", super_device_ids=sdids)
    doc = merged.to_json()
    assert list(doc) == ["version", "server_count", "server_list", "super_pod_list", "status"]
    assert doc["version"] == "1.2"
    assert doc["server_list"][0]["device"][1] == {"device_id": "1", "device_ip": "1.1.1.2",
                                                  "super_device_id": "1001", "rank_id": "1"}
    assert doc["super_pod_list"] == [
        {"super_pod_id": "0", "server_list": [{"server_id": "10.0.0.10"}]},
        {"super_pod_id": "1", "server_list": [{"server_id": "10.0.0.2"},
                                              {"server_id": "10.0.0.3"}]}]
    assert validate_doc(doc) == []
    assert parse_table(merged.dumps(), "x").to_json() == doc
    assert per_server[0].to_json()["super_pod_list"][0]["super_pod_id"] == "0"


def test_format_1_2_refused_without_its_data() -> None:
    inv = parse_inventory("defaults: {devices: 1}\nnodes:\n  - {host: 10.0.0.2, super_pod_id: 1}\n"
                          "  - {host: 10.0.0.3, name: nopod}\n")
    ips = {n.name: {0: f"1.1.1.{i}"} for i, n in enumerate(inv.nodes)}
    with pytest.raises(RankTableError, match="needs `super_pod_id` .*missing for: nopod"):
        build_tables(inv, ips, version="1.2", super_device_ids={})
    inv = parse_inventory("defaults: {devices: 1, super_pod_id: 0}\nhosts: [10.0.0.2]\n")
    with pytest.raises(RankTableError, match=r"no super_device_id for device\(s\) 0"):
        build_tables(inv, {"10.0.0.2": {0: "1.1.1.1"}}, version="1.2", super_device_ids={})


# --- files -----------------------------------------------------------------------------------


def test_write_tables_writes_merged_and_per_server(tmp_path: Path) -> None:
    inv, ips, merged_path, golden = load_case("s3_lo4")
    merged, per_server = build_tables(inv, ips)
    written = write_tables(merged, tmp_path / "out" / "m.json", per_server, tmp_path / "per")
    assert sorted(p.name for p in (tmp_path / "per").iterdir()) == sorted(golden)
    merged_text = (tmp_path / "out" / "m.json").read_text()
    assert json.loads(merged_text) == json.loads(merged_path.read_text())
    assert len(written) == 4


def test_atomic_write_leaves_old_file_and_no_temp_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "t.json"
    target.write_text("old")

    with pytest.raises(TypeError):
        write_text_atomic(target, 12345)  # type: ignore[arg-type]  # write() refuses an int
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["t.json"]


def test_atomic_write_error_names_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(RankTableError, match=f"{blocker}/x.json: cannot write"):
        write_text_atomic(blocker / "x.json", "{}")


# --- fast paths agree with the standard library ----------------------------------------------


@pytest.mark.parametrize("case", ["s2_8dev", "s12_16dev"])
def test_dumps_is_byte_identical_to_json_indent_4(case: str) -> None:
    inv, ips, _merged_path, _golden = load_case(case)
    merged, per_server = build_tables(inv, ips)
    for t in (merged, per_server[0]):
        assert t.dumps() == json.dumps(t.to_json(), indent=4) + "\n"
    v12 = RankTable(servers=tuple(
        RankServer(s.server_id, tuple(RankDevice(d.device_id, d.device_ip, "7")
                                      for d in s.devices), s.rank_start, super_pod_id="p\u00e9")
        for s in merged.servers), version="1.2")
    assert v12.dumps() == json.dumps(v12.to_json(), indent=4) + "\n"
    empty = RankTable(servers=())
    assert empty.dumps() == json.dumps(empty.to_json(), indent=4) + "\n"


@given(st.one_of(
    st.ip_addresses(v=4).map(str),
    st.lists(st.integers(-1, 300).map(str) | st.sampled_from(["01", "00", "", " 1", "1 ", "a"]),
             min_size=3, max_size=5).map(".".join),
    st.text(alphabet="0123456789.\n", max_size=16)))
def test_fast_ipv4_check_agrees_with_ipaddress(text: str) -> None:
    try:
        ipaddress.IPv4Address(text)
        expected = True
    except ValueError:
        expected = False
    assert is_valid_ipv4(text) is expected


_LAYOUTS = [list(range(8)), list(range(4)), [4, 5, 6, 7], list(range(16)), [2, 3], [9], [12, 13]]


@given(st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255), st.sampled_from(_LAYOUTS)),
                min_size=1, max_size=40, unique_by=lambda t: t[:2]),
       st.randoms(use_true_random=False))
def test_any_inventory_gives_a_valid_table_that_agrees_with_plan(nodes, rnd) -> None:
    lines = ["nodes:"] + [f"  - {{host: 10.{a}.{b}.1, devices: {devs}}}" for a, b, devs in nodes]
    inv = parse_inventory("\n".join(lines) + "\n")
    ips = {n.name: {d: f"192.{i // 256}.{i % 256}.{d + 1}" for d in n.devices}
           for i, n in enumerate(inv.nodes)}
    merged, per_server = build_tables(inv, ips)
    assert validate_doc(merged.to_json()) == []
    assert merged.rank_ranges() == {r.node.host: (r.rank_start, r.rank_end)
                                    for r in node_rank_ranges(inv)}
    shuffled = list(per_server)
    rnd.shuffle(shuffled)
    assert merge_tables(shuffled) == merged
    assert parse_table(merged.dumps(), "m") == merged
