"""Alpaca JSON -> MindRecord shards, and the per-rank reader the trainer uses.

Prepare (what `orchestrate prepare-data` runs in a subprocess):

    python -m orchestrate_bloom.data --input alpaca_data.json --output data/alpaca \
        --seq-length 2048 [--tokenizer tokenizer.json] [--n 10240] [--shards 1] [--mask-prompt] \
        [--progress]

Each record becomes the Alpaca prompt (the with-input variant only when `input` is non-empty)
followed by the response and eos, tokenized, truncated to seq_length + 1 tokens and padded with
eos (the template, prompts.py, is recorded as `template` in summary.json). Columns:
`input_ids` int32[seq_length + 1], plus `loss_mask` int32[seq_length + 1] (1 on response
tokens and the first eos) with `--mask-prompt`. Output files:
`DIR/alpaca.mindrecord[0..K-1]` (+ `.db`), and `DIR/summary.json`. Malformed input stops before
anything is written; a failure while writing leaves DIR as it was.

Progress lines (`--progress`) go to stdout as `progress done=N total=M`; the last stdout line is
`summary {json}`. Errors: one line `error: ...` on stderr, exit 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..prompts import prompt_of
from .key import DEFAULT_TOKENIZER
from .pretokens import Key, PretokenCache, is_plain_byte_level
from .read import FILE_STEM, DataError
from .template_ids import TemplateIds, _plain_edges, template_ids

SUMMARY_FILE = "summary.json"
ENCODE_CHUNK = 4096  # records per batch: fewer, larger writes (with the pre-token cache the
# tokenizer no longer prefers 1024; measured 5.2-5.3 s CPU vs 5.6-5.8 s for 52,002 records)
TEMPLATE_PROBE = 64  # records encoded both whole and field-wise before trusting field-wise


@dataclass(frozen=True)
class Summary:
    """What one prepare run produced."""

    records: int
    truncated: int  # records longer than seq_length + 1 tokens
    tokens: int  # real (non-padding) tokens written
    seconds: float
    seq_length: int
    shards: int
    mask_prompt: bool
    files: list[str]
    template: str = "alpaca"  # the prompt template of every record (prompts.py)
    no_response: int = 0  # records whose prompt alone fills the row: no response is trained


# --- reading and validating -------------------------------------------------------------------

def load_records(path: Path, n: int = -1) -> list[dict[str, str]]:
    """Read and validate an Alpaca JSON file; return the first `n` records (-1: all).

    Raises:
        DataError: unreadable file, bad JSON, not a list, or a bad record (index named).
    """
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror}") from None
    # surrogateescape keeps bad bytes as lone surrogates so the record holding them can be named
    text = raw.decode("utf-8", errors="surrogateescape")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON: {e.msg} at line {e.lineno} "
                        f"column {e.colno}") from None
    if not isinstance(doc, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(doc).__name__}")
    if n >= 0:
        doc = doc[:n]
    for i, rec in enumerate(doc):
        _check_record(path, i, rec)
    return doc


def _check_record(path: Path, i: int, rec: Any) -> None:
    if not isinstance(rec, dict):
        raise DataError(f"{path}: record {i}: expected an object, got {type(rec).__name__}")
    for key in ("instruction", "output"):
        if key not in rec:
            raise DataError(f"{path}: record {i}: missing {key!r}")
    for key in ("instruction", "input", "output"):
        if key not in rec:
            continue
        value = rec[key]
        if not isinstance(value, str):
            raise DataError(f"{path}: record {i}: {key!r} must be a string, "
                            f"got {type(value).__name__} {_short(value)}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            bad = value[e.start:e.end].encode("utf-8", errors="surrogateescape")
            raise DataError(f"{path}: record {i}: {key!r} is not valid UTF-8 "
                            f"(bytes {bad!r} at character {e.start})") from None


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


# --- tokenizing -------------------------------------------------------------------------------

def load_tokenizer_file(path: Path | None) -> Any:
    """A `tokenizers.Tokenizer` from `path` (None: the small shipped tokenizer)."""
    from tokenizers import Tokenizer

    path = DEFAULT_TOKENIZER if path is None else path
    if not path.is_file():
        raise DataError(f"{path}: tokenizer file does not exist")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 - tokenizers raises plain Exception on bad files
        raise DataError(f"{path}: not a tokenizers JSON file: {e}") from None


def eos_id_of(tokenizer: Any) -> int:
    """The id of `</s>` (or `<eos>`); Bloom's convention puts it at 2."""
    for token in ("</s>", "<eos>", "<|endoftext|>"):
        tid = tokenizer.token_to_id(token)
        if tid is not None:
            return int(tid)
    raise DataError("tokenizer has no eos token (looked for '</s>', '<eos>', '<|endoftext|>')")



