"""Compile-only dry run of the semi-auto parallel (Ascend) trainer graph on CPU (section 3).

Every rank of a tiny Bloom is compiled by tests/tools/dryrun.py (fake "Ascend" device, no
execution) and writes its real strategy file; its parameters are its slices, cut by MindSpore
from one random single-device reference checkpoint (--init). Layouts: MP=2, MP=2 x PP=2
(world 4) and DP=2 x MP=2 x PP=2 with the parallel optimizer (world 8, the 65b preset's kind of
layout at tiny size), each compiled once. The strategy files are merged with
model.ckpt_tools (what collect-ckpt runs) and transform_checkpoint_by_rank must give back the
reference exactly, every parameter of BloomLMHeadModel, with each rank's slice the right block:
column-parallel QKV / h->4h split on the output axis, row-parallel dense / 4h->h on the input
axis, the vocab-parallel embedding (tied LM head) on the vocab axis.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from orchestrate_bloom.ckpt import layout as ck
from orchestrate_bloom.ckpt import tools as ckpt_tools
from orchestrate_bloom.train import shard_plan

from tests.tools.dryrun import TINY, DryRuns, check_reassembled

pytestmark = pytest.mark.slow

SPLIT = {  # the axis Megatron-style MP splits, per parameter suffix
    "self_attention.query_key_value.weight": 0,
    "self_attention.query_key_value.bias": 0,
    "mlp.dense_h_to_4h.weight": 0,
    "mlp.dense_h_to_4h.bias": 0,
    "self_attention.dense.weight": 1,
    "mlp.dense_4h_to_h.weight": 1,
    "word_embeddings.weight": 0,
}


def _params(path: Path) -> dict[str, np.ndarray]:
    import mindspore as ms

    return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(path)).items()}


def _assert_equal(full: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> None:
    assert sorted(full) == sorted(reference)  # every parameter of BloomLMHeadModel, no other
    for name, want in reference.items():
        np.testing.assert_array_equal(full[name], want, err_msg=name)


def _reassemble(out: Path, world: int, work: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """collect-ckpt's MindSpore steps: merge the strategies, transform to one device."""
    merged = work / "merged_strategy.ckpt"
    res = ckpt_tools.merge_strategies(out / "strategy", merged)
    assert res["sources"] == world
    src = {r: ck.ckpt_path(out, r, 0) for r in range(world)}
    full = work / "full.ckpt"
    ckpt_tools.transform(src, merged, full)
    return merged, _params(full)


def _expected_shapes() -> dict[str, tuple[int, ...]]:
    from orchestrate_bloom.config import BloomConfig

    return {k: tuple(v) for k, v in
            BloomConfig.from_dict(dict(TINY), "tiny").parameter_shapes().items()}


def _check_split_axes(axes: dict[str, int]) -> None:
    for i in range(TINY["n_layer"]):
        for suffix, axis in SPLIT.items():
            name = (f"transformer.{suffix}" if suffix.startswith("word") else
                    f"transformer.h.{i}.{suffix}")
            assert axes.get(name) == axis, f"{name}: split on {axes.get(name)}, want {axis}"
    unsplit = set(axes) - {n for n in axes if n.endswith(tuple(SPLIT))}
    assert not unsplit, f"split but should be replicated: {sorted(unsplit)}"
    # the table the trainer shards by and the synthetic fixtures cut by says the same
    for name in _expected_shapes():
        assert axes.get(name) == shard_plan.mp_split_axis(name), name


@pytest.fixture(scope="module")
def mp2pp2(dry_runs: DryRuns) -> tuple[Path, dict[str, np.ndarray]]:
    """MP=2 x PP=2, world 4, compiled once per session: (output folder, reference)."""
    return dry_runs.get(1, 2, 2)


def test_mp2_compiles_and_strategy_reassembles_full_parameters(tmp_path: Path,
                                                               dry_runs: DryRuns) -> None:
    out, reference = dry_runs.get(1, 2, 1)
    _, full = _reassemble(out, 2, tmp_path)
    assert {k: v.shape for k, v in full.items()} == _expected_shapes()
    _assert_equal(full, reference)
    parts = {r: _params(ck.ckpt_path(out, r, 0)) for r in (0, 1)}
    _check_split_axes(check_reassembled(full, parts, dp=1, mp=2))


