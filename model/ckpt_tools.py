"""MindSpore-side checkpoint work for `orchestrate collect-ckpt`, run as a subprocess.

The control plane (orchestrator/) never imports mindspore; it runs these instead:

    python -m orchestrate_bloom.ckpt_tools merge-strategies --src DIR --out FILE
    python -m orchestrate_bloom.ckpt_tools needed-ranks --strategy FILE \
        [--dst-strategy FILE [--all-dst]]
    python -m orchestrate_bloom.ckpt_tools strip --src IN.ckpt --out OUT.ckpt [--src ... --out ...]
        [--keep-optimizer]
    python -m orchestrate_bloom.ckpt_tools transform --src-map JSON --strategy FILE --out OUT.ckpt
        [--dst-strategy FILE] [--rank 0]
    python -m orchestrate_bloom.ckpt_tools check --ckpt FILE (--preset NAME | --model-json JSON)

Every subcommand prints one JSON object on stdout (the control plane parses it) and exits 0,
or prints one line `error: ...` on stderr and exits 1. Output files are written to a temp
name and renamed, so a failed run leaves no half-written checkpoint behind.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import resource
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .fileio import atomic_target, write_atomic
from .tool_io import tool_main

OPTIMIZER_PREFIXES = (
    "adam_m.",
    "adam_v.",
    "moments.",
    "accu_grads.",
    "accu_gradients.",
)
OPTIMIZER_NAMES = frozenset(
    {
        "global_step",
        "learning_rate",
        "beta1_power",
        "beta2_power",
        "scale_sense",
        "current_iterator_step",
        "last_overflow_iterator_step",
        "epoch_num",
        "step_num",
        "loss_scale",
    }
)


class ToolError(Exception):
    """An expected failure: printed as one line, exit 1."""


def is_training_state(name: str) -> bool:
    """True for optimizer moments, gradient accumulators and step/scale counters."""
    return name in OPTIMIZER_NAMES or name.startswith(OPTIMIZER_PREFIXES)


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


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


def strip(src: Path, out: Path, keep_optimizer: bool = False) -> dict[str, Any]:
    """Copy `src` to `out` without optimizer state, record by record (one block in memory)."""
    from . import ckpt_stream

    try:
        entries = ckpt_stream.scan(src)
    except ckpt_stream.UnsupportedCkpt:
        return _strip_loaded(src, out, keep_optimizer)
    kept = [e for e in ckpt_stream.iter_entries(entries)
            if keep_optimizer or not is_training_state(e.name)]
    if not kept:
        raise ToolError(f"{src}: no parameters left after stripping optimizer state")
    with (atomic_target(out, mode=0o644) as tmp, open(src, "rb") as fh,
          ckpt_stream.CkptWriter(tmp) as writer):
        for entry in kept:
            writer.copy_records(fh, entry)
    return {
        "out": str(out),
        "kept": len(kept),
        "dropped": len(entries) - len(kept),
        "peak_rss": peak_rss_bytes(),
    }


def _strip_loaded(src: Path, out: Path, keep_optimizer: bool) -> dict[str, Any]:
    """`strip` through load_checkpoint/save_checkpoint, for files ckpt_stream cannot read."""
    import mindspore as ms

    dropped: list[str] = []

    def keep(name: str) -> bool:
        if keep_optimizer or not is_training_state(name):
            return True
        dropped.append(name)
        return False

    params = ms.load_checkpoint(str(src), choice_func=keep)
    if not params:
        raise ToolError(f"{src}: no parameters left after stripping optimizer state")
    with atomic_target(out, mode=0o644) as tmp:
        ms.save_checkpoint([{"name": k, "data": v} for k, v in params.items()], str(tmp))
    return {
        "out": str(out),
        "kept": len(params),
        "dropped": len(dropped),
        "peak_rss": peak_rss_bytes(),
    }


def transform(
    src_map: Mapping[int, Path],
    strategy: Path | None,
    out: Path,
    dst_strategy: Path | None = None,
    rank: int = 0,
) -> dict[str, Any]:
    """Reassemble rank `rank` of `dst_strategy` (None: a single device) from sharded files.

    `strategy` None: the source is one complete checkpoint (`src_map` {0: file}, pure DP).
    """
    import mindspore as ms

    for r, path in src_map.items():
        if not path.is_file():
            raise ToolError(f"rank {r}: checkpoint {path} missing")
    needed = needed_ranks(strategy, dst_strategy, rank)["ranks"]
    missing = [r for r in needed if r not in src_map]
    if missing:
        raise ToolError(f"transform needs the checkpoints of ranks {missing}, not given")
    how = "mindspore"
    with atomic_target(out, mode=0o644) as tmp:
        if strategy is not None and dst_strategy is None:
            streamed = _stream_transform({r: src_map[r] for r in needed}, strategy, tmp)
            how = "streamed" if streamed is None else f"mindspore ({streamed})"
        if how != "streamed":
            tmp.unlink(missing_ok=True)
            ms.transform_checkpoint_by_rank(
                rank,
                {r: str(src_map[r]) for r in needed},
                str(tmp),
                str(strategy) if strategy is not None else None,
                str(dst_strategy) if dst_strategy is not None else None,
            )
    return {"out": str(out), "ranks": needed, "method": how, "peak_rss": peak_rss_bytes()}


def _layouts(strategy: Path) -> dict[str, tuple[int, tuple[int, ...], tuple[int, ...]]]:
    """Parameter name -> (pipeline stage, device matrix, tensor map) of a strategy file.

    Raises:
        UnsupportedCkpt: a layout `_stream_transform` does not handle (uneven or field splits,
            optimizer-sharded weights, several device matrices).
    """
    import re

    from mindspore.train import node_strategy_pb2 as pb

    from .ckpt_stream import UnsupportedCkpt

    smap = pb.ParallelStrategyMap()
    smap.ParseFromString(strategy.read_bytes())
    out = {}
    for item in smap.parallel_layout_item:
        m = re.fullmatch(r"([0-9]{1,9})-(.+)", item.param_name)  # merged files: "<stage>-<name>"
        stage, name = (int(m[1]), m[2]) if m else (smap.current_stage, item.param_name)
        pl = item.parallel_layouts
        if (len(pl.dev_matrix) != 1 or len(pl.tensor_map) != 1 or pl.field
                or pl.opt_weight_shard_size not in (0, 1)  # -1: the whole DP group
                or any(d.dim for d in pl.param_split_shape)
                or any(d.dim for d in pl.indices_offset)):
            raise UnsupportedCkpt(f"layout of {name}")
        out[name] = (stage, tuple(pl.dev_matrix[0].dim), tuple(pl.tensor_map[0].dim))
    return out


def _stream_transform(src_map: Mapping[int, Path], strategy: Path, out: Path) -> str | None:
    """Write the single-device checkpoint to `out`, one parameter at a time; None when done.

    Each parameter is assembled from its slices (read from the files straight into a
    preallocated array) and written before the next is read: host memory holds one
    parameter (plus one slice when the split is not along axis 0), never the checkpoint.
    Returns why it cannot (unsupported layout or file) without writing anything useful then.
    """
    import numpy as np

    from .ckpt_stream import CkptWriter, UnsupportedCkpt, iter_entries, raw_dtype, scan

    try:
        layouts = _layouts(strategy)
        scans = {r: scan(src_map[r]) for r in sorted(src_map)}
    except UnsupportedCkpt as exc:
        return str(exc)
    handles = {r: open(src_map[r], "rb") for r in scans}  # noqa: SIM115 - closed below
    try:
        with CkptWriter(out) as writer:
            done: set[str] = set()
            for r, entries in scans.items():
                for entry in iter_entries(entries):
                    if entry.name in done:
                        continue
                    done.add(entry.name)
                    if entry.name not in layouts:  # not sharded: one copy, as it is
                        writer.copy_records(handles[r], entry)
                        continue
                    found = _slice_holders(entry.name, entry.dims, layouts[entry.name], scans)
                    if isinstance(found, str):
                        return found
                    full, holder = found
                    array = np.empty(full, dtype=raw_dtype(entry.dtype))
                    why = _read_slices(array, holder, entry, scans, handles)
                    if why is not None:
                        return why
                    writer.write(entry.name, full, entry.dtype, array)
                    del array
    finally:
        for fh in handles.values():
            fh.close()
    return None



def _slice_holders(name: str, dims: Sequence[int], layout: tuple[int, Any, Any],
                   ranks: Mapping[int, Any]) -> tuple[tuple[int, ...], dict[Any, int]] | str:
    """(full shape, slice index -> a given rank holding that slice) of a sharded parameter
    from its layout (stage, device matrix, tensor map), or why the ranks cannot give it."""
    import numpy as np

    stage, dev, tmap = layout
    if len(tmap) != len(dims):
        return f"layout of {name} does not match its shape"
    per_stage = int(np.prod(dev))
    split = [dev[len(dev) - 1 - k] if k >= 0 else 1 for k in tmap]
    full = tuple(d * n for d, n in zip(dims, split, strict=True))
    holder: dict[Any, int] = {}
    for local in range(per_stage):  # device coordinates, last axis fastest
        coord = np.unravel_index(local, dev)
        idx = tuple(int(coord[len(dev) - 1 - k]) if k >= 0 else 0 for k in tmap)
        rank = stage * per_stage + local
        if rank in ranks and idx not in holder:
            holder[idx] = rank
    if len(holder) != int(np.prod(split)):
        return f"the given ranks do not hold every slice of {name}"
    return full, holder


def _read_slices(array: Any, holder: Mapping[Any, int], entry: Any, scans: Mapping[int, Any],
                 handles: Mapping[int, Any]) -> str | None:
    """Read each slice from its rank's file into its region of `array` (straight into the
    array when the region is contiguous); why not when a rank lacks it."""
    import numpy as np

    from .ckpt_stream import read_into

    for idx, rank in holder.items():
        part = scans[rank].get(entry.name)
        if part is None or part.dims != entry.dims or part.dtype != entry.dtype:
            return f"rank {rank} lacks {entry.name} or holds another shape"
        region = array[tuple(slice(i * d, (i + 1) * d)
                             for i, d in zip(idx, entry.dims, strict=True))]
        if region.flags.c_contiguous:
            read_into(handles[rank], part, region.data.cast("B"))
        else:
            piece = np.empty(entry.dims, dtype=array.dtype)
            read_into(handles[rank], part, piece.data.cast("B"))
            region[...] = piece
            del piece
    return None


def compare_params(
    expected: Mapping[str, Sequence[int]], got: Mapping[str, Sequence[int]]
) -> list[str]:
    """Problems between a model's parameter shapes and a checkpoint's, one line each."""
    problems = [f"missing parameter {n} {list(s)}" for n, s in expected.items() if n not in got]
    problems += [
        f"unexpected parameter {n} {list(s)}"
        for n, s in got.items()
        if n not in expected and not is_training_state(n)
    ]
    problems += [
        f"wrong shape for {n}: checkpoint {list(got[n])}, model {list(s)}"
        for n, s in expected.items()
        if n in got and tuple(got[n]) != tuple(s)
    ]
    return problems


def _config(preset: str | None, model_json: str | None) -> Any:
    from .config import BloomConfig, load_preset

    if model_json:
        return BloomConfig.from_dict(json.loads(model_json), "the manifests' model section")
    if preset:
        return load_preset(preset)
    raise ToolError("check needs --preset or --model-json")


def bloom_factory(config: Any) -> tuple[Any, dict[str, tuple[int, ...]]]:
    """BloomLMHeadModel(config) and its parameter shapes by name."""
    from .bloom import BloomLMHeadModel

    net = BloomLMHeadModel(config)
    return net, {p.name: tuple(p.shape) for p in net.get_parameters()}


def model_shapes(model: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of BloomLMHeadModel for a model section."""
    from .config import BloomConfig

    return BloomConfig.from_dict(dict(model), "model").parameter_shapes()


