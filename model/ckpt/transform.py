"""Reassemble sharded rank checkpoints into one device's checkpoint
(`python -m orchestrate_bloom.ckpt.tools transform ...`): a streamed one-parameter-at-a-time
path for the layouts it can read, MindSpore's transform for the rest."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..fileio import atomic_target
from ..tool_io import ToolError, peak_rss_bytes
from .strategy import needed_ranks


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

    from mindspore.train import node_strategy_pb2 as pb

    from .stream import UnsupportedCkpt

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

    from .stream import CkptWriter, UnsupportedCkpt, iter_entries, raw_dtype, scan

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

    from .stream import read_into

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
