"""Reading prepared MindRecord data back: what the trainer reads (split out of prepare.py).

    files = data_files(Path("data/alpaca"))         # our alpaca.mindrecord*, or any *.mindrecord
    python -m orchestrate_bloom.data.read sample-length DIR   # {"sample_length": N, "file": F}
    dataset = create_dataset(Path("data/alpaca"), batch_size=8, num_shards=2, shard_id=0)

A folder holds our `alpaca.mindrecord[0..K-1]` (prepare-data), or what MindFormers'
make_mindrecord.py writes (e.g. `dataset.mindrecord` + `.db`, column `input_ids` int64 of
seq_length + 1 ids padded with eos): int64 columns are cast to int32 as they are read.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..tool_io import tool_main

FILE_STEM = "alpaca.mindrecord"


class DataError(ValueError):
    """Input data or arguments are malformed; the message names the file/record and the value."""


def data_files(path: Path) -> list[str]:
    """The MindRecord files of a prepared directory (or a single file), in shard order: ours
    (alpaca.mindrecord*), else any other *.mindrecord* (e.g. MindFormers' dataset.mindrecord).

    Raises:
        DataError: nothing to read there.
    """
    if path.is_file():
        return [str(path)]
    files = [p for p in path.glob(FILE_STEM + "*") if p.suffix != ".db"]
    if not files:
        files = [p for p in path.glob("*.mindrecord*") if p.suffix != ".db"]
    if not files:
        raise DataError(f"{path}: no {FILE_STEM}* or *.mindrecord files (run `orchestrate "
                        "prepare-data`, or give MindFormers' make_mindrecord.py output)")
    return [str(p) for p in sorted(files, key=lambda p: (len(p.name), p.name))]


def column_types(path: Path) -> dict[str, str]:
    """Column name -> MindRecord type (e.g. "int32", "int64") of the data at `path`."""
    from mindspore.mindrecord import FileReader

    reader = FileReader(data_files(path)[0])
    try:
        return {name: str(field.get("type", "")) for name, field in reader.schema().items()}
    finally:
        reader.close()


def create_dataset(path: Path, batch_size: int, num_shards: int = 1, shard_id: int = 0,
                   skip_samples: int = 0, columns: Sequence[str] = ("input_ids",)) -> Any:
    """An endless, deterministic, per-rank batched MindDataset.

    Rank `shard_id` of `num_shards` reads samples shard_id, shard_id + num_shards, ... (MindDataset
    sharding, shuffle off), so DP ranks' batches at step t together form the single-process
    batch t. `skip_samples` resumes the stream where a previous run stopped.
    """
    import mindspore.dataset as ds

    files = data_files(path)
    dataset = ds.MindDataset(files, columns_list=list(columns), shuffle=False,
                             num_shards=num_shards if num_shards > 1 else None,
                             shard_id=shard_id if num_shards > 1 else None)
    wide = [c for c, kind in column_types(path).items() if c in columns and kind == "int64"]
    if wide:  # MindFormers writes int64 ids; the model takes int32
        import mindspore as ms
        from mindspore.dataset import transforms

        dataset = dataset.map(operations=transforms.TypeCast(ms.int32), input_columns=wide)
    dataset = dataset.repeat()
    if skip_samples:
        dataset = dataset.skip(skip_samples)
    return dataset.batch(batch_size, drop_remainder=True)


def sample_length(path: Path) -> int:
    """Token ids per sample (seq_length + 1) of the prepared data at `path`."""
    from mindspore.mindrecord import FileReader

    reader = FileReader(data_files(path)[0], columns=["input_ids"])
    try:
        for row in reader.get_next():
            return int(row["input_ids"].shape[0])
    finally:
        reader.close()
    raise DataError(f"{path}: no samples")


def has_column(path: Path, column: str) -> bool:
    """Whether the prepared data at `path` has `column` (e.g. `loss_mask`)."""
    return column in column_types(path)


def _sample_length_result(path: Path) -> Mapping[str, Any]:
    return {"sample_length": sample_length(path), "file": data_files(path)[0]}


def main(argv: Sequence[str] | None = None) -> int:
    """`sample-length DIR`: the ids per row of the first data file, as one JSON line (what `up`
    asks before staging a local MindRecord folder), or one `error:` line and exit 1."""
    parser = argparse.ArgumentParser(prog="python -m orchestrate_bloom.data.read")
    parser.add_argument("what", choices=["sample-length"])
    parser.add_argument("path", type=Path)
    args = parser.parse_args(argv)
    return tool_main(lambda: _sample_length_result(args.path), (OSError, ValueError, RuntimeError))


if __name__ == "__main__":
    sys.exit(main())