NUMPY_TYPES = {
    "Float16": "float16", "Float32": "float32", "Float64": "float64", "Int8": "int8",
    "Int16": "int16", "Int32": "int32", "Int64": "int64", "UInt8": "uint8", "UInt16": "uint16",
    "UInt32": "uint32", "UInt64": "uint64", "Bool": "bool",
}


def _refuse_oversized_model(ckpt: Path, config: Any) -> None:
    """ToolError before building a model the checkpoint cannot hold (>= 2 bytes a parameter):
    the model section comes from a node's manifest and must not size an allocation."""
    count = getattr(config, "parameter_count", None)
    size = ckpt.stat().st_size
    if isinstance(count, int) and count * 2 > size + (1 << 20):
        raise ToolError(f"{ckpt}: the model section describes {count} "
                        f"parameters, more than the {size}-byte checkpoint can hold; not built")


def check(
    ckpt: Path, config: Any, model_factory: Callable[[Any], Any] = bloom_factory
) -> dict[str, Any]:
    """Load `ckpt` into the model; fail naming missing/unexpected/mis-shaped parameters.

    Shapes come from the file's framing; values are then read one parameter at a time into
    the model's parameters (strict: same type), so memory holds the model plus one
    parameter, not the model plus the whole loaded checkpoint.
    """
    import numpy as np

    from . import ckpt_stream

    _refuse_oversized_model(ckpt, config)
    try:
        entries = ckpt_stream.scan(ckpt)
    except ckpt_stream.UnsupportedCkpt:
        return _check_loaded(ckpt, config, model_factory)
    if any(e.dtype not in NUMPY_TYPES for e in entries.values()):
        return _check_loaded(ckpt, config, model_factory)
    import mindspore as ms

    net, expected = model_factory(config)
    _raise_problems(ckpt, compare_params(expected, {n: e.dims for n, e in entries.items()}))
    params = {p.name: p for p in net.get_parameters()}
    with open(ckpt, "rb") as fh:
        for name in expected:
            entry, param = entries[name], params[name]
            data = np.empty(entry.dims, dtype=NUMPY_TYPES[entry.dtype])
            ckpt_stream.read_into(fh, entry, data.data.cast("B"))
            tensor = ms.Tensor.from_numpy(data)
            if tensor.dtype != param.dtype:
                raise ToolError(f"{ckpt} does not fit the model: wrong type for {name}: "
                                f"checkpoint {entry.dtype}, model {param.dtype}")
            param.set_data(tensor, param.sliced)
            if hasattr(param, "init_param") and not param.init_param:
                param.init_param = True
            del data, tensor
    return {"ckpt": str(ckpt), "parameters": len(expected), "peak_rss": peak_rss_bytes()}


