"""Parallel strategy files for collect-ckpt: merge the pipeline stages' files and find the ranks
whose shards a transform needs.

    python -m orchestrate_bloom.ckpt.tools merge-strategies --src DIR --out FILE
    python -m orchestrate_bloom.ckpt.tools needed-ranks --strategy FILE
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from ..fileio import write_atomic
from ..tool_io import ToolError


def _read_strategy(path: Path) -> Any:
    """Parse one protobuf strategy file (what the trainer's strategy_ckpt_config writes)."""
    from google.protobuf.message import DecodeError
    from mindspore.train import node_strategy_pb2 as pb

    smap = pb.ParallelStrategyMap()
    try:
        smap.ParseFromString(path.read_bytes())
    except DecodeError as exc:
        raise ToolError(f"{path}: not a protobuf strategy file ({exc})") from exc
    if not smap.parallel_layout_item:
        raise ToolError(f"{path}: no parameter layouts in this strategy file")
    return smap


def strategy_stage(path: Path, smap: Any) -> int:
    """The pipeline stage whose parameters the strategy file `path` describes.

    MindSpore's merge_pipeline_strategys takes the stage of the file's first operator, but
    operators left to MindSpore's default strategy (e.g. a LayerNorm on stage 1) are recorded
    with stage 0, so two stages' files can both look like stage 0 and one stage's parameters
    are lost. Stages are contiguous blocks of ranks: a file named `..._rank_<r>.ckpt` is stage
    r // (devices per stage, the product of a layout's device matrix); no operator of the file
    may claim a later stage. Without a rank in the name: the latest stage an operator claims.
    """
    claimed = max((i.parallel_strategys.stage for i in smap.parallel_strategy_item), default=0)
    m = re.search(r"rank_([0-9]{1,9})", path.name)
    if m is None:
        return int(claimed)
    per_stage = math.prod(smap.parallel_layout_item[0].parallel_layouts.dev_matrix[0].dim)
    stage = int(m[1]) // max(1, per_stage)
    if claimed > stage:
        raise ToolError(f"{path}: operators of pipeline stage {claimed} in the strategy file of "
                        f"rank {m[1]}, which is stage {stage} ({per_stage} devices per stage)")
    return stage


def merge_strategies(src_dir: Path, out: Path) -> dict[str, Any]:
    """Merge every rank's strategy file in `src_dir` into `out`, one file per pipeline stage.

    The merged file has MindSpore's merged format (layout names prefixed `<stage>-`,
    current_stage 1), which transform_checkpoints and rank_list_for_transform read; each
    file's stage comes from strategy_stage, so every stage's parameters are kept.
    """
    files = sorted(src_dir.glob("*.ckpt"), key=_rank_order)
    if not files:
        raise ToolError(f"{src_dir}: no strategy files (*.ckpt)")
    from mindspore.train import node_strategy_pb2 as pb

    merged = pb.ParallelStrategyMap()
    stages: dict[int, Path] = {}
    for path in files:
        smap = _read_strategy(path)
        stage = strategy_stage(path, smap)
        if stage in stages:  # every rank of a stage describes the same layouts
            continue
        stages[stage] = path
        for item in smap.parallel_layout_item:
            item.param_name = f"{stage}-{item.param_name}"
        merged.parallel_strategy_item.extend(smap.parallel_strategy_item)
        merged.parallel_layout_item.extend(smap.parallel_layout_item)
    missing = sorted(set(range(max(stages) + 1)) - set(stages))
    if missing:
        raise ToolError(f"{src_dir}: no strategy file for pipeline stage(s) {missing}")
    merged.current_stage = 1
    write_atomic(out, merged.SerializeToString(), fsync=False)
    return {"strategy": str(out), "sources": len(files), "stages": len(stages)}


def _rank_order(path: Path) -> tuple[int, str]:
    m = re.search(r"rank_([0-9]{1,9})", path.name)
    return (int(m[1]) if m else -1, path.name)


def strategy_devices(strategy: Path) -> int:
    """Device count of a (merged) strategy file: devices per stage x pipeline stages."""
    smap = _read_strategy(strategy)
    per_stage = int(math.prod(smap.parallel_layout_item[0].parallel_layouts.dev_matrix[0].dim))
    stages = {
        int(i.param_name.split("-", 1)[0]) if "-" in i.param_name else 0
        for i in smap.parallel_layout_item
    }
    return per_stage * len(stages)


def needed_ranks(
    strategy: Path | None, dst_strategy: Path | None, rank: int | None = 0
) -> dict[str, Any]:
    """Source ranks whose checkpoints a transform to `dst_strategy` (None: one device) reads.

    `rank` None: the union over every destination rank. Data-parallel replicas hold the same
    slices; MindSpore picks one of them per slice.
    """
    import mindspore as ms

    dst = str(dst_strategy) if dst_strategy is not None else None
    src = str(strategy) if strategy is not None else None
    dst_ranks = [rank] if rank is not None or dst_strategy is None else None
    if dst_ranks is None:
        assert dst_strategy is not None
        dst_ranks = list(range(strategy_devices(dst_strategy)))
    ranks: set[int] = set()
    for r in dst_ranks:
        ranks.update(int(x) for x in ms.rank_list_for_transform(r or 0, src, dst))
    return {"ranks": sorted(ranks), "dst_ranks": dst_ranks}
