"""Rendered launch scripts: golden files, `bash -n`, shellcheck, hostile values quoted.

Regenerate the golden files on purpose with:
    UPDATE_GOLDEN=1 python -m pytest tests/unit/test_render.py
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from orchestrator.config.inventory import load_inventory, parse_inventory
from orchestrator.config.plan import build_plan
from orchestrator.config.presets import load_job_spec
from orchestrator.errors import JobError
from orchestrator.job.render import LaunchSpec, default_mode, render_env, render_job, shell_path

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "fixtures" / "render"
MSRUN_INV = """
defaults: {devices: 2, workdir: /srv/run, python: /opt/py/bin/python3}
nodes:
  - {host: 10.0.0.2, name: b}
  - {host: 10.0.0.1, name: a}
"""


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}: run with UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs from its golden file"


def _65b_files() -> dict:
    inv = load_inventory(REPO / "inventories" / "12node.yaml")
    plan = build_plan(inv, load_job_spec("65b"))
    launch = LaunchSpec(job_id="65b-golden", mode="ranktable", world_size=plan.world_size,
                        sched_host=plan.nodes[0].ranks.node.host)
    return render_job(launch, plan, rank_table="{}")


def _msrun_files() -> dict:
    inv = parse_inventory(MSRUN_INV, "msrun.yaml")
    plan = build_plan(inv, load_job_spec("tiny"))
    launch = LaunchSpec(job_id="tiny-golden", mode="msrun", world_size=plan.world_size,
                        sched_host=plan.nodes[0].ranks.node.host, sched_port=23456,
                        cluster_timeout=600)
    return render_job(launch, plan)


def test_65b_ranktable_node_192_168_0_10_holds_ranks_16_to_23() -> None:
    files = _65b_files()
    text = files["192.168.0.10"]["launch.sh"].text
    _golden("65b_ranktable_192.168.0.10.sh", text)
    for device in range(8):
        assert f"{16 + device}) export RANK_ID={16 + device} DEVICE_ID={device} ;;" in text
    assert "export RANK_SIZE=96" in text
    assert 'RANK_TABLE_FILE="$JOB_DIR/rank_table.json"' in text
    assert text.startswith("#!/usr/bin/env bash\n") and "\nset -euo pipefail\n" in text
    # 192.168.0.0 sorts first, 192.168.0.1 second, 192.168.0.10 third: ranks 0-7, 8-15, 16-23.
    assert "0) export RANK_ID=0 DEVICE_ID=0 ;;" in files["192.168.0.0"]["launch.sh"].text
    assert list(files)[:3] == ["192.168.0.0", "192.168.0.1", "192.168.0.10"]


def test_msrun_scheduler_only_on_first_node_in_rank_order() -> None:
    files = _msrun_files()
    first, second = files["a"]["launch.sh"].text, files["b"]["launch.sh"].text
    _golden("tiny_msrun_a.sh", first)
    _golden("tiny_msrun_b.sh", second)
    assert "SLOTS=(sched 0 1)" in first and "sched) export MS_ROLE=MS_SCHED ;;" in first
    assert "SLOTS=(2 3)" in second and "MS_SCHED" not in second.replace("MS_SCHED_", "")
    assert "2) export MS_ROLE=MS_WORKER MS_NODE_ID=2 DEVICE_ID=0 ;;" in second
    for text in (first, second):
        assert "export MS_SCHED_HOST=10.0.0.1 MS_SCHED_PORT=23456" in text
        assert "export MS_WORKER_NUM=4 MS_TOPO_TIMEOUT=600" in text
        assert ("exec /opt/py/bin/python3 -m orchestrate_bloom.train --job \"$JOB_DIR/job.yaml\""
                in text)


def test_job_yaml_has_fitted_layout() -> None:
    import yaml

    doc = yaml.safe_load(_65b_files()["192.168.0.10"]["job.yaml"].text)
    assert doc["parallel"]["data_parallel"] * doc["parallel"]["model_parallel"] \
        * doc["parallel"]["pipeline_stage"] == 96
    assert doc["model"]["hidden_size"] == 8192


def _scripts() -> list[tuple[str, str]]:
    out = []
    for name, files in [*_65b_files().items(), *_msrun_files().items()]:
        out.append((name, files["launch.sh"].text))
    return out


def test_every_rendered_script_passes_bash_n(tmp_path: Path) -> None:
    for name, text in _scripts():
        path = tmp_path / f"{name}.sh"
        path.write_text(text)
        res = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert res.returncode == 0, f"{name}: {res.stderr}"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_every_rendered_script_passes_shellcheck(tmp_path: Path) -> None:
    paths = []
    shapes = {"192.168.0.0", "192.168.0.10", "a", "b"}  # the others differ only in numbers
    for name, text in _scripts():
        if name not in shapes:
            continue
        path = tmp_path / f"{name}.sh"
        path.write_text(text)
        paths.append(str(path))
    res = subprocess.run(["shellcheck", "-s", "bash", *paths], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout


HOSTILE = r"""
defaults:
  devices: 1
  workdir: "/tmp/x y"
  python: "py thon'$(touch /tmp/orchestrate-pwned);`id`"
  env:
    SECRET: "a b'c\"d $(touch /tmp/orchestrate-pwned) ; rm -rf / `id` $HOME"
    PLAIN: "1"
