"""Inventory parsing: valid files, and one test per class of error message."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from orchestrator.config.inventory import Connection, HostKeyPolicy, load_inventory, parse_inventory
from orchestrator.errors import InventoryError

REPO = Path(__file__).resolve().parents[2]


def test_12node_inventory_parses_in_rank_order() -> None:
    inv = load_inventory(REPO / "inventories/12node.yaml")
    assert len(inv.nodes) == 12
    assert inv.world_size == 96
    assert [n.host for n in inv.in_rank_order()][:4] == [
        "192.168.0.0",
        "192.168.0.1",
        "192.168.0.10",
        "192.168.0.11",
    ]
    node = inv.nodes[0]
    assert node.devices == tuple(range(8))
    assert node.user == "root"
    assert node.workdir == PurePosixPath("/home/bloom/run")
    assert dict(node.env) == {"ASCEND_GLOBAL_LOG_LEVEL": "3"}


def test_local_inventory_uses_local_connection() -> None:
    inv = load_inventory(REPO / "inventories/local.yaml")
    assert [n.connection for n in inv.nodes] == [Connection.LOCAL]
    assert inv.nodes[0].device_count == 2


def test_node_values_override_defaults() -> None:
    inv = parse_inventory(
        """
defaults: {user: hpc, port: 2222, devices: 8, workdir: /data/run, python: /opt/py/bin/python}
known_hosts: [kh]
host_key_policy: accept-new
nodes:
  - {host: 10.0.0.1, name: a}
  - {host: node-b.example.com, devices: [4, 5, 6, 7], port: 22, user: bob,
     device_ips: {4: 192.98.92.10, "5": 192.98.93.10}, env: {X: 1, Y: true}}
