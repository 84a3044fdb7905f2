"""Rendered launch scripts, checked by what they do when bash runs them (no golden copies).

    python -m pytest -q tests/unit/test_render.py

Every slot of every node is run for real with `bash launch.sh _run SLOT` on this machine, with
the node's interpreter replaced by a probe that records its argv and environment. The checks:
the exact command line, every rank's environment (nothing missing, nothing extra), and hostile
values (spaces, quotes, `$()`, backticks, newlines) arriving verbatim with nothing executed.
The expected values come from the contracts (rank ids in dictionary order of the host,
device ids local, the scheduler on the first node), not from the templates.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from orchestrator.config.inventory import Inventory, load_inventory, parse_inventory
from orchestrator.config.plan import build_plan
from orchestrator.config.presets import load_job_spec
from orchestrator.errors import JobError
from orchestrator.job.render import (
    CLUSTER_RETRY_MAX_WORKERS,
    LaunchSpec,
    RenderedFile,
    default_mode,
    render_env,
    render_job,
    shell_path,
)

REPO = Path(__file__).resolve().parents[2]
MSRUN_INV = """
defaults: {devices: 2, workdir: /srv/run, python: /opt/py/bin/python3}
nodes:
  - {host: 10.0.0.2, name: b}
  - {host: 10.0.0.1, name: a}
"""
# Records "argc, argv..., environment" NUL-separated; bash's own variables are dropped later.
PROBE = '#!/bin/bash\nprintf \'%s\\0\' "$#" "$0" "$@"\nexec env -0\n'
BASH_OWN = {"PWD", "OLDPWD", "SHLVL", "_"}
BASE_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent",
            "LC_ALL": "C"}
HOSTILE = "a b'c\"d $(touch pwned) ; `touch pwned` $HOME \\ \n next line ${X:-y}"


def probe_at(folder: Path) -> str:
    """An executable probe standing in for the node's python; its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "python3"
    path.write_text(PROBE)
    path.chmod(0o755)
    return str(path)


def with_python(inv: Inventory, python: str) -> Inventory:
    return dataclasses.replace(
        inv, nodes=tuple(dataclasses.replace(n, python=python) for n in inv.nodes))


def write_node(root: Path, job_id: str, files: dict[str, RenderedFile]) -> Path:
    """The node's job folder as `up` stages it (the parts launch.sh reads)."""
    job_dir = root / "jobs" / job_id
    job_dir.mkdir(parents=True)
    for name, f in files.items():
        (job_dir / name).write_text(f.text)
        (job_dir / name).chmod(f.mode)
    return job_dir.resolve()


