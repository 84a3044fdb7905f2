"""`ranktable check`: one test per problem class, all problems at once, our own output passes."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from orchestrator.cli.main import cli
from orchestrator.hccl.check import validate_doc, validate_text

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "ranktable"


def good() -> dict[str, Any]:
    """A valid merged table: 10.0.0.10 sorts before 10.0.0.9, so it holds ranks 0-1."""
    return {
        "version": "1.0",
        "server_count": "2",
        "server_list": [
            {"server_id": "10.0.0.10", "device": [
                {"device_id": "0", "device_ip": "192.98.90.2", "rank_id": "0"},
                {"device_id": "1", "device_ip": "192.98.91.2", "rank_id": "1"}],
             "host_nic_ip": "reserve"},
            {"server_id": "10.0.0.9", "device": [
                {"device_id": "0", "device_ip": "192.98.90.1", "rank_id": "2"},
                {"device_id": "1", "device_ip": "192.98.91.1", "rank_id": "3"}],
             "host_nic_ip": "reserve"},
        ],
        "status": "completed",
    }


def problems_after(change) -> list[str]:
    doc = copy.deepcopy(good())
    change(doc)
    return validate_doc(doc)


def test_good_table_has_no_problems() -> None:
    assert validate_doc(good()) == []


@pytest.mark.parametrize("golden", sorted(FIXTURES.glob("s*/hccl_*.json")), ids=lambda p: p.name)
def test_our_golden_output_passes(golden: Path) -> None:
    assert validate_text(golden.read_text()) == []


def test_bad_json() -> None:
    assert validate_text('{"version": "1.0",,}') == ["bad JSON at line 1, column 19: "
                                                      "Expecting property name enclosed in "
                                                      "double quotes"]


def test_missing_keys() -> None:
    def change(d):
        del d["status"]
        del d["server_list"][0]["device"][1]["device_ip"]
        del d["server_list"][1]["server_id"]
    found = problems_after(change)
    assert "missing key `status`" in found
    assert "server_list[0] (10.0.0.10) device[1]: missing key `device_ip`" in found
    assert "server_list[1]: missing key `server_id`" in found


def test_non_string_values() -> None:
    def change(d):
        d["server_count"] = 2
        d["server_list"][0]["device"][0]["rank_id"] = 0
        d["server_list"][1]["device"][1]["device_id"] = 1
    found = problems_after(change)
    assert "`server_count` must be a string, got 2" in found
    assert "server_list[0] (10.0.0.10) device[0]: `rank_id` must be a string, got 0" in found
    assert "server_list[1] (10.0.0.9) device[1]: `device_id` must be a string, got 1" in found


def test_empty_server_list() -> None:
    found = problems_after(lambda d: d.update(server_list=[], server_count="0"))
    assert found == ["`server_list` is empty"]


def test_server_count_mismatch() -> None:
    found = problems_after(lambda d: d.update(server_count="3"))
    assert found == ["`server_count` is 3 but `server_list` has 2 server(s)"]


def test_duplicate_server_ids() -> None:
    found = problems_after(lambda d: d["server_list"][1].update(server_id="10.0.0.10"))
    assert "duplicate server_id '10.0.0.10' in server_list[0] (10.0.0.10) and server_list[1] " \
           "(10.0.0.10)" in found


def test_duplicate_device_ips_across_cluster() -> None:
    found = problems_after(
        lambda d: d["server_list"][1]["device"][0].update(device_ip="192.98.91.2"))
    assert found == ["duplicate device_ip 192.98.91.2 in server_list[0] (10.0.0.10) device[1] "
                     "and server_list[1] (10.0.0.9) device[0]"]


def test_duplicate_device_ids_in_a_server() -> None:
    found = problems_after(lambda d: d["server_list"][1]["device"][1].update(device_id="0"))
    assert found[0] == ("server_list[1] (10.0.0.9): duplicate device_id 0 in server_list[1] "
                        "(10.0.0.9) device[0] and server_list[1] (10.0.0.9) device[1]")


def test_rank_ids_not_contiguous() -> None:
    found = problems_after(lambda d: d["server_list"][1]["device"][1].update(rank_id="5"))
    assert found == ["rank ids are not 0..3 each once (missing: 3; out of range: 5)"]
    found = problems_after(lambda d: d["server_list"][1]["device"][1].update(rank_id="2"))
    assert found == ["rank ids are not 0..3 each once (duplicated: 2; missing: 3)"]


def test_rank_order_not_dictionary_order_of_server_id() -> None:
    def numeric_order(d):  # what merge_hccl.py gives for `merge_hccl.py a_9.json a_10.json`
        for s, base in zip(d["server_list"], (2, 0), strict=True):
            for i, dev in enumerate(s["device"]):
                dev["rank_id"] = str(base + i)
    found = problems_after(numeric_order)
    assert found == ["rank order does not follow the dictionary order of server_id (devices "
                     "ascending): server_list[0] (10.0.0.10) device[0] has rank_id 2, "
                     "expected 0"]


def test_devices_out_of_order_within_a_server() -> None:
    def swap(d):
        devs = d["server_list"][0]["device"]
        devs[0]["rank_id"], devs[1]["rank_id"] = "1", "0"
    assert problems_after(swap)[0].startswith("rank order does not follow")


def test_invalid_ipv4() -> None:
    def change(d):
        d["server_list"][0]["device"][0]["device_ip"] = "192.98.90.256"
        d["server_list"][1]["server_id"] = "10.0.0.999"
    found = problems_after(change)
    assert "server_list[0] (10.0.0.10) device[0]: device_ip '192.98.90.256' is not a valid IPv4 " \
           "address" in found
    assert "server_list[1] (10.0.0.999): server_id '10.0.0.999' is not a valid IPv4 address" \
           in found


def test_every_problem_reported_at_once() -> None:
    def change(d):
        d["server_count"] = "7"
        d["server_list"][0]["device"][0]["device_ip"] = "x"
        d["server_list"][1]["device"][0]["device_ip"] = "192.98.91.2"
        d["status"] = 1
    assert len(problems_after(change)) == 4


def test_version_1_2_duplicate_super_device_id_in_a_pod() -> None:
    def v12(d, same_pod: bool):
        d["version"] = "1.2"
        for s in d["server_list"]:
            for j, dev in enumerate(s["device"]):
                dev["super_device_id"] = str(j)  # 0, 1 on both servers
        d["super_pod_list"] = (
            [{"super_pod_id": "0", "server_list": [{"server_id": "10.0.0.10"},
                                                   {"server_id": "10.0.0.9"}]}] if same_pod else
            [{"super_pod_id": "0", "server_list": [{"server_id": "10.0.0.10"}]},
             {"super_pod_id": "1", "server_list": [{"server_id": "10.0.0.9"}]}])
    assert problems_after(lambda d: v12(d, same_pod=False)) == []
    found = problems_after(lambda d: v12(d, same_pod=True))
    assert found == ["duplicate super_device_id 0 in super pod 0: server_list[0] (10.0.0.10) "
                     "device[0] and server_list[1] (10.0.0.9) device[0]",
                     "duplicate super_device_id 1 in super pod 0: server_list[0] (10.0.0.10) "
                     "device[1] and server_list[1] (10.0.0.9) device[1]"]


def test_version_1_2_needs_its_fields() -> None:
    def change(d):
        d["version"] = "1.2"
    found = problems_after(change)
    assert "format 1.2: missing or malformed `super_pod_list`" in found
    assert "server_list[0] (10.0.0.10) device[0]: missing key `super_device_id`" in found


# --- the CLI ---------------------------------------------------------------------------------


def test_check_cli_passes_golden_and_fails_with_every_problem(tmp_path: Path) -> None:
    runner = CliRunner()
    golden = str(FIXTURES / "s12_8dev" / "hccl_12s_96p.json")
    res = runner.invoke(cli, ["ranktable", "check", golden])
    assert res.exit_code == 0, res.output
    assert "ok (version 1.0, 12 servers, 96 ranks)" in res.output
    doc = good()
    doc["server_count"] = "5"
    doc["server_list"][0]["device"][0]["rank_id"] = "9"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    res = runner.invoke(cli, ["ranktable", "check", golden, str(bad)])
    assert res.exit_code == 1
    assert f"{bad}: `server_count` is 5 but `server_list` has 2 server(s)" in res.output
    assert f"{bad}: rank ids are not 0..3 each once" in res.output
    assert "1 of 2 rank table(s) have problems" in res.output