def record_encoder(tokenizer: Any, probe: Sequence[dict[str, str]] = ()
                   ) -> tuple[TemplateIds | None, PretokenCache]:
    """The template ids and pre-token cache `encode_records` should use with `tokenizer`.

    Each shortcut is taken only when the tokenizer's configuration allows it and the `probe`
    records encode to the same ids with it as without it.
    """
    tids = template_ids(tokenizer, probe)
    cache = PretokenCache(tokenizer, enabled=is_plain_byte_level(tokenizer))
    if cache.enabled and probe:
        eos = eos_id_of(tokenizer)
        plain = encode_records(tokenizer, probe, 2048, eos)[0]
        cache.enabled = np.array_equal(encode_records(tokenizer, probe, 2048, eos, tids,
                                                      cache)[0], plain)
    return tids, cache


def _record_keys(cache: PretokenCache, records: Sequence[dict[str, str]],
                 tids: TemplateIds | None) -> tuple[list[Key], list[int], list[int]]:
    """All records' keys in a row, and per record its number of prompt keys and of keys."""
    if tids is not None:  # registering again is a no-op
        head_i, mid_i, tail_i = (cache.register(k, v) for k, v in (
            ("head_input", tids.head_input), ("mid_input", tids.mid_input),
            ("tail_input", tids.tail_input)))
        head_p, tail_p = (cache.register(k, v) for k, v in (
            ("head_plain", tids.head_plain), ("tail_plain", tids.tail_plain)))
    keys: list[Key] = []
    n_prompt: list[int] = []
    n_keys: list[int] = []
    for r in records:
        instruction, inp = r["instruction"], r.get("input", "")
        if tids is None or not _plain_edges(instruction) or (inp and not _plain_edges(inp)):
            k = cache.keys(prompt_of(r))
        elif inp:
            k = [head_i, *cache.keys(instruction), mid_i, *cache.keys(inp), tail_i]
        else:
            k = [head_p, *cache.keys(instruction), tail_p]
        n_prompt.append(len(k))
        k += cache.keys(r["output"])
        n_keys.append(len(k))
        keys += k
    return keys, n_prompt, n_keys


