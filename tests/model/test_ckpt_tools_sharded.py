"""merge-strategies + needed-ranks + transform on a synthetic DP2 x MP2 x PP2 job (exact).

The shards are cut by the trainer's shard plan (tests/tools/shards.py): row-parallel weights
on axis 1, so the streamed transform's non-contiguous path is exercised too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")

from orchestrate_bloom.ckpt import strategy as ckpt_strategy  # noqa: E402
from orchestrate_bloom.ckpt import tools as ckpt_tools  # noqa: E402

from tests.tools.shards import write_sharded  # noqa: E402


def full_params(n_layer: int = 4) -> dict[str, np.ndarray]:
    model = {"vocab_size": 64, "hidden_size": 16, "n_layer": n_layer, "n_head": 2, "seq_length": 8}
    rng = np.random.default_rng(0)
    shapes = ckpt_tools.model_shapes(model)
    return {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}


def test_transform_reassembles_mp2_pp2_exactly_from_needed_ranks(tmp_path: Path) -> None:
    full = full_params()
    write_sharded(tmp_path, full, dp=2, mp=2, pp=2, n_layer=4)
    merged = tmp_path / "merged_strategy.ckpt"
    ckpt_tools.merge_strategies(tmp_path / "strategy", merged)
    needed = ckpt_tools.needed_ranks(merged, None)["ranks"]
    assert needed == [0, 1, 4, 5]  # one DP replica per (stage, MP slice)

    stripped = {}
    for r in needed:
        stripped[r] = tmp_path / "stripped" / f"rank_{r}.ckpt"
        ckpt_tools.strip(tmp_path / "checkpoint" / f"rank_{r}" / "shard.ckpt", stripped[r])
    out = tmp_path / "out.ckpt"
    res = ckpt_tools.transform(stripped, merged, out)
    assert res["ranks"] == needed
    got = ms.load_checkpoint(str(out))
    assert set(got) == set(full)
    for name, a in full.items():
        np.testing.assert_array_equal(got[name].asnumpy(), a, err_msg=name)


def test_transform_names_missing_source_ranks(tmp_path: Path) -> None:
    write_sharded(tmp_path, full_params(), dp=1, mp=2, pp=2, n_layer=4)
    merged = tmp_path / "m.ckpt"
    ckpt_tools.merge_strategies(tmp_path / "strategy", merged)
    src = {r: tmp_path / "checkpoint" / f"rank_{r}" / "shard.ckpt" for r in (0, 1, 2)}
    with pytest.raises(ckpt_tools.ToolError, match=r"needs the checkpoints of ranks \[3\]"):
        ckpt_tools.transform(src, merged, tmp_path / "o.ckpt")
    assert not (tmp_path / "o.ckpt").exists()


def test_transform_to_another_layout_matches_that_layouts_shards(tmp_path: Path) -> None:
    """MP2 x PP2 -> DP2 x MP2: every destination rank equals a DP2 x MP2 job's own shard."""
    full = full_params()
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_sharded(src, full, dp=1, mp=2, pp=2, n_layer=4)
    write_sharded(dst, full, dp=2, mp=2, pp=1, n_layer=4)
    src_strategy = ckpt_tools.merge_strategies(src / "strategy", tmp_path / "s.ckpt")["strategy"]
    ckpt_tools.merge_strategies(dst / "strategy", tmp_path / "d.ckpt")
    assert ckpt_strategy.strategy_devices(tmp_path / "d.ckpt") == 4
    assert ckpt_strategy.strategy_devices(Path(src_strategy)) == 4
    need = ckpt_tools.needed_ranks(Path(src_strategy), tmp_path / "d.ckpt", None)
    assert need == {"ranks": [0, 1, 2, 3], "dst_ranks": [0, 1, 2, 3]}
    shards = {r: src / "checkpoint" / f"rank_{r}" / "shard.ckpt" for r in range(4)}
    for r in range(4):
        out = tmp_path / "out" / f"rank_{r}.ckpt"
        ckpt_tools.transform(shards, Path(src_strategy), out, tmp_path / "d.ckpt", rank=r)
        got = ms.load_checkpoint(str(out))
        want = ms.load_checkpoint(str(dst / "checkpoint" / f"rank_{r}" / "shard.ckpt"))
        assert set(got) - {"adam_m.synthetic"} == set(want) - {"adam_m.synthetic"}
        for name in set(want) - {"adam_m.synthetic"}:
            np.testing.assert_array_equal(got[name].asnumpy(), want[name].asnumpy(), name)