""",
        "/inv/x.yaml",
    )
    a, b = inv.nodes
    assert (a.user, a.port, a.devices, a.python) == (
        "hpc",
        2222,
        tuple(range(8)),
        "/opt/py/bin/python",
    )
    assert (b.name, b.user, b.port, b.devices) == ("node-b.example.com", "bob", 22, (4, 5, 6, 7))
    assert dict(b.device_ips or {}) == {4: "192.98.92.10", 5: "192.98.93.10"}
    assert dict(b.env) == {"X": "1", "Y": "1"}
    assert inv.known_hosts == (Path("/inv/kh"),)
    assert inv.host_key_policy is HostKeyPolicy.ACCEPT_NEW


def test_hosts_shorthand_and_device_list_sorted() -> None:
    inv = parse_inventory("defaults: {devices: [3, 1, 2]}\nhosts: [10.0.0.2, 10.0.0.1]\n")
    assert [n.name for n in inv.nodes] == ["10.0.0.2", "10.0.0.1"]
    assert inv.nodes[0].devices == (1, 2, 3)
    assert inv.world_size == 6


def test_digest_is_stable_per_content(tmp_path: Path) -> None:
    f = tmp_path / "a.yaml"
    f.write_text("hosts: [10.0.0.1]\n")
    first = load_inventory(f).digest
    assert load_inventory(f).digest == first
    f.write_text("hosts: [10.0.0.2]\n")
    assert load_inventory(f).digest != first


def test_node_lookup_by_name_or_host() -> None:
    inv = parse_inventory("nodes: [{host: 10.0.0.1, name: a}, {host: 10.0.0.2}]")
    assert inv.node("a").host == "10.0.0.1"
    assert inv.node("10.0.0.2").name == "10.0.0.2"
    with pytest.raises(InventoryError, match="no node named 'zz'"):
        inv.node("zz")


# (yaml text, expected key path in the message, expected fragment of the message)
MALFORMED = [
    ("nodes: [{host: 10.0.0.1, prot: 22}]", "nodes[0].prot", "unknown key"),
    ("nodes: [{host: 10.0.0.1}]\nextra: 1", "extra", "unknown key"),
    ("defaults: {hostname: x}\nhosts: [10.0.0.1]", "defaults.hostname", "unknown key"),
    ("nodes: [{host: 10.0.0.1}, {host: 10.0.0.1}]", "nodes[1].host", "duplicate host '10.0.0.1'"),
    (
        "nodes: [{host: 10.0.0.1, name: a}, {host: 10.0.0.2, name: a}]",
        "nodes[1].name",
        "duplicate name 'a'",
    ),
    ("nodes: []", "nodes", "empty"),
    ("hosts: []", "hosts", "empty"),
    ("defaults: {devices: 8}", "nodes", "missing"),
    ("nodes: [{host: 192.168.0.300}]", "nodes[0].host", "got '192.168.0.300'"),
    ("nodes: [{host: 'bad host!'}]", "nodes[0].host", "got 'bad host!'"),
    (
        "nodes: [{host: 10.0.0.1, port: abc}]",
        "nodes[0].port",
        "expected an integer 1..65535, got 'abc'",
    ),
    ("nodes: [{host: 10.0.0.1, port: 70000}]", "nodes[0].port", "got 70000"),
    ("nodes: [{host: 10.0.0.1, devices: 17}]", "nodes[0].devices", "device count 1..16, got 17"),
    ("nodes: [{host: 10.0.0.1, devices: 0}]", "nodes[0].devices", "got 0"),
    ("nodes: [{host: 10.0.0.1, devices: [0, 16]}]", "nodes[0].devices[1]", "0..15, got 16"),
    ("nodes: [{host: 10.0.0.1, devices: [1, 1]}]", "nodes[0].devices[1]", "duplicate device id 1"),
    ("nodes: [{host: 10.0.0.1, devices: []}]", "nodes[0].devices", "non-empty list"),
    ("defaults: {devices: -1}\nhosts: [10.0.0.1]", "defaults.devices", "got -1"),
    ("- 10.0.0.1\n- 10.0.0.2\n", "", "expected a mapping at top level, got a list"),
    ("nodes: [10.0.0.1]", "nodes[0]", "expected a mapping, got '10.0.0.1'"),
    ("nodes: [{name: a}]", "nodes[0].host", "missing"),
    (
        "nodes: [{host: 10.0.0.1, device_ips: {0: 1.2.3}}]",
        "nodes[0].device_ips.0",
        "IPv4 address, got '1.2.3'",
    ),
    (
        "nodes: [{host: 10.0.0.1, device_ips: {20: 1.2.3.4}}]",
        "nodes[0].device_ips.20",
        "device id 0..15",
    ),
    (
        "nodes: [{host: 10.0.0.1, workdir: relative/dir}]",
        "nodes[0].workdir",
        "absolute path or one under ~/",
    ),
    ("nodes: [{host: 10.0.0.1, env: {'1BAD': x}}]", "nodes[0].env.1BAD", "variable name"),
    ("nodes: [{host: 10.0.0.1, env: [a]}]", "nodes[0].env", "expected a mapping"),
    (
        "nodes: [{host: 10.0.0.1, connection: telnet}]",
        "nodes[0].connection",
        "expected one of ssh, local, got 'telnet'",
    ),
    ("host_key_policy: yes-please\nhosts: [10.0.0.1]", "host_key_policy", "accept-new"),
    ("nodes: [{host: 10.0.0.1, name: 'a/b'}]", "nodes[0].name", "without '/'"),
    ("nodes: [{host: 10.0.0.1, user: 'ro ot'}]", "nodes[0].user", "user name"),
    ("nodes: [{host: 10.0.0.1}]\nhosts: [10.0.0.2]", "hosts", "not both"),
    (  # HCCL needs one IP per device (issue 14 item 11)
        "nodes: [{host: 10.0.0.1, device_ips: {0: 1.2.3.4, 1: 1.2.3.4}}]",
        "nodes[0].device_ips.1",
        "duplicate device IP '1.2.3.4' (same as nodes[0].device_ips.0)",
    ),
    (
        "nodes: [{host: 10.0.0.1, device_ips: {0: 1.2.3.4}},"
        " {host: 10.0.0.2, device_ips: {3: 1.2.3.4}}]",
        "nodes[1].device_ips.3",
        "duplicate device IP '1.2.3.4' (same as nodes[0].device_ips.0)",
    ),
    (  # "١" (Arabic-Indic one) is a digit to str.isdigit, not a device id
        "nodes: [{host: 10.0.0.1, device_ips: {'\u0661': 1.2.3.4}}]",
        "nodes[0].device_ips.\u0661",
        "device id 0..15",
    ),
]


@pytest.mark.parametrize(("text", "key", "fragment"), MALFORMED)
def test_malformed_inventory_names_file_key_and_value(text: str, key: str, fragment: str) -> None:
    with pytest.raises(InventoryError) as err:
        parse_inventory(text, "inventories/x.yaml")
    message = str(err.value)
    assert "\n" not in message
    prefix = f"inventories/x.yaml: {key}: " if key else "inventories/x.yaml: "
    assert message.startswith(prefix), message
    assert fragment in message, message


def test_yaml_syntax_error_has_line_number() -> None:
    text = "nodes:\n  - host: 10.0.0.1\n    port: 22\n   bad: x\n"
    with pytest.raises(InventoryError, match=r"^x.yaml: YAML syntax error at line 4, column 4"):
        parse_inventory(text, "x.yaml")


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(InventoryError, match="nope.yaml: file does not exist"):
        load_inventory(missing)


def test_empty_file_is_not_a_mapping(tmp_path: Path) -> None:
    f = tmp_path / "empty.yaml"
    f.write_text("")
    with pytest.raises(InventoryError, match="expected a mapping at top level, got nothing"):
        load_inventory(f)


def test_local_connection_allows_relative_workdir() -> None:
    inv = parse_inventory("nodes: [{host: 127.0.0.1, connection: local, workdir: run/here}]")
    assert inv.nodes[0].workdir == PurePosixPath("run/here")
