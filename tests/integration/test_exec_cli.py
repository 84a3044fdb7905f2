"""`orchestrate exec` end to end against the test hosts (in-process CLI, real SSH)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from orchestrator.cli.main import cli
from tests.integration.conftest import TestHosts

pytestmark = pytest.mark.integration


def test_exec_prefixes_every_line_and_summarises(testhosts: TestHosts) -> None:
    res = CliRunner().invoke(cli, ["exec", "-i", str(testhosts.inventory), "--",
                                   "echo one; echo two"])
    assert res.exit_code == 0, res.output
    for name in testhosts.names:
        assert f"[{name}] one\n[{name}] two\n" in res.stdout
    assert len(res.stdout.splitlines()) == 8  # stdout: the nodes' output only
    assert "4 ok, 0 failed" in res.stderr  # the summary goes to stderr


def test_exec_words_run_by_the_node_shell(testhosts: TestHosts) -> None:
    # like `ssh host CMD...`: words joined with spaces, the pipe is the remote shell's
    res = CliRunner().invoke(cli, ["exec", "-i", str(testhosts.inventory), "--json", "--",
                                   "printf", "'%s\\n'", "a", "b", "|", "wc", "-l"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["failed"] == [] and [n["stdout"] for n in doc["nodes"]] == ["2\n"] * 4


def test_exec_exit_1_names_failed_nodes(testhosts: TestHosts) -> None:
    testhosts.stop("th2")
    try:
        res = CliRunner().invoke(cli, ["exec", "-i", str(testhosts.inventory), "--group",
                                       "--connect-timeout", "2", "--json", "--",
                                       "test $(hostname) != th0 || exit 5"])
    finally:
        testhosts.start("th2")
    assert res.exit_code == 1
    nodes = {n["name"]: n for n in json.loads(res.stdout)["nodes"]}
    assert nodes["th2"]["exit_code"] is None and "refused" in nodes["th2"]["error"]
    assert nodes["th1"]["ok"] and nodes["th3"]["ok"]
    if testhosts.variant == "netns":
        assert nodes["th0"]["exit_code"] == 5


def test_exec_timeout(testhosts: TestHosts) -> None:
    res = CliRunner().invoke(cli, ["exec", "-i", str(testhosts.inventory), "--timeout", "0.5",
                                   "-n", "th1", "--", "sleep", "30"])
    assert res.exit_code == 1
    assert res.stdout == ""  # no node output
    assert "th1" in res.stderr and "did not finish in 0.5s" in res.stderr
    assert "0 ok, 1 failed" in res.stderr
