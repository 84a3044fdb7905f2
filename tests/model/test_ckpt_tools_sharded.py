"""merge-strategies + needed-ranks + transform on a synthetic DP2 x MP2 x PP2 job (exact)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")

from model import ckpt_tools  # noqa: E402


def full_params(n_layer: int = 4) -> dict[str, np.ndarray]:
    model = {"vocab_size": 64, "hidden_size": 16, "n_layer": n_layer, "n_head": 2, "seq_length": 8}
    rng = np.random.default_rng(0)
    shapes = ckpt_tools.model_shapes(model)
    return {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}


def test_transform_reassembles_mp2_pp2_exactly_from_needed_ranks(tmp_path: Path) -> None:
    full = full_params()
    ckpt_tools.synth_sharded(tmp_path, full, dp=2, mp=2, pp=2, n_layer=4)
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
    ckpt_tools.synth_sharded(tmp_path, full_params(), dp=1, mp=2, pp=2, n_layer=4)
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
    ckpt_tools.synth_sharded(src, full, dp=1, mp=2, pp=2, n_layer=4)
    ckpt_tools.synth_sharded(dst, full, dp=2, mp=2, pp=1, n_layer=4)
    src_strategy = ckpt_tools.merge_strategies(src / "strategy", tmp_path / "s.ckpt")["strategy"]
    ckpt_tools.merge_strategies(dst / "strategy", tmp_path / "d.ckpt")
    assert ckpt_tools.strategy_devices(tmp_path / "d.ckpt") == 4
    assert ckpt_tools.strategy_devices(Path(src_strategy)) == 4
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
