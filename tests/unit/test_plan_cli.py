"""`orchestrate plan` and the CLI surface, through click's CliRunner."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli.main import cli

REPO = Path(__file__).resolve().parents[2]
INV12 = str(REPO / "inventories/12node.yaml")
ALL_COMMANDS = {
    "plan",
    "version",
    "ranktable",
    "exec",
    "up",
    "status",
    "logs",
    "down",
    "collect-ckpt",
    "prepare-data",
    "convert-weights",
    "infer",
    "check",
    "inventory",
}


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_help_lists_every_command() -> None:
    code, out = invoke("--help")
    assert code == 0
    listed = {
        line.split()[0]
        for line in out.split("Commands:")[1].splitlines()
        if line.strip() and line.startswith("  ") and not line.startswith("    ")
    }
    assert ALL_COMMANDS <= listed


@pytest.mark.parametrize("command", sorted(ALL_COMMANDS))
def test_every_command_has_help(command: str) -> None:
    code, out = invoke(command, "--help")
    assert code == 0 and "Usage: " in out


def test_plan_65b_json() -> None:
    code, out = invoke("plan", "--inventory", INV12, "--config", "65b", "--json")
    assert code == 0
    plan = json.loads(out)
    assert plan["world_size"] == 96
    p = plan["parallel"]
    assert (p["data_parallel"], p["model_parallel"], p["pipeline_stage"]) == (2, 4, 12)
    assert p["global_batch_size"] == 96
    assert len(plan["nodes"]) == 12
    assert all(n["rank_end"] - n["rank_start"] == 8 for n in plan["nodes"])
    third = plan["nodes"][2]
    assert (third["host"], third["rank_start"], third["rank_end"]) == ("192.168.0.10", 16, 24)
    assert [n["rank_start"] for n in plan["nodes"]] == list(range(0, 96, 8))
    for key in ("hidden_size", "num_layers", "num_heads", "vocab_size", "seq_length", "parameters"):
        assert key in plan["model"]
    assert plan["memory_per_device_gib"] > 0


def test_plan_stages_cover_all_ranks() -> None:
    plan = json.loads(invoke("plan", "-i", INV12, "-c", "65b", "--json")[1])
    stages = [s for n in plan["nodes"] for s in n["pipeline_stages"]]
    assert sorted(set(stages)) == list(range(12))


def test_plan_7b_recomputes_dp_and_says_so() -> None:
    code, out = invoke("plan", "-i", INV12, "-c", "7.1b", "--json")
    plan = json.loads(out)
    assert code == 0 and plan["parallel"]["data_parallel"] == 12
    assert any("data_parallel recomputed 1 -> 12" in n for n in plan["notes"])
    code, text = invoke("plan", "-i", INV12, "-c", "7.1b")
    assert code == 0 and "data_parallel recomputed 1 -> 12" in " ".join(text.split())


def test_plan_176b_on_12_nodes_fails_naming_both_numbers() -> None:
    code, out = invoke("plan", "-i", INV12, "-c", "176b")
    assert code == 1
    assert "128" in out and "96" in out and out.startswith("Error: ")
    assert "Traceback" not in out


def test_plan_set_override_and_bad_override() -> None:
    plan = json.loads(
        invoke("plan", "-i", INV12, "-c", "65b", "--set", "parallel.micro_batch_num=80", "--json")[
            1
        ]
    )
    assert (
        plan["parallel"]["micro_batch_num"] == 80 and plan["parallel"]["global_batch_size"] == 160
    )
    code, out = invoke("plan", "-i", INV12, "-c", "65b", "--set", "parallel.micro_batch_num=x")
    assert code == 1 and "expected int, got 'x'" in out


def test_plan_bad_inventory_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "x.yaml"
    bad.write_text("nodes: [{host: 10.0.0.1, port: abc}]\n")
    code, out = invoke("plan", "-i", str(bad), "-c", "tiny")
    assert code == 1
    assert out.strip() == f"Error: {bad}: nodes[0].port: expected an integer 1..65535, got 'abc'"


def test_console_script_help_does_not_import_mindspore() -> None:
    code = (
        "import sys; from orchestrator.cli.main import cli; "
        "assert 'mindspore' not in sys.modules; assert 'paramiko' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_python_dash_m_orchestrator() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "orchestrator", "version"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.startswith("orchestrate ")


def test_nodes_option_takes_the_first_n_nodes_after_filters() -> None:
    from orchestrator.config.inventory import load_inventory

    written = [n.name for n in load_inventory(Path(INV12)).nodes]  # the file's order
    code, out = invoke("plan", "-i", INV12, "-c", "7.1b", "-N", "2", "--json")
    assert code == 0, out
    plan = json.loads(out)
    assert plan["world_size"] == 16
    assert sorted(n["name"] for n in plan["nodes"]) == sorted(written[:2])
    # applied after --exclude: the first two of what is left
    code, out = invoke("plan", "-i", INV12, "-c", "7.1b", "--exclude", written[0], "--nodes",
                       "2", "--json")
    assert code == 0, out
    assert sorted(n["name"] for n in json.loads(out)["nodes"]) == sorted(written[1:3])


def test_nodes_option_beyond_the_inventory_is_one_line_naming_both_counts() -> None:
    code, out = invoke("plan", "-i", INV12, "-c", "7.1b", "-N", "13")
    assert code != 0
    assert "--nodes" in out and "13 asked for" in out and "12 node(s)" in out, out
    code, out = invoke("plan", "-i", INV12, "-c", "7.1b", "-N", "0")
    assert code != 0 and "-N" in out, out