def test_mp2pp2_each_rank_holds_its_stage_slices(
        mp2pp2: tuple[Path, dict[str, np.ndarray]]) -> None:
    out, _ = mp2pp2
    names = [set(_params(ck.ckpt_path(out, r, 0))) for r in range(4)]
    layers = [{n.split(".")[2] for n in ns if n.startswith("transformer.h.")} for ns in names]
    assert layers == [{"0"}, {"0"}, {"1"}, {"1"}]  # block 0 on stage 0 (ranks 0-1), 1 on 1
    for r in (0, 1):
        assert "transformer.word_embeddings.weight" in names[r]
        assert "transformer.ln_f.weight" not in names[r]
    for r in (2, 3):
        assert "transformer.ln_f.weight" in names[r]
        assert "transformer.word_embeddings.weight" not in names[r]
    assert all(ck.strategy_path(out, r).stat().st_size > 0 for r in range(4))


def test_mp2pp2_merge_keeps_both_stages_where_mindspore_merge_loses_one(
        mp2pp2: tuple[Path, dict[str, np.ndarray]], tmp_path: Path) -> None:
    """ms.merge_pipeline_strategys labels a stage by its file's first operator, and default-
    strategy operators (LayerNorm) say stage 0 on stage 1 too: stage 1's layouts come out as
    stage 0's and the transform reads ranks 0-1 only. Ours takes the stage from the rank."""
    import mindspore as ms
    from mindspore.train import node_strategy_pb2 as pb

    out, _ = mp2pp2

    def layout_names(path: Path) -> set[str]:
        smap = pb.ParallelStrategyMap()
        smap.ParseFromString(path.read_bytes())
        return {i.param_name for i in smap.parallel_layout_item}

    theirs = tmp_path / "theirs.ckpt"
    ms.merge_pipeline_strategys(str(out / "strategy"), str(theirs))
    assert not any(n.startswith("1-") for n in layout_names(theirs))  # the bug, still there
    ours = tmp_path / "ours.ckpt"
    assert ckpt_tools.merge_strategies(out / "strategy", ours)["stages"] == 2
    names = layout_names(ours)
    assert "0-transformer.h.0.self_attention.query_key_value.weight" in names
    assert "1-transformer.h.1.self_attention.query_key_value.weight" in names
    assert "1-transformer.ln_f.weight" in names and "0-transformer.ln_f.weight" not in names
    assert ckpt_tools.needed_ranks(ours, None)["ranks"] == [0, 1, 2, 3]


def test_mp2pp2_transform_reassembles_every_parameter_exactly(
        mp2pp2: tuple[Path, dict[str, np.ndarray]], tmp_path: Path) -> None:
    out, reference = mp2pp2
    _, full = _reassemble(out, 4, tmp_path)
    assert {k: v.shape for k, v in full.items()} == _expected_shapes()
    _assert_equal(full, reference)
    parts = {r: _params(ck.ckpt_path(out, r, 0)) for r in range(4)}
    _check_split_axes(check_reassembled(full, parts, dp=1, mp=2))
    res = ckpt_tools.check(tmp_path / "full.ckpt", _config())
    assert res["parameters"] == len(full)


def test_dp2mp2pp2_with_optimizer_shard_reassembles_exactly(tmp_path: Path,
                                                           dry_runs: DryRuns) -> None:
    """World 8: each rank's slice is also split across its DP replica (parallel optimizer)."""
    out, reference = dry_runs.get(2, 2, 2, optimizer_shard=True)
    merged, full = _reassemble(out, 8, tmp_path)
    assert ckpt_tools.needed_ranks(merged, None)["ranks"] == list(range(8))  # no replica
    _assert_equal(full, reference)
    shapes = [{k: v.shape for k, v in _params(ck.ckpt_path(out, r, 0)).items()} for r in (0, 4)]
    assert shapes[0]["transformer.word_embeddings.weight"] == (1024 // 4, 64)  # MP x DP
    assert shapes[1]["transformer.h.1.mlp.dense_h_to_4h.weight"] == (256 // 4, 64)
    assert "transformer.h.0.mlp.dense_h_to_4h.weight" not in shapes[1]  # stage 1: block 1


def _config() -> object:
    from orchestrate_bloom.config import BloomConfig

    return BloomConfig.from_dict(dict(TINY), "tiny")