def _raise_problems(ckpt: Path, problems: Sequence[str]) -> None:
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ToolError(f"{ckpt} does not fit the model: " + "; ".join(problems[:5]) + more)


def _check_loaded(ckpt: Path, config: Any, model_factory: Callable[[Any], Any]) -> dict[str, Any]:
    """`check` through load_checkpoint, for files ckpt_stream cannot read (e.g. bfloat16)."""
    import mindspore as ms

    net, expected = model_factory(config)
    params = ms.load_checkpoint(str(ckpt))
    _raise_problems(ckpt, compare_params(expected, {n: tuple(p.shape)
                                                    for n, p in params.items()}))
    ms.load_param_into_net(net, {n: params[n] for n in expected}, strict_load=True)
    return {"ckpt": str(ckpt), "parameters": len(expected), "peak_rss": peak_rss_bytes()}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m orchestrate_bloom.ckpt_tools", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("merge-strategies", help="merge per-rank strategy files")
    m.add_argument("--src", type=Path, required=True, help="folder of ckpt_strategy_rank_*.ckpt")
    m.add_argument("--out", type=Path, required=True, help="merged strategy file")
    n = sub.add_parser("needed-ranks", help="source ranks a transform reads")
    n.add_argument("--strategy", type=Path, default=None)
    n.add_argument("--dst-strategy", type=Path, default=None)
    n.add_argument("--all-dst", action="store_true", help="union over every destination rank")
    s = sub.add_parser("strip", help="drop optimizer state from a checkpoint")
    s.add_argument("--src", type=Path, action="append", required=True, help="repeatable")
    s.add_argument("--out", type=Path, action="append", required=True, help="one per --src")
    s.add_argument("--keep-optimizer", action="store_true")
    t = sub.add_parser("transform", help="sharded checkpoints -> one device (or --dst-strategy)")
    t.add_argument("--src-map", required=True, help='JSON {"rank": "path.ckpt", ...}')
    t.add_argument("--strategy", type=Path, default=None, help="merged source strategy")
    t.add_argument("--dst-strategy", type=Path, default=None)
    t.add_argument("--rank", type=int, default=0, help="destination rank to produce")
    t.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("check", help="load a checkpoint into the preset's BloomLMHeadModel")
    c.add_argument("--ckpt", type=Path, required=True)
    c.add_argument("--preset", default=None, help="preset name or YAML")
    c.add_argument("--model-json", default=None, help="model section as JSON (from a manifest)")
    return p


def _run(args: argparse.Namespace) -> dict[str, Any]:
    """One subcommand's result."""
    if args.cmd == "merge-strategies":
        return merge_strategies(args.src, args.out)
    if args.cmd == "needed-ranks":
        return needed_ranks(args.strategy, args.dst_strategy, None if args.all_dst else 0)
    if args.cmd == "strip":
        if len(args.src) != len(args.out):
            raise ToolError(f"{len(args.src)} --src but {len(args.out)} --out")
        pairs = zip(args.src, args.out, strict=True)
        runs = [strip(s, o, args.keep_optimizer) for s, o in pairs]
        return {"results": runs, "peak_rss": peak_rss_bytes()}
    if args.cmd == "transform":
        src_map = {int(k): Path(v) for k, v in json.loads(args.src_map).items()}
        return transform(src_map, args.strategy, args.out, args.dst_strategy, args.rank)
    return check(args.ckpt, _config(args.preset, args.model_json))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return tool_main(lambda: _run(args), (ToolError, OSError, ValueError, RuntimeError, TypeError))


if __name__ == "__main__":
    sys.exit(main())
