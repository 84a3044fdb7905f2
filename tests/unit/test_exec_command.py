"""`orchestrate exec` formatting, and the command end to end on a `connection: local` node."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from orchestrator.cli.exec_ import NodeOutcome, grouped, prefixed, summary_table
from orchestrator.cli.main import cli


def test_prefixed() -> None:
    assert prefixed("n0", "a\nb") == "[n0] a\n[n0] b\n"
    assert prefixed("n0", "") == ""


def test_grouped_and_summary() -> None:
    rows = [NodeOutcome("a", "h", 0, "x\n", "", 0.1, None),
            NodeOutcome("bb", "h", 0, "x\n", "", 0.2, None),
            NodeOutcome("c", "h", None, "", "", 1.5, "connection refused by h:22")]
    g = grouped(rows)
    assert g.startswith("==== a, bb (2 nodes) ====\nx\n==== c (1 node) ====\n")
    assert "error: connection refused" in g
    table = summary_table(rows).splitlines()
    assert table[0].split() == ["node", "exit", "seconds", "error"]
    assert table[3].split()[:3] == ["c", "-", "1.50"] and table[-1] == "2 ok, 1 failed"


def local_inventory(tmp_path: Path) -> Path:
    inv = tmp_path / "inv.yaml"
    inv.write_text("defaults: {connection: local, workdir: w}\n"
                   "nodes: [{host: 127.0.0.1, name: l0}, {host: 127.0.0.2, name: l1}]\n")
    return inv


def test_exec_local_nodes(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["exec", "-i", str(local_inventory(tmp_path)), "--",
                                   "echo", "hi", "|", "tr", "a-z", "A-Z"])
    assert res.exit_code == 0, res.output
    assert res.stdout == "[l0] HI\n[l1] HI\n" or res.stdout == "[l1] HI\n[l0] HI\n"
    assert "2 ok, 0 failed" in res.stderr  # the summary goes to stderr, stdout is node output


def test_exec_failure_exit_1_and_json(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["exec", "-i", str(local_inventory(tmp_path)), "--json",
                                   "-n", "l1", "--", "echo oops >&2; exit 3"])
    assert res.exit_code == 1
    doc = json.loads(res.stdout)
    assert doc["failed"] == ["l1"] and doc["nodes"][0]["exit_code"] == 3
    assert doc["nodes"][0]["stderr"] == "oops\n" and doc["command"] == "echo oops >&2; exit 3"


def test_exec_unknown_node_is_one_line_error(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["exec", "-i", str(local_inventory(tmp_path)), "-n", "zz",
                                   "--", "true"])
    assert res.exit_code == 1 and "no node named 'zz'" in res.output
