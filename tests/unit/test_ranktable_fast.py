"""The bulk fast path of rank-table validation (hccl/fastcheck.py) agrees with the full check.

    python -m pytest tests/unit/test_ranktable_fast.py -q

Every case is checked both ways: the fast path may only accept what the full check accepts,
and with the fast path switched off `validate_doc` / `parse_table` give the same answers.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator.hccl import check
from orchestrator.hccl.fastcheck import fast_tables, table_is_valid
from orchestrator.hccl.ranktable import RankServer, RankTable, make_devices

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "ranktable"
GOLDEN = sorted(FIXTURES.glob("s*/hccl_*.json"))


def good() -> dict[str, Any]:
    return json.loads((FIXTURES / "s3_8dev" / "hccl_3s_24p.json").read_text())


def slow(doc: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """validate_doc with the fast path off."""
    with monkeypatch.context() as m:
        m.setattr(check, "fast_tables", lambda _docs: None)
        return check.validate_doc(doc)


@pytest.mark.parametrize("golden", GOLDEN, ids=lambda p: p.parent.name + "/" + p.name)
def test_fast_path_accepts_golden_and_builds_the_same_table(
        golden: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = golden.read_text()
    fast = fast_tables([json.loads(text)])
    assert fast is not None
    with monkeypatch.context() as m:
        m.setattr(check, "fast_tables", lambda _docs: None)
        full = check.parse_table(text, str(golden))
    assert fast[0] == full
    assert table_is_valid(full) and fast[0].dumps() == full.dumps()


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


def _swap_servers(doc: dict[str, Any]) -> None:
    doc["server_list"].reverse()


def _swap_ranks(doc: dict[str, Any]) -> None:
    a, b = doc["server_list"][1]["device"][:2]
    a["rank_id"], b["rank_id"] = b["rank_id"], a["rank_id"]


DEV = ("server_list", 1, "device", 2)
BROKEN: dict[str, Callable[[dict[str, Any]], None]] = {
    "ip with a newline": _set(DEV + ("device_ip",), "10.1.1.1\n10.1.1.2"),
    "device id with a newline": _set(DEV + ("device_id",), "2\n3"),
    "ip out of range": _set(DEV + ("device_ip",), "10.1.1.256"),
    "ip leading zero": _set(DEV + ("device_ip",), "10.1.1.01"),
    "integer device id": _set(DEV + ("device_id",), 2),
    "integer rank": _set(DEV + ("rank_id",), 10),
    "duplicate ip": _set(DEV + ("device_ip",),
                         "PLACEHOLDER"),  # replaced below with another device's IP
    "duplicate server": _set(("server_list", 1, "server_id"), "PLACEHOLDER"),
    "ranks swapped within a server": _swap_ranks,
    "rank gap": _set(DEV + ("rank_id",), "99"),
    "bad server id": _set(("server_list", 0, "server_id"), "10.0.0.300"),
    "server count": _set(("server_count",), "4"),
    "status initializing": _set(("status",), "initializing"),
    "host_nic_ip not a string": _set(("server_list", 0, "host_nic_ip"), 1),
    "empty device list": _set(("server_list", 0, "device"), []),
    "device not an object": _set(DEV, "x"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_fast_path_refuses_what_the_full_check_refuses(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = copy.deepcopy(good())
    BROKEN[name](doc)
    if name == "duplicate ip":
        doc["server_list"][1]["device"][2]["device_ip"] = \
            doc["server_list"][0]["device"][0]["device_ip"]
    if name == "duplicate server":
        doc["server_list"][1]["server_id"] = doc["server_list"][0]["server_id"]
    expected = slow(doc, monkeypatch)
    assert expected, f"{name}: the full check should find a problem"
    assert fast_tables([doc]) is None
    assert fast_tables([good(), doc]) is None  # one bad document spoils the bulk check
    assert check.validate_doc(doc) == expected


def test_hostname_server_ids_and_valid_reordered_tables_still_pass(
        monkeypatch: pytest.MonkeyPatch) -> None:
    doc = good()
    for i, s in enumerate(doc["server_list"]):
        s["server_id"] = f"node-{i}"
    assert fast_tables([doc]) is not None and slow(doc, monkeypatch) == []
    doc = good()
    for s in doc["server_list"]:  # devices listed in descending id, ranks still in id order
        s["device"].reverse()
    assert fast_tables([doc]) is None  # not the common layout: the full check decides
    assert check.validate_doc(doc) == slow(doc, monkeypatch) == []
    doc = good()
    _swap_servers(doc)  # listed out of order, rank ids still follow server_id: valid
    assert fast_tables([doc]) is None and check.validate_doc(doc) == []
    doc = good()
    doc["server_list"][0]["server_id"] = "1.2.3.4\n1.2.3.5"  # not dotted-only: no IP rule
    assert fast_tables([doc]) is None  # the line-based bulk check never guesses


def test_table_is_valid_matches_the_full_check() -> None:
    table = check.parse_table(json.dumps(good()), "good")
    assert table_is_valid(table)
    dup = table.servers[1]._replace(devices=table.servers[0].devices)
    bad = RankTable((table.servers[0], dup, table.servers[2]))
    assert not table_is_valid(bad)
    assert any("duplicate device_ip" in p for p in check.validate_table(bad))
    unordered = RankTable((table.servers[1]._replace(rank_start=0),
                           table.servers[0]._replace(rank_start=8), table.servers[2]))
    assert not table_is_valid(unordered) and check.validate_table(unordered)
    odd_ip = RankTable((RankServer("h", make_devices([0], ["1.2.3.4\n5.6.7.8"])),))
    assert not table_is_valid(odd_ip) and check.validate_table(odd_ip)