def run_slot(job_dir: Path, slot: str) -> tuple[list[str], dict[str, str]]:
    """Run one slot as the supervisor would (without detaching): the probe's argv and env."""
    res = subprocess.run(["bash", str(job_dir / "launch.sh"), "_run", slot], env=BASE_ENV,
                         capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr.decode()
    fields = res.stdout.decode().split("\0")
    argc = int(fields[0])
    argv, env = fields[1:argc + 2], fields[argc + 2:-1]
    pairs = dict(e.split("=", 1) for e in env)
    added = {k: v for k, v in pairs.items() if k not in BASH_OWN and BASE_ENV.get(k) != v}
    return argv, added


def common_env(job_id: str, job_dir: Path, node: str, world: int, slot: str) -> dict[str, str]:
    return {"ORCHESTRATE_JOB_ID": job_id, "ORCHESTRATE_JOB_DIR": str(job_dir),
            "ORCHESTRATE_NODE": node, "PYTHONPATH": f"{job_dir}/code", "RANK_SIZE": str(world),
            "ORCHESTRATE_RESUMED_FILE": f"{job_dir}/ranks/{slot}/resumed.json"}


def train_argv(python: str, job_dir: Path) -> list[str]:
    return [python, "-m", "orchestrate_bloom.train", "--job", f"{job_dir}/job.yaml"]


def test_65b_ranktable_every_rank_env_and_command_line(tmp_path: Path) -> None:
    python = probe_at(tmp_path / "bin")
    inv = with_python(load_inventory(REPO / "inventories" / "12node.yaml"), python)
    plan = build_plan(inv, load_job_spec("65b"))
    launch = LaunchSpec(job_id="65b-k3f9", mode="ranktable", world_size=plan.world_size,
                        sched_host=plan.nodes[0].ranks.node.host)
    files = render_job(launch, plan, rank_table="{}")
    hosts = sorted(n.host for n in inv.nodes)  # the rank table's server_id order
    assert list(files) == hosts and plan.world_size == 96
    for i, host in enumerate(hosts):
        job_dir = write_node(tmp_path / host, launch.job_id, files[host])
        assert (job_dir / "rank_table.json").read_text() == "{}"
        for local, device in enumerate(range(8)):
            rank = 8 * i + local
            argv, env = run_slot(job_dir, str(rank))
            assert argv == train_argv(python, job_dir)
            assert env == {**common_env(launch.job_id, job_dir, host, 96, str(rank)),
                           "RANK_ID": str(rank), "DEVICE_ID": str(device),
                           "RANK_TABLE_FILE": f"{job_dir}/rank_table.json",
                           "MINDSPORE_HCCL_CONFIG_PATH": f"{job_dir}/rank_table.json",
                           "ASCEND_GLOBAL_LOG_LEVEL": "3",
                           # the rank's core share (orchestrate_bloom.train.cpu_share)
                           "ORCHESTRATE_LOCAL_RANK": str(local),
                           "ORCHESTRATE_LOCAL_RANKS": "8"}, (host, rank)


def test_msrun_scheduler_on_first_node_every_slot_env_and_resume(tmp_path: Path) -> None:
    python = probe_at(tmp_path / "bin")
    inv = with_python(parse_inventory(MSRUN_INV, "msrun.yaml"), python)
    plan = build_plan(inv, load_job_spec("tiny"))
    launch = LaunchSpec(job_id="tiny-k3f9", mode="msrun", world_size=plan.world_size,
                        sched_host="10.0.0.1", sched_port=23456, cluster_timeout=600)
    files = render_job(launch, plan)
    assert list(files) == ["a", "b"] and plan.world_size == 4  # 10.0.0.1 sorts first
    expected_slots = {"a": {"sched": None, "0": 0, "1": 1}, "b": {"2": 0, "3": 1}}
    for name, slots in expected_slots.items():
        job_dir = write_node(tmp_path / name, launch.job_id, files[name])
        assert "env.sh" not in files[name]  # no `env:` in this inventory
        for slot, device in slots.items():
            argv, env = run_slot(job_dir, slot)
            want = {**common_env(launch.job_id, job_dir, name, 4, slot),
                    "MS_SCHED_HOST": "10.0.0.1", "MS_SCHED_PORT": "23456",
                    "MS_WORKER_NUM": "4", "MS_TOPO_TIMEOUT": "600",
                    # heartbeat every 1-2 s (render.CLUSTER_RETRY_INTERVAL_S), not 3-5
                    "MS_RETRY_INTERVAL_LOWER": "1", "MS_RETRY_INTERVAL_UPPER": "2",
                    "ORCHESTRATE_LOCAL_RANK": "sched" if device is None else str(device),
                    "ORCHESTRATE_LOCAL_RANKS": "2"}
            if device is None:
                want["MS_ROLE"] = "MS_SCHED"
            else:
                want.update(MS_ROLE="MS_WORKER", MS_NODE_ID=slot, DEVICE_ID=str(device))
            assert argv == train_argv(python, job_dir) and env == want, (name, slot)
        (job_dir / "resume").touch()  # `launch.sh start resume` leaves this for the ranks
        argv, env = run_slot(job_dir, next(iter(slots)))
        assert argv == [*train_argv(python, job_dir), "--resume"]
        assert env["ORCHESTRATE_RESUME"] == "1"
        bad = subprocess.run(["bash", str(job_dir / "launch.sh"), "_run", "9"], env=BASE_ENV,
                             capture_output=True, text=True, timeout=30)
        assert bad.returncode == 2 and "unknown slot 9" in bad.stderr


def test_cluster_retry_interval_yields_to_the_inventory_env_and_to_large_clusters(
        tmp_path: Path) -> None:
    """The inventory's `env:` value of MS_RETRY_INTERVAL_* wins over ours; a cluster of more
    than CLUSTER_RETRY_MAX_WORKERS workers keeps MindSpore's own defaults (neither is set)."""
    python = probe_at(tmp_path / "bin")
    inv = with_python(parse_inventory(
        MSRUN_INV.replace("python:", "env: {MS_RETRY_INTERVAL_UPPER: '7'}, python:"), "e.yaml"),
        python)
    plan = build_plan(inv, load_job_spec("tiny"))
    for world, want in ((4, {"MS_RETRY_INTERVAL_LOWER": "1", "MS_RETRY_INTERVAL_UPPER": "7"}),
                        (CLUSTER_RETRY_MAX_WORKERS + 1, {"MS_RETRY_INTERVAL_UPPER": "7"})):
        launch = LaunchSpec(job_id=f"tiny-w{world}", mode="msrun", world_size=world,
                            sched_host="10.0.0.1")
        job_dir = write_node(tmp_path / str(world), launch.job_id, render_job(launch, plan)["a"])
        for slot in ("sched", "0"):
            env = run_slot(job_dir, slot)[1]
            assert {k: v for k, v in env.items() if k.startswith("MS_RETRY")} == want, world


def hostile_inventory(python: str) -> str:
    return yaml.safe_dump({
        "defaults": {"devices": 1, "workdir": "/tmp/x y", "python": python,
                     "env": {"SECRET": HOSTILE, "PLAIN": "1", "EMPTY": ""}},
        "nodes": [{"host": "10.0.0.1", "name": "it's a node; $(touch pwned) `x` $HOME"}]})


def test_hostile_inventory_values_arrive_verbatim(tmp_path: Path) -> None:
    work = tmp_path / "cwd"
    work.mkdir()
    python = probe_at(tmp_path / "py thon'$(touch pwned);`touch pwned` \"q\"")
    inv = parse_inventory(hostile_inventory(python), "hostile.yaml")
    plan = build_plan(inv, load_job_spec("tiny"))
    launch = LaunchSpec(job_id="tiny-hstl", mode="msrun", world_size=1, sched_host="10.0.0.1")
    files = render_job(launch, plan)
    node = inv.nodes[0]
    assert files[node.name]["env.sh"].mode == 0o600
    job_dir = write_node(work, launch.job_id, files[node.name])
    for name in ("launch.sh", "env.sh"):
        res = subprocess.run(["bash", "-n", str(job_dir / name)], capture_output=True, text=True)
        assert res.returncode == 0, f"{name}: {res.stderr}"
    for slot in ("sched", "0"):
        argv, env = run_slot(job_dir, slot)
        assert argv == train_argv(python, job_dir)
        assert env["ORCHESTRATE_NODE"] == node.name
        assert (env["SECRET"], env["PLAIN"], env["EMPTY"]) == (HOSTILE, "1", "")
    assert list(tmp_path.rglob("pwned")) == [] and not Path("pwned").exists()


def test_render_alone_quotes_values_the_inventory_would_refuse(tmp_path: Path) -> None:
    """render does not lean on inventory validation: newlines in a name, an interpreter or the
    scheduler address and a hostile entrypoint reach the rank verbatim (an entrypoint is one
    `bash -c` word)."""
    inv = parse_inventory("defaults: {devices: 1}\nnodes: [{host: 10.0.0.1, name: n}]\n", "i")
    odd = dataclasses.replace(inv.nodes[0], name="n\n$(touch pwned)\n'", python="py\n`x`")
    plan = build_plan(dataclasses.replace(inv, nodes=(odd,)), load_job_spec("tiny"))
    entry = ("printf '%s\\0' \"$ORCHESTRATE_NODE\" \"$MS_SCHED_HOST\" \"$0\"; printf %s "
             "'a\n$(b)'")
    launch = LaunchSpec(job_id="tiny-odd", mode="msrun", world_size=1, sched_host="h $(x)\n",
                        entrypoint=entry)
    job_dir = write_node(tmp_path, launch.job_id, render_job(launch, plan)[odd.name])
    res = subprocess.run(["bash", str(job_dir / "launch.sh"), "_run", "0"], env=BASE_ENV,
                         capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\0") == [odd.name, "h $(x)\n", "bash", "a\n$(b)"]
    plain = render_job(dataclasses.replace(launch, entrypoint=None), plan)[odd.name]
    assert subprocess.run(["bash", "-n"], input=plain["launch.sh"].text, text=True).returncode == 0
    assert list(tmp_path.rglob("pwned")) == []


def test_job_yaml_has_fitted_layout() -> None:
    plan = build_plan(load_inventory(REPO / "inventories" / "12node.yaml"), load_job_spec("65b"))
    launch = LaunchSpec(job_id="j", mode="ranktable", world_size=96, sched_host="x")
    doc = yaml.safe_load(render_job(launch, plan, rank_table="{}")["192.168.0.10"]
                         ["job.yaml"].text)
    par = doc["parallel"]
    assert par["data_parallel"] * par["model_parallel"] * par["pipeline_stage"] == 96
    assert par["layers_per_stage"] == list(plan.stage_layers)
    assert doc["model"]["hidden_size"] == 8192


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_every_rendered_shape_passes_shellcheck(tmp_path: Path) -> None:
    inv12 = load_inventory(REPO / "inventories" / "12node.yaml")
    p65 = build_plan(inv12, load_job_spec("65b"))
    tiny = build_plan(parse_inventory(MSRUN_INV, "msrun.yaml"), load_job_spec("tiny"))
    rt = render_job(LaunchSpec(job_id="j", mode="ranktable", world_size=96, sched_host="x"),
                    p65, rank_table="{}")
    ms = render_job(LaunchSpec(job_id="j", mode="msrun", world_size=4, sched_host="x"), tiny)
    paths = []
    for name, text in [("rt", rt["192.168.0.0"]["launch.sh"].text),
                       ("ms_a", ms["a"]["launch.sh"].text), ("ms_b", ms["b"]["launch.sh"].text)]:
        (tmp_path / f"{name}.sh").write_text(text)
        paths.append(str(tmp_path / f"{name}.sh"))
    res = subprocess.run(["shellcheck", "-s", "bash", *paths], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout


def test_shell_path_expands_home_only() -> None:
    assert shell_path("~/run", "jobs", "j 1") == '"$HOME"/\'run/jobs/j 1\''
    assert shell_path("~") == '"$HOME"'
    assert shell_path("/a b/c") == "'/a b/c'"


def test_env_file_sourced_gives_values_back(tmp_path: Path) -> None:
    values = {"A": "x y", "B": "$(touch pwned)", "C": HOSTILE}
    (tmp_path / "env.sh").write_text(render_env(values))
    res = subprocess.run(["bash", "-c", ". ./env.sh; printf '%s\\0' \"$A\" \"$B\" \"$C\""],
                         cwd=tmp_path, capture_output=True, text=True, env=BASE_ENV)
    assert res.stdout.split("\0")[:-1] == list(values.values())
    assert not (tmp_path / "pwned").exists()


def test_default_mode_and_unknown_mode() -> None:
    assert default_mode("Ascend") == "msrun"  # dynamic cluster by default (issue 15.6)
    assert default_mode("CPU") == "msrun"
    inv = parse_inventory(MSRUN_INV, "msrun.yaml")
    plan = build_plan(inv, load_job_spec("tiny"))
    with pytest.raises(JobError, match="unknown launch mode"):
        render_job(LaunchSpec(job_id="j", mode="mpirun", world_size=4, sched_host="x"), plan)
    with pytest.raises(JobError, match="rank table"):
        render_job(LaunchSpec(job_id="j", mode="ranktable", world_size=4, sched_host="x"), plan)
