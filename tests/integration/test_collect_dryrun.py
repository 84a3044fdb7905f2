"""collect-ckpt on real strategy files + sharded checkpoints from the compile-only dry run.

tests/tools/dryrun.py (trainer issue, section 3) compiles each rank of a tiny Bloom on a fake
"Ascend" device and writes the real strategy files; its parameters are its slices, cut by
MindSpore from a random single-device reference. The shards are placed on 2 test hosts as a
job would leave them, then collect-ckpt must give back the reference exactly (each rank's slice
the right block of it) and load it into BloomLMHeadModel:
- MP=2: rank r on th<r> (1 device per node), through the library call;
- MP=2 x PP=2 (world 4): ranks 0-1 on th0, 2-3 on th1 (2 devices per node), through
  `python -m orchestrator collect-ckpt`, the command a user runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from orchestrator.ckpt.collect import Options, collect
from orchestrator.config.inventory import load_inventory
from tests.integration.conftest import leftovers, why_no_testhosts
from tests.tools.dryrun import TINY, DryRuns, check_reassembled


def collect_on(inventory: Path, *args: Any, **kwargs: Any) -> Any:
    """ckpt.collect over a NodeGroup of `inventory`'s nodes (as the CLI does)."""
    from orchestrator.remote.group import NodeGroup

    with NodeGroup(load_inventory(inventory)) as group:
        return collect(group, *args, **kwargs)


pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def hosts() -> Iterator[Path]:
    """2 test hosts with 2 devices each (own state dir); yields the set's state dir."""
    reason = why_no_testhosts()
    if reason is not None:
        pytest.skip(reason)
    if shutil.which("g++") is None:
        pytest.skip("the dry run's shim needs g++")
    state = Path(tempfile.mkdtemp(prefix="oth-dry-"))

    def script(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(REPO / "tests/testhosts.sh"), *args, "--state",
                               str(state)], capture_output=True, text=True, check=False,
                              timeout=300)

    try:
        loopback = ["--loopback"] if os.environ.get("ORCHESTRATE_TESTHOSTS") == "loopback" else []
        up = script("up", "2", "--devices", "2", "--python", sys.executable, *loopback)
        if up.returncode != 0:
            pytest.fail(f"testhosts up failed: {up.stderr}")
        yield state
    finally:
        script("down")
        left = leftovers(state)
        shutil.rmtree(state, ignore_errors=True)
    assert not left, f"test hosts left behind after down: {left}"


def _place(out: Path, state: Path, rank: int, host: str) -> None:
    """Rank `rank`'s checkpoint folder and strategy file onto `host`, where the job put them."""
    job = state / "hosts" / host / "work" / "jobs" / "dry" / "output"
    shutil.copytree(out / "checkpoint" / f"rank_{rank}", job / "checkpoint" / f"rank_{rank}")
    (job / "strategy").mkdir(parents=True, exist_ok=True)
    name = f"ckpt_strategy_rank_{rank}.ckpt"
    shutil.copy(out / "strategy" / name, job / "strategy" / name)


def _clear(state: Path) -> None:
    for host in ("th0", "th1"):
        shutil.rmtree(state / "hosts" / host / "work" / "jobs" / "dry", ignore_errors=True)


def _params(path: Path) -> dict[str, np.ndarray]:
    import mindspore as ms

    return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(path)).items()}


def _arch(tmp_path: Path) -> Path:
    arch = tmp_path / "tiny-dry.yaml"  # the dry run's manifests carry no model section
    arch.write_text(yaml.safe_dump({"model": TINY}))
    return arch


def _assert_equal(full: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> None:
    assert sorted(full) == sorted(reference)  # every parameter of BloomLMHeadModel, no other
    for name, want in reference.items():
        np.testing.assert_array_equal(full[name], want, err_msg=name)


def test_mp2_dry_run_shards_on_two_hosts_reassemble_exactly(hosts: Path, tmp_path: Path,
                                                            dry_runs: DryRuns) -> None:
    out, reference = dry_runs.get(1, 2, 1)  # shared with tests/model/test_train_dryrun.py
    _clear(hosts)
    for rank in (0, 1):  # rank r on th<r>, as `up` would place a 2-rank job on 1-device nodes
        _place(out, hosts, rank, f"th{rank}")
    inv = yaml.safe_load((hosts / "inventory.yaml").read_text())
    inv["defaults"]["devices"] = 1
    one_device = tmp_path / "inventory-1dev.yaml"
    one_device.write_text(yaml.safe_dump(inv))

    res = collect_on(one_device, "dry", tmp_path / "d",
                  Options(preset=str(_arch(tmp_path))))
    assert res.fetched_ranks == [0, 1] and "check" in res.seconds
    assert res.merged is not None and res.merged.name == "bloom_tiny-dry_step0.ckpt"

    full = _params(res.merged)
    _assert_equal(full, reference)
    parts = {r: _params(out / "checkpoint" / f"rank_{r}" / f"bloom_rank_{r}-0.ckpt")
             for r in (0, 1)}
    axes = check_reassembled(full, parts, dp=1, mp=2)
    assert len(axes) == 13  # QKV, dense, h->4h, 4h->h (+ column biases) x 2 layers, embedding


def test_mp2pp2_dry_run_on_two_hosts_collect_ckpt_cli_reassembles_exactly(
        hosts: Path, tmp_path: Path, dry_runs: DryRuns) -> None:
    out, reference = dry_runs.get(1, 2, 2)  # shared with tests/model/test_train_dryrun.py
    _clear(hosts)
    for rank in range(4):  # as `up` places 4 ranks on two 2-device nodes
        _place(out, hosts, rank, f"th{rank // 2}")
    dest = tmp_path / "d"
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", "collect-ckpt", "-i", str(hosts / "inventory.yaml"),
         "dry", "--state-dir", str(tmp_path / "state"), "-o", str(dest),
         "-c", str(_arch(tmp_path))],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    merged = dest / "merged" / "bloom_tiny-dry_step0.ckpt"
    assert f"merged checkpoint: {merged}" in proc.stdout
    assert "ranks [0, 1, 2, 3] gathered" in " ".join(proc.stderr.split())  # rich wraps lines

    assert "check " in " ".join(proc.stderr.split())  # the command loaded it into the model
    full = _params(merged)
    _assert_equal(full, reference)
    from orchestrate_bloom.ckpt.tools import check
    from orchestrate_bloom.config import BloomConfig

    loaded = check(merged, BloomConfig.from_dict(dict(TINY), "tiny"))  # and so does this test
    assert loaded["parameters"] == len(reference)
    parts = {r: _params(out / "checkpoint" / f"rank_{r}" / f"bloom_rank_{r}-0.ckpt")
             for r in range(4)}
    assert {n.split(".")[2] for n in parts[2] if n.startswith("transformer.h.")} == {"1"}
    axes = check_reassembled(full, parts, dp=1, mp=2)
    assert axes["transformer.h.1.self_attention.query_key_value.weight"] == 0  # stage 1, MP
    assert axes["transformer.h.1.mlp.dense_4h_to_h.weight"] == 1
    assert axes["transformer.word_embeddings.weight"] == 0  # vocab parallel
    assert len(axes) == 13
