"""collect-ckpt on real strategy files + sharded checkpoints from the compile-only dry run.

tests/tools/dryrun.py (trainer issue, section 3) compiles each rank of a tiny Bloom at MP=2 on
a fake "Ascend" device; its parameters are its slices and it writes the real strategy files.
Rank 0 goes to th0, rank 1 to th1, as a job would leave them; collect-ckpt must give full
parameters of which each rank's slice is exactly the right block, and load them into
BloomLMHeadModel. (The dry run does not compile DP>1 or PP>1 layouts yet; see the report.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from orchestrator.ckpt_collect import Options, collect
from orchestrator.inventory import load_inventory

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
STATE = Path("/tmp/orchestrate-testhosts-collect")
MODEL = {
    "vocab_size": 1024,
    "hidden_size": 64,
    "n_layer": 2,
    "n_head": 4,
    "seq_length": 32,
    "compute_dtype": "float32",
}


def _hosts(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(REPO / "tests/testhosts.sh"), *args, "--state", str(STATE)],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture(scope="module")
def hosts() -> Iterator[Path]:
    if os.geteuid() != 0 or not Path("/usr/sbin/sshd").exists():
        pytest.skip("test hosts need root and /usr/sbin/sshd")
    if shutil.which("g++") is None:
        pytest.skip("the dry run's shim needs g++")
    up = _hosts("up", "2", "--devices", "1")
    if up.returncode != 0:
        _hosts("down")
        pytest.fail(f"testhosts up failed: {up.stderr}")
    try:
        yield STATE / "inventory.yaml"
    finally:
        _hosts("down")


def _dry_run(folder: Path) -> Path:
    """Compile ranks 0 and 1 of an MP=2 job; returns its output folder."""
    folder.mkdir(parents=True)
    job = folder / "job.yaml"
    job.write_text(
        yaml.safe_dump(
            {
                "job": {"id": "dry", "output_dir": str(folder / "output")},
                "model": MODEL,
                "parallel": {
                    "data_parallel": 1,
                    "model_parallel": 2,
                    "pipeline_stage": 1,
                    "micro_batch_size": 2,
                    "micro_batch_num": 1,
                    "optimizer_shard": False,
                },
                "train": {"device_target": "Ascend", "steps": 10},
                "data": {"path": str(folder)},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MS_", "RANK_"))}
    env.update(GLOG_v="3", PYTHONPATH=str(REPO))
    build = folder / "build"
    from tests.tools.dryrun import build_shim

    build_shim(build)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.tools.dryrun",
                "--job",
                str(job),
                "--rank",
                str(r),
                "--world",
                "2",
                "--build-dir",
                str(build),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ]
    for r, p in enumerate(procs):
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, f"dry run rank {r}: {err[-2000:]}"
    return folder / "output"


def test_mp2_dry_run_shards_on_two_hosts_reassemble_exactly(hosts: Path, tmp_path: Path) -> None:
    import mindspore as ms

    out = _dry_run(tmp_path / "dry")
    for rank in (0, 1):  # rank r on th<r>, as `up` would place a 2-rank job on 1-device nodes
        job = STATE / "hosts" / f"th{rank}" / "work" / "jobs" / "dry" / "output"
        shutil.copytree(out / "checkpoint" / f"rank_{rank}", job / "checkpoint" / f"rank_{rank}")
        (job / "strategy").mkdir(parents=True)
        name = f"ckpt_strategy_rank_{rank}.ckpt"
        shutil.copy(out / "strategy" / name, job / "strategy" / name)
    arch = tmp_path / "tiny-dry.yaml"  # the dry run's manifests carry no model section
    arch.write_text(yaml.safe_dump({"model": MODEL}))

    res = collect(load_inventory(hosts), "dry", tmp_path / "d", Options(preset=str(arch)))
    assert res.fetched_ranks == [0, 1] and "check" in res.seconds
    assert res.merged is not None and res.merged.name == "bloom_tiny-dry_step0.ckpt"

    full = {k: v.asnumpy() for k, v in ms.load_checkpoint(str(res.merged)).items()}
    split = 0
    for rank in (0, 1):
        part = ms.load_checkpoint(
            str(out / "checkpoint" / f"rank_{rank}" / f"bloom_rank_{rank}-0.ckpt")
        )
        for name, p in part.items():
            if name not in full:  # optimizer state, stripped
                assert name.startswith(("adam_", "global_step", "learning_rate")), name
                continue
            a, whole = p.asnumpy(), full[name]
            if a.shape == whole.shape:
                np.testing.assert_array_equal(a, whole, err_msg=name)
                continue
            (axis,) = [
                i for i, (x, y) in enumerate(zip(a.shape, whole.shape, strict=True)) if x != y
            ]
            np.testing.assert_array_equal(a, np.split(whole, 2, axis=axis)[rank], name)
            split += 1
    assert split >= 8  # QKV, dense, h->4h, 4h->h (+ biases) of 2 layers, on both ranks