nodes:
  - host: 10.0.0.1
    name: "it's a node; $(touch pwned) `x`"
"""


def test_hostile_inventory_values_arrive_quoted(tmp_path: Path) -> None:
    inv = parse_inventory(HOSTILE, "hostile.yaml")
    plan = build_plan(inv, load_job_spec("tiny"))
    launch = LaunchSpec(job_id="tiny-hstl", mode="msrun", world_size=1, sched_host="10.0.0.1",
                        entrypoint="echo \"$NODE_NAME\"; printf '%s' \"$SECRET\"")
    files = render_job(launch, plan)
    node = inv.nodes[0]
    script = files[node.name]["launch.sh"].text
    env_text = files[node.name]["env.sh"].text
    assert files[node.name]["env.sh"].mode == 0o600
    (tmp_path / "launch.sh").write_text(script)
    assert subprocess.run(["bash", "-n", str(tmp_path / "launch.sh")]).returncode == 0
    # Sourcing env.sh and expanding NODE_NAME gives back the exact values; nothing executes.
    (tmp_path / "env.sh").write_text(env_text)
    prelude = script.split('case "${1:-}" in')[0]  # the assignments, not the dispatch
    probe = prelude + "\n. ./env.sh; printf '%s\\n%s\\n' \"$NODE_NAME\" \"$SECRET\"\n"
    res = subprocess.run(["bash", "-c", probe, "launch.sh"], cwd=tmp_path, capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [node.name, node.env["SECRET"]]
    assert not Path("/tmp/orchestrate-pwned").exists() and not (tmp_path / "pwned").exists()
    # Without an entrypoint the interpreter is one quoted word on the exec line.
    plain = render_job(LaunchSpec(job_id="tiny-hstl", mode="msrun", world_size=1,
                                  sched_host="10.0.0.1"), plan)[node.name]["launch.sh"].text
    assert f"exec {shlex.quote(node.python)} -m orchestrate_bloom.train" in plain


def test_shell_path_expands_home_only() -> None:
    assert shell_path("~/run", "jobs", "j 1") == '"$HOME"/\'run/jobs/j 1\''
    assert shell_path("~") == '"$HOME"'
    assert shell_path("/a b/c") == "'/a b/c'"


def test_env_file_quotes_values() -> None:
    text = render_env("j", {"A": "x y", "B": "$(id)"})
    assert "export A='x y'" in text and "export B='$(id)'" in text


def test_default_mode_and_unknown_mode() -> None:
    assert default_mode("Ascend") == "msrun"  # dynamic cluster by default (issue 15.6)
    assert default_mode("CPU") == "msrun"
    inv = parse_inventory(MSRUN_INV, "msrun.yaml")
    plan = build_plan(inv, load_job_spec("tiny"))
    with pytest.raises(JobError, match="unknown launch mode"):
        render_job(LaunchSpec(job_id="j", mode="mpirun", world_size=4, sched_host="x"), plan)
    with pytest.raises(JobError, match="rank table"):
        render_job(LaunchSpec(job_id="j", mode="ranktable", world_size=4, sched_host="x"), plan)