def _relabel_first_operator_stage0(path: Path) -> None:
    """What MindSpore writes for a later stage whose first recorded operator kept the default
    strategy (e.g. a LayerNorm): that operator says stage 0."""
    from mindspore.train import node_strategy_pb2 as pb

    smap = pb.ParallelStrategyMap()
    smap.ParseFromString(path.read_bytes())
    item = pb.ParallelStrategyItem()
    item.node_name = "LayerNorm_default_strategy"
    item.parallel_strategys.stage = 0
    items = [item, *smap.parallel_strategy_item]
    del smap.parallel_strategy_item[:]
    smap.parallel_strategy_item.extend(items)
    path.write_bytes(smap.SerializeToString())


def test_merge_takes_each_stage_from_the_rank_not_the_first_operator(tmp_path: Path) -> None:
    full = full_params()
    write_sharded(tmp_path, full, dp=1, mp=2, pp=2, n_layer=4)
    for r in (2, 3):
        _relabel_first_operator_stage0(tmp_path / "strategy" / f"ckpt_strategy_rank_{r}.ckpt")
    theirs = tmp_path / "theirs.ckpt"
    ms.merge_pipeline_strategys(str(tmp_path / "strategy"), str(theirs))
    assert ckpt_tools.needed_ranks(theirs, None)["ranks"] == [0, 1]  # stage 1 lost
    merged = tmp_path / "merged.ckpt"
    assert ckpt_tools.merge_strategies(tmp_path / "strategy", merged)["stages"] == 2
    src = {r: tmp_path / "checkpoint" / f"rank_{r}" / "shard.ckpt" for r in range(4)}
    ckpt_tools.transform(src, merged, tmp_path / "out.ckpt")
    got = ms.load_checkpoint(str(tmp_path / "out.ckpt"))
    assert set(got) - {"adam_m.synthetic"} == set(full)
    for name, a in full.items():
        np.testing.assert_array_equal(got[name].asnumpy(), a, err_msg=name)


def test_merge_names_a_missing_stage_and_an_inconsistent_file(tmp_path: Path) -> None:
    write_sharded(tmp_path, full_params(), dp=1, mp=2, pp=2, n_layer=4)
    strategy = tmp_path / "strategy"
    one_stage = tmp_path / "stage1"
    one_stage.mkdir()
    for r in (2, 3):
        (one_stage / f"ckpt_strategy_rank_{r}.ckpt").write_bytes(
            (strategy / f"ckpt_strategy_rank_{r}.ckpt").read_bytes())
    with pytest.raises(ckpt_tools.ToolError, match=r"no strategy file for pipeline stage.*\[0\]"):
        ckpt_tools.merge_strategies(one_stage, tmp_path / "m.ckpt")
    (strategy / "ckpt_strategy_rank_0.ckpt").write_bytes(
        (strategy / "ckpt_strategy_rank_2.ckpt").read_bytes())  # stage 1's file as rank 0's
    with pytest.raises(ckpt_tools.ToolError, match=r"rank_0\.ckpt: operators of pipeline stage 1"):
        ckpt_tools.merge_strategies(strategy, tmp_path / "m.ckpt")
    (strategy / "ckpt_strategy_rank_0.ckpt").write_bytes(b"\xffnot a strategy")
    with pytest.raises(ckpt_tools.ToolError, match=r"rank_0\.ckpt: not a protobuf strategy file"):
        ckpt_tools.merge_strategies(strategy, tmp_path / "m.ckpt")
    assert not list(tmp_path.glob("*m.ckpt*"))  # nothing half-written