def encode_records(tokenizer: Any, records: Sequence[dict[str, str]], seq_length: int,
                   eos_id: int, tids: TemplateIds | None = None,
                   cache: PretokenCache | None = None) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Tokenize a batch of records into fixed-length rows.

    The ids equal `encode(prompt_of(r)) + encode(r["output"])` (no special tokens), truncated to
    seq_length + 1 and padded with eos. `tids` and `cache` (from `record_encoder`) give the same
    ids with less work: prompts encoded field by field, texts split into cached pre-tokens.

    Returns:
        input_ids int32[n, seq_length + 1], loss_mask int32[n, seq_length + 1] (1 on response
        tokens and the first eos), the number of truncated records, and the real token count.
    """
    if cache is None:
        cache = PretokenCache(tokenizer, enabled=False)
    width = seq_length + 1
    keys, n_prompt, n_keys = _record_keys(cache, records, tids)
    tokens, lens = cache.ids(keys)  # all records' ids back to back
    at = np.concatenate([[0], np.cumsum(lens)])  # token offset of each key
    counts = np.asarray(n_keys, dtype=np.int64)
    first = np.cumsum(counts) - counts  # each record's first key
    start = at[first]
    p_len = at[first + np.asarray(n_prompt, dtype=np.int64)] - start
    r_len = at[first + counts] - start  # prompt + answer
    total = r_len + 1  # + eos, before truncation
    # scatter each record's first min(r_len, width) ids into its row; eos is the padding value
    cols = np.arange(width)
    ids = np.full((len(records), width), eos_id, dtype=np.int32)
    keep = np.arange(len(tokens)) - np.repeat(start, r_len) < width
    ids[cols < np.minimum(r_len, width)[:, None]] = tokens[keep]
    end = np.minimum(total, width)
    mask = ((cols >= np.minimum(p_len, width)[:, None]) & (cols < end[:, None])).astype(np.int32)
    return ids, mask, int((total > width).sum()), int(end.sum())


# --- writing ----------------------------------------------------------------------------------

def prepare(input_path: Path, output_dir: Path, seq_length: int, tokenizer_path: Path | None = None,
            n: int = -1, shards: int = 1, mask_prompt: bool = False,
            progress: Callable[[int, int], None] | None = None) -> Summary:
    """Write the MindRecord shards for `input_path` into `output_dir` (see module docstring).

    Raises:
        DataError: bad arguments or malformed input; nothing is written then.
    """
    if seq_length < 1:
        raise DataError(f"--seq-length must be >= 1, got {seq_length}")
    if not 1 <= shards <= 1000:
        raise DataError(f"--shards must be between 1 and 1000, got {shards}")
    if n < -1:
        raise DataError(f"--n must be -1 (all) or >= 0, got {n}")
    start = time.perf_counter()
    tokenizer = load_tokenizer_file(tokenizer_path)
    eos_id = eos_id_of(tokenizer)
    records = load_records(input_path, n)
    if len(records) < shards:
        raise DataError(f"{input_path}: {len(records)} records cannot fill {shards} shards")
    if output_dir.exists() and not output_dir.is_dir():
        raise DataError(f"{output_dir}: exists and is not a directory")
    output_dir.mkdir(parents=True, exist_ok=True)
    partial = Path(output_dir) / f".partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        truncated, tokens, files, no_response = _write(records, partial, seq_length, tokenizer,
                                                       eos_id, shards, mask_prompt, progress)
        summary = Summary(records=len(records), truncated=truncated, tokens=tokens,
                          seconds=round(time.perf_counter() - start, 3), seq_length=seq_length,
                          shards=shards, mask_prompt=mask_prompt, files=files,
                          no_response=no_response)
        (partial / SUMMARY_FILE).write_text(json.dumps(asdict(summary), indent=2) + "\n")
        for old in output_dir.glob(FILE_STEM + "*"):
            old.unlink()
        for name in [*files, *(f + ".db" for f in files), SUMMARY_FILE]:
            os.replace(partial / name, output_dir / name)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return summary


def _write(records: Sequence[dict[str, str]], directory: Path, seq_length: int, tokenizer: Any,
           eos_id: int, shards: int, mask_prompt: bool,
           progress: Callable[[int, int], None] | None) -> tuple[int, int, list[str], int]:
    from mindspore.mindrecord import FileWriter

    writer = FileWriter(str(directory / FILE_STEM), shard_num=shards, overwrite=True)
    schema = {"input_ids": {"type": "int32", "shape": [-1]}}
    if mask_prompt:
        schema["loss_mask"] = {"type": "int32", "shape": [-1]}
    writer.add_schema(schema, "alpaca")
    truncated = tokens = no_response = 0
    starts = range(0, len(records), ENCODE_CHUNK)

    tids, cache = record_encoder(tokenizer, records[:TEMPLATE_PROBE])

    def encode(lo: int) -> tuple[np.ndarray, np.ndarray, int, int]:
        return encode_records(tokenizer, records[lo:lo + ENCODE_CHUNK], seq_length, eos_id,
                              tids, cache)

    # tokenize chunk i + 1 (Rust, GIL released) while chunk i is written
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(encode, 0)
        for n, lo in enumerate(starts):
            ids, mask, t, k = pending.result()
            if n + 1 < len(starts):
                pending = pool.submit(encode, starts[n + 1])
            truncated, tokens = truncated + t, tokens + k
            no_response += int((mask.sum(1) == 0).sum())  # no response token within the row
            if mask_prompt:
                rows = [{"input_ids": i, "loss_mask": m} for i, m in zip(ids, mask, strict=True)]
            else:
                rows = [{"input_ids": i} for i in ids]
            writer.write_raw_data(rows)
            if progress is not None:
                progress(min(lo + ENCODE_CHUNK, len(records)), len(records))
    writer.commit()
    files = [FILE_STEM] if shards == 1 else [f"{FILE_STEM}{i}" for i in range(shards)]
    return truncated, tokens, files, no_response


# --- reading back -----------------------------------------------------------------------------

# --- command line -----------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    """`python -m orchestrate_bloom.data ...` (see module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m orchestrate_bloom.data",
                                     description="Alpaca JSON -> MindRecord shards.")
    parser.add_argument("--input", type=Path, required=True, help="Alpaca JSON file (a list).")
    parser.add_argument("--output", type=Path, required=True, help="Directory for the shards.")
    parser.add_argument("--seq-length", type=int, required=True, help="Tokens per sample minus 1.")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="tokenizer.json (default: the small shipped tokenizer).")
    parser.add_argument("--n", type=int, default=-1, help="First N records only (-1: all).")
    parser.add_argument("--shards", type=int, default=1, help="Number of MindRecord files.")
    parser.add_argument("--mask-prompt", action="store_true",
                        help="Add a loss_mask column: loss on response tokens only.")
    parser.add_argument("--progress", action="store_true", help="Print progress lines.")
    args = parser.parse_args(argv)

    def report(done: int, total: int) -> None:
        print(f"progress done={done} total={total}", flush=True)

    try:
        summary = prepare(args.input, args.output, args.seq_length, args.tokenizer, args.n,
                          args.shards, args.mask_prompt, report if args.progress else None)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    print("summary " + json.dumps(asdict(summary)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
