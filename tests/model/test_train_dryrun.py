"""Compile-only dry run of the semi-auto parallel (Ascend) trainer graph on CPU (section 3).

Missing: MP=2 x PP=2 (does not compile yet) and merging pipeline strategy files back.

Each rank of a tiny Bloom at MP=2 is compiled by tests/tools/dryrun.py (fake "Ascend" device,
no execution); its parameters are its slices. MindSpore's own transform_checkpoints, driven by
the strategy files the compile wrote, must reassemble full parameters of which every rank's
slice is the right block: column-parallel QKV / h->4h split on the output axis, row-parallel
dense / 4h->h on the input axis.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from model import checkpoint as ck
from tests.model.data_helpers import REPO

pytestmark = pytest.mark.slow


def _job(folder: Path, mp: int, pp: int, mbn: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump({
        "job": {"id": folder.name, "output_dir": str(folder / "output")},
        "model": {"vocab_size": 1024, "hidden_size": 64, "n_layer": 2, "n_head": 4,
                  "seq_length": 32, "compute_dtype": "float32"},
        "parallel": {"data_parallel": 1, "model_parallel": mp, "pipeline_stage": pp,
                     "micro_batch_size": 2, "micro_batch_num": mbn, "optimizer_shard": False},
        "train": {"device_target": "Ascend", "steps": 10},
        "data": {"path": str(folder)}}))
    return path


def _compile_ranks(job: Path, world: int, build_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MS_", "RANK_"))}
    env.update(GLOG_v="3", PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-m", "tests.tools.dryrun", "--job", str(job),
                               "--rank", str(r), "--world", str(world), "--build-dir",
                               str(build_dir)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for r in range(world)]
    for r, p in enumerate(procs):
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, f"rank {r}: {err[-3000:]}"
        assert f"compiled rank {r}/{world}" in out


def test_mp2_compiles_and_strategy_reassembles_full_parameters(tmp_path: Path) -> None:
    import mindspore as ms

    job = _job(tmp_path / "mp2", mp=2, pp=1, mbn=1)
    out = tmp_path / "mp2" / "output"
    build = tmp_path / "build"
    from tests.tools.dryrun import build_shim

    build_shim(build)  # once, before the ranks start
    _compile_ranks(job, 2, build)
    strategies = [ck.strategy_path(out, r) for r in (0, 1)]
    assert all(s.is_file() and s.stat().st_size > 0 for s in strategies)

    merged_dir = tmp_path / "merged"
    ms.transform_checkpoints(str(out / "checkpoint"), str(merged_dir), "full",
                             src_strategy_file=str(strategies[0]), dst_strategy_file=None)
    full = {k: v.asnumpy() for k, v in
            ms.load_checkpoint(str(merged_dir / "rank_0" / "full0.ckpt")).items()}
    ranks = [{k: v.asnumpy() for k, v in ms.load_checkpoint(str(ck.ckpt_path(out, r, 0))).items()}
             for r in (0, 1)]
    assert full["transformer.h.0.self_attention.query_key_value.weight"].shape == (192, 64)
    split_axis = {}
    for name, value in full.items():
        for r, params in enumerate(ranks):
            part = params[name]
            if part.shape == value.shape:
                np.testing.assert_array_equal(part, value, err_msg=name)
                continue
            (axis,) = [i for i, (a, b) in enumerate(zip(part.shape, value.shape, strict=True))
                       if a != b]
            split_axis[name] = axis
            block = np.split(value, 2, axis=axis)[r]
            np.testing.assert_array_equal(part, block, err_msg=f"{name} rank {r}")
    for i in (0, 1):
        prefix = f"transformer.h.{i}."
        assert split_axis[prefix + "self_attention.query_key_value.weight"] == 0  # column
        assert split_axis[prefix + "mlp.dense_h_to_4h.weight"] == 0
        assert split_axis[prefix + "self_attention.dense.weight"] == 1  # row
        assert split_axis[prefix + "mlp.dense_4h_to_h.weight"] == 1
    assert "transformer.word_embeddings.weight" not in split_axis  # tied, kept replicated


def test_pp2_compiles_with_one_stage_per_rank(tmp_path: Path) -> None:
    """PP=2 (MP=1): each rank compiles and holds only its stage's parameters.

    Not covered yet: merging these strategy files back (merge_pipeline_strategys keeps only
    stage 0 here) and MP=2 x PP=2, which fails to compile (a Reshape in the attention).
    """
    import mindspore as ms

    job = _job(tmp_path / "pp2", mp=1, pp=2, mbn=2)
    out = tmp_path / "pp2" / "output"
    from tests.tools.dryrun import build_shim

    build_shim(tmp_path / "build")
    _compile_ranks(job, 2, tmp_path / "build")
    assert all(ck.strategy_path(out, r).is_file() for r in (0, 1))
    names = [set(ms.load_checkpoint(str(ck.ckpt_path(out, r, 0)))) for r in (0, 1)]
    assert {n.split(".")[1] + "." + n.split(".")[2] for n in names[0] if ".h." in n} == {"h.0"}
    assert {n.split(".")[1] + "." + n.split(".")[2] for n in names[1] if ".h." in n} == {"h.1"}
    assert "transformer.word_embeddings.weight" in names[0]
    assert "transformer.ln_f.weight" in names[1] and "transformer.ln_f.weight" not in names[0]
