"""Ranks that share a node split its cores (issue #17 item 2): orchestrate_bloom.train.cpu_share and
the launch script's ORCHESTRATE_LOCAL_RANK / ORCHESTRATE_LOCAL_RANKS.

    python -m pytest tests/unit/test_cpu_share.py -q
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from orchestrate_bloom.train.cpu_share import (
    Share,
    rank_share,
    share_from_env,
    thread_env,
)

REPO = Path(__file__).resolve().parents[2]


def test_enough_cores_pins_each_rank_to_a_disjoint_chunk() -> None:
    shares = [rank_share(i, 4, range(8, 16)) for i in range(4)]
    assert [s.cpus for s in shares] == [(8, 9), (10, 11), (12, 13), (14, 15)]
    assert all(s.pinned and s.threads == 2 for s in shares)
    odd = [rank_share(i, 3, [0, 1, 2, 3, 4]) for i in range(3)]  # 5 cores, 3 ranks: 1 each
    assert [s.cpus for s in odd] == [(0,), (1,), (2,)]


def test_fewer_cores_than_ranks_pins_equal_groups_with_one_thread() -> None:
    shares = [rank_share(i, 8, [3, 1]) for i in range(8)]
    assert [s.cpus for s in shares] == [(1,)] * 4 + [(3,)] * 4  # ranks 0-3, then 4-7
    assert all(s.pinned and s.threads == 1 for s in shares)
    three = [rank_share(i, 3, [0, 1]) for i in range(3)]  # not a multiple: 2 + 1
    assert [s.cpus for s in three] == [(0,), (0,), (1,)]


def test_bad_positions_are_refused() -> None:
    with pytest.raises(ValueError, match="local rank 8 outside 0..7"):
        rank_share(8, 8, range(16))
    with pytest.raises(ValueError, match="no usable cores"):
        rank_share(0, 1, [])


def test_env_switches() -> None:
    env = {"ORCHESTRATE_LOCAL_RANK": "1", "ORCHESTRATE_LOCAL_RANKS": "2"}
    assert share_from_env(env, range(4)) == Share(cpus=(2, 3), threads=2, pinned=True)
    assert share_from_env({**env, "ORCHESTRATE_CPU_SHARE": "0"}, range(4)) is None
    assert share_from_env({}, range(4)) is None  # started by hand: nothing changes
    sched = share_from_env({**env, "ORCHESTRATE_LOCAL_RANK": "sched"}, range(4))
    assert sched == Share(cpus=(0, 1, 2, 3), threads=1, pinned=False)
    out = {"OMP_NUM_THREADS": "3"}  # the user's (inventory env:) value wins
    thread_env(Share(cpus=(0,), threads=1, pinned=True), out)
    assert out == {"OMP_NUM_THREADS": "3", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                   "OPENBLAS_THREAD_TIMEOUT": "4"}


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores")
def test_launch_script_positions_reach_a_pinned_process(tmp_path: Path) -> None:
    """The rendered slot_env gives each rank its position; the process is then pinned."""
    from orchestrator.config.inventory import load_inventory
    from orchestrator.config.plan import build_plan
    from orchestrator.config.presets import load_job_spec
    from orchestrator.job.render import LaunchSpec, render_job

    cpus = sorted(os.sched_getaffinity(0))[:2]
    inv_file = tmp_path / "inv.yaml"
    inv_file.write_text("defaults: {connection: local, devices: 2, workdir: w}\n"
                        "nodes: [{host: 127.0.0.1, name: local}]\n")
    inv = load_inventory(inv_file)
    plan = build_plan(inv, load_job_spec("tiny", ()))
    launch = LaunchSpec(job_id="tiny-cpu", mode="msrun", world_size=2, sched_host="127.0.0.1",
                        sched_port=23456, cluster_timeout=60, entrypoint=None, stop_grace=1)
    script = render_job(launch, plan, {"local": None}, None)["local"]["launch.sh"].text
    body = script[script.index("slot_env() {"):script.index("\n}\n", script.index("slot_env"))]
    probe = ("from orchestrate_bloom.train.cpu_share import apply_from_env; import os; "
             "apply_from_env(); "
             "print(os.environ['OMP_NUM_THREADS'], sorted(os.sched_getaffinity(0)))")
    seen = []
    for slot in ("sched", "0", "1"):
        cmd = (script[:script.index("\n# MindSpore")] + "\n" + body + "\n}\n"
               f"mode_env() {{ :; }}\nJOB_DIR={tmp_path}\nslot_env {slot}\n"
               f"taskset -c {cpus[0]},{cpus[1]} {sys.executable} -c {probe!r}\n")
        res = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)},
                             check=False)
        assert res.returncode == 0, res.stderr
        seen.append(res.stdout.strip())
    assert seen == [f"1 {cpus}", f"1 [{cpus[0]}]", f"1 [{cpus[1]}]"]


WATCH_NUMPY = """
import os, runpy, sys
seen = []
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "numpy" and not seen:
            seen.append((os.environ.get("OPENBLAS_NUM_THREADS"), len(os.sched_getaffinity(0))))
        return None
sys.meta_path.insert(0, Watch())
sys.argv = ["train", "--job", sys.argv[1]]
try:
    runpy.run_module("orchestrate_bloom.train", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
print(seen)
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores")
def test_trainer_applies_the_share_before_numpy_starts_its_blas_pool(tmp_path: Path) -> None:
    """`python -m orchestrate_bloom.train` pins and sizes the pools before numpy is imported
    (OpenBLAS reads OPENBLAS_NUM_THREADS once, at load; its threads keep the affinity they
    started with)."""
    cpus = sorted(os.sched_getaffinity(0))[:2]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS",
           "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "ORCHESTRATE_CPU_SHARE")}
    env.update(ORCHESTRATE_LOCAL_RANK="1", ORCHESTRATE_LOCAL_RANKS="2", PYTHONPATH=str(REPO))
    res = subprocess.run(["taskset", "-c", f"{cpus[0]},{cpus[1]}", sys.executable, "-c",
                          WATCH_NUMPY, str(tmp_path / "absent.yaml")],
                         capture_output=True, text=True, env=env, check=False)
    assert res.stdout.strip().splitlines()[-1] == "[('1', 1)]", res.stdout + res.stderr

