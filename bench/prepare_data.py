"""Benchmark prepare-data: ours (batched encode + batched writes) vs a per-record loop.

    python bench/prepare_data.py [--records 52002] [--seq-length 512] [--scramble]

Generates an Alpaca-format file of `--records` records from the seed tasks (varied by index),
then in one run times `model.data.prepare` and the per-record loop of MindFormers'
make_mindrecord.py (encode one record at a time, write one sample at a time), checks both wrote
the same token ids, and prints the ratio. Goal: >= 5x. MindSpore's mindrecord module is imported
before either is timed (both need it; the first import costs ~1.5 s). The machine may be shared:
the load average and each side's CPU seconds are printed next to the wall times.

The generated file repeats each seed text ~300 times, so its words repeat more than real text
does, which flatters the pre-token cache of `model.pretokens`. `--scramble` replaces every ASCII
word with a random one of the same length (nearly every word distinct): the cache's worst case.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import string
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrate_bloom.data.prepare import (  # noqa: E402
    eos_id_of,
    load_records,
    load_tokenizer_file,
    prepare,
)
from orchestrate_bloom.prompts import prompt_of  # noqa: E402

from tests.model.data_helpers import seed_records, tokenizer_file  # noqa: E402


def generate(path: Path, n: int, scramble: bool = False) -> None:
    seeds = seed_records()
    recs = []
    for i in range(n):
        s = seeds[i % len(seeds)]
        recs.append({"instruction": f"{s['instruction']} (variant {i})", "input": s["input"],
                     "output": f"{s['output']} [{i}]"})
    if scramble:
        rnd = random.Random(0)

        def word(m: re.Match[str]) -> str:
            return "".join(rnd.choice(string.ascii_lowercase) for _ in m.group())

        recs = [{k: re.sub(r"[A-Za-z]+", word, v) for k, v in r.items()} for r in recs]
    path.write_text(json.dumps(recs))


def per_record(src: Path, out: Path, tok_path: Path, seq_length: int) -> None:
    """The reference: one encode and one write per record, as make_mindrecord.py does."""
    from mindspore.mindrecord import FileWriter

    tok = load_tokenizer_file(tok_path)
    eos = eos_id_of(tok)
    records = load_records(src)
    writer = FileWriter(str(out), shard_num=1, overwrite=True)
    writer.add_schema({"input_ids": {"type": "int32", "shape": [-1]}}, "alpaca")
    for rec in records:
        ids = (tok.encode(prompt_of(rec), add_special_tokens=False).ids
               + tok.encode(rec["output"], add_special_tokens=False).ids)[:seq_length + 1]
        ids = ids + [eos] * (seq_length + 1 - len(ids))
        writer.write_raw_data([{"input_ids": np.array(ids, dtype=np.int32)}])
    writer.commit()


def read_ids(path: Path) -> np.ndarray:
    from mindspore.mindrecord import FileReader

    reader = FileReader(str(path))
    rows = [r["input_ids"] for r in reader.get_next()]
    reader.close()
    return np.stack(rows)


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=52002)
    parser.add_argument("--seq-length", type=int, default=512)
    parser.add_argument("--scramble", action="store_true",
                        help="Random words instead of the seed texts' (worst case for the cache).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tok = tokenizer_file(root)
        src = root / "alpaca_data.json"
        generate(src, args.records, args.scramble)
        print(f"input: {args.records} records{' (scrambled words)' if args.scramble else ''}, "
              f"{src.stat().st_size / 1e6:.1f} MB, seq_length {args.seq_length}, tokenizer {tok}")

        from mindspore.mindrecord import FileWriter  # noqa: F401 - warm import, see docstring

        print(f"load average before: {_load()}")
        t, c = time.perf_counter(), time.process_time()
        summary = prepare(src, root / "ours", args.seq_length, tok)
        ours, ours_cpu = time.perf_counter() - t, time.process_time() - c
        print(f"ours (batched):      {ours:7.2f} s  cpu {ours_cpu:6.2f} s  "
              f"({args.records / ours:,.0f} records/s, {summary.truncated} truncated, "
              f"{summary.tokens:,} tokens)  load {_load()}")

        t, c = time.perf_counter(), time.process_time()
        per_record(src, root / "loop.mindrecord", tok, args.seq_length)
        loop, loop_cpu = time.perf_counter() - t, time.process_time() - c
        print(f"per-record loop:     {loop:7.2f} s  cpu {loop_cpu:6.2f} s  "
              f"({args.records / loop:,.0f} records/s)  load {_load()}")

        same = np.array_equal(read_ids(root / "ours" / "alpaca.mindrecord"),
                              read_ids(root / "loop.mindrecord"))
        print(f"same token ids: {same}")
        print(f"ratio (loop / ours): {loop / ours:.1f}x wall, {loop_cpu / ours_cpu:.1f}x cpu  "
              f"(goal >= 5x)")


if __name__ == "__main__":
    main()
