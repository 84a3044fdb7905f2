"""What a DP x MP x PP semi-auto job leaves on disk, written from full numpy arrays (tests, bench).

    write_sharded(out_dir, full, dp=2, mp=2, pp=2, n_layer=4)

Cut by the trainer's own rules, without compiling: each parameter is split across MP on the
axis `orchestrate_bloom.train.shard_plan.mp_split_axis` names (row-parallel weights on axis 1,
column parallel and the embedding on axis 0, LayerNorms and row-parallel biases replicated; the dry
run checks that table against MindSpore's compiled layouts), block i lives on the stage
`stages.stage_of_layers(layers_per_stage(n_layer, pp))[i]` says, the embeddings on stage 0
and ln_f on the last. Rank r = stage * dp * mp + dp_index * mp + mp_index (MindSpore's device
matrix [dp, mp] per stage). Writes `checkpoint/rank_<r>/shard.ckpt` (with a fake Adam moment)
and `strategy/ckpt_strategy_rank_<r>.ckpt` (MindSpore's protobuf) under `out_dir`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from orchestrate_bloom.train.shard_plan import mp_split_axis
from orchestrate_bloom.train.stages import layers_per_stage, stage_of_layers


def _stage_of(name: str, blocks: list[int], pp: int) -> int:
    if name.startswith("transformer.h."):
        return blocks[int(name.split(".")[2])]
    return pp - 1 if "ln_f" in name else 0


def write_sharded(out_dir: Path, full: Mapping[str, np.ndarray], dp: int, mp: int, pp: int,
                  n_layer: int) -> dict[str, int]:
    """Write every rank's shard and strategy file (see module docstring); {"ranks": N}."""
    import mindspore as ms
    from mindspore.train import node_strategy_pb2 as pb

    blocks = stage_of_layers(layers_per_stage(n_layer, pp))
    for r in range(dp * mp * pp):
        stage, local = divmod(r, dp * mp)
        smap = pb.ParallelStrategyMap()
        smap.current_stage = stage
        item = smap.parallel_strategy_item.add()
        item.node_name = "synthetic"
        item.parallel_strategys.stage = stage
        tensors = []
        for name, a in full.items():
            if _stage_of(name, blocks, pp) != stage:
                continue
            axis = mp_split_axis(name)
            part = a if axis is None else np.split(a, mp, axis=axis)[local % mp]
            tensors.append({"name": name, "data": ms.Tensor(np.ascontiguousarray(part))})
            lay = smap.parallel_layout_item.add()
            lay.param_name = name
            pl = lay.parallel_layouts
            pl.dev_matrix.add().dim.extend([dp, mp])
            # tensor map: per tensor axis, the device-matrix axis counted from the right (MP=0)
            pl.tensor_map.add().dim.extend([0 if k == axis else -1 for k in range(a.ndim)])
            pl.param_split_shape.add()
            pl.indices_offset.add()
            pl.field, pl.opt_weight_shard_step, pl.opt_weight_shard_size = 0, 0, 0
        tensors.append({"name": "adam_m.synthetic", "data": ms.Tensor(np.zeros(4, np.float32))})
        ck = out_dir / "checkpoint" / f"rank_{r}"
        ck.mkdir(parents=True, exist_ok=True)
        ms.save_checkpoint(tensors, str(ck / "shard.ckpt"))
        st = out_dir / "strategy"
        st.mkdir(parents=True, exist_ok=True)
        (st / f"ckpt_strategy_rank_{r}.ckpt").write_bytes(smap.SerializeToString())
    return {"ranks": dp * mp * pp}
