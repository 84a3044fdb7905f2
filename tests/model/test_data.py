"""prepare-data: Alpaca JSON -> MindRecord, read back through MindDataset, malformed input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from orchestrate_bloom.data.prepare import (
    FILE_STEM,
    DataError,
    encode_records,
    eos_id_of,
    load_records,
    load_tokenizer_file,
    prepare,
    record_encoder,
)
from orchestrate_bloom.data.pretokens import PretokenCache, is_plain_byte_level
from orchestrate_bloom.data.read import create_dataset
from orchestrate_bloom.data.template_ids import _prompt_plan, template_ids
from orchestrate_bloom.prompts import prompt_of

from tests.model.data_helpers import seed_records, tokenizer_file
from tests.tools.examples import examples


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tokenizer_file(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def seed_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("seed") / "seed.json"
    path.write_text(json.dumps(seed_records()))
    return path


def _read_all(out: Path, columns: tuple[str, ...] = ("input_ids",), shards: int = 1,
              shard_id: int = 0, n: int = 1) -> list[np.ndarray]:
    ds = create_dataset(out, batch_size=1, num_shards=shards, shard_id=shard_id, columns=columns)
    it = ds.create_tuple_iterator(output_numpy=True)
    return [next(it) for _ in range(n)]


def test_prepare_seed_tasks_round_trip(tmp_path: Path, tok_path: Path, seed_file: Path) -> None:
    out = tmp_path / "mr"
    summary = prepare(seed_file, out, seq_length=256, tokenizer_path=tok_path, shards=2)
    records = seed_records()
    assert summary.records == len(records) == 175
    assert summary.files == [f"{FILE_STEM}0", f"{FILE_STEM}1"]
    assert 0 < summary.truncated < 175  # seq 256 cuts the long answers, not the short ones
    assert json.loads((out / "summary.json").read_text())["records"] == 175
    assert not [p for p in out.iterdir() if p.name.startswith(".partial")]

    tok = load_tokenizer_file(tok_path)
    expected, _, truncated, _ = encode_records(tok, records, 256, eos_id_of(tok))
    assert truncated == summary.truncated
    rows = [r[0][0] for r in _read_all(out, n=175)]
    assert all(r.dtype == np.int32 and r.shape == (257,) for r in rows)
    np.testing.assert_array_equal(np.stack(rows), expected)  # same order as the input file
    # the ids decode back to the prompt + answer of a short record, then eos padding
    short = next(i for i, r in enumerate(records) if len(r["output"]) < 40 and not r["input"])
    eos = eos_id_of(tok)
    real = [t for t in rows[short].tolist() if t != eos]
    assert tok.decode(real) == prompt_of(records[short]) + records[short]["output"]
    assert rows[short][len(real)] == eos and rows[short][-1] == eos

    # per-rank sharding: rank r reads samples r, r + 2, ... so the ranks together cover all
    r0 = [r[0][0] for r in _read_all(out, shards=2, shard_id=0, n=3)]
    r1 = [r[0][0] for r in _read_all(out, shards=2, shard_id=1, n=3)]
    np.testing.assert_array_equal(np.stack(r0), expected[[0, 2, 4]])
    np.testing.assert_array_equal(np.stack(r1), expected[[1, 3, 5]])


def test_prompt_template_uses_input_only_when_non_empty() -> None:
    with_input = prompt_of({"instruction": "Sum.", "input": "1 2", "output": "3"})
    without = prompt_of({"instruction": "Sum.", "input": "", "output": "3"})
    assert "### Input:\n1 2\n\n### Response:\n" in with_input
    assert "### Input" not in without
    assert without.endswith("### Instruction:\nSum.\n\n### Response:\n")


def test_mask_prompt_marks_response_and_eos(tmp_path: Path, tok_path: Path) -> None:
    src = tmp_path / "a.json"
    recs = [{"instruction": "Say hi.", "input": "", "output": "hi there"}] * 4
    src.write_text(json.dumps(recs))
    prepare(src, tmp_path / "mr", seq_length=128, tokenizer_path=tok_path, mask_prompt=True)
    ids, mask = _read_all(tmp_path / "mr", columns=("input_ids", "loss_mask"))[0]
    ids, mask = ids[0], mask[0]
    tok = load_tokenizer_file(tok_path)
    n_prompt = len(tok.encode(prompt_of(recs[0]), add_special_tokens=False).ids)
    n_answer = len(tok.encode("hi there", add_special_tokens=False).ids)
    assert mask[:n_prompt].sum() == 0
    assert mask[n_prompt:n_prompt + n_answer + 1].all()  # response tokens + the first eos
    assert mask[n_prompt + n_answer + 1:].sum() == 0  # padding
    assert tok.decode(ids[mask == 1][:-1].tolist()) == "hi there"
    assert ids[n_prompt + n_answer] == eos_id_of(tok)


def test_n_takes_the_first_records(tmp_path: Path, tok_path: Path, seed_file: Path) -> None:
    summary = prepare(seed_file, tmp_path / "mr", seq_length=16, tokenizer_path=tok_path, n=10)
    assert summary.records == 10 and summary.truncated == 10
    assert summary.tokens == 10 * 17


MALFORMED = [
    ("not_a_list", b'{"instruction": "x", "output": "y"}',
     "expected a JSON list of records, got dict"),
    ("bad_json", b'[{"instruction": "x",', "not valid JSON"),
    ("not_an_object", b'[{"instruction": "x", "output": "y"}, 5]',
     "record 1: expected an object, got int"),
    ("missing_instruction", b'[{"instruction": "x", "output": "y"}, {"output": "y"}]',
     "record 1: missing 'instruction'"),
    ("missing_output", b'[{"instruction": "x"}]', "record 0: missing 'output'"),
    ("non_string", b'[{"instruction": "x", "input": "", "output": "y"},'
                   b' {"instruction": "x", "input": 3, "output": "y"}]',
     "record 1: 'input' must be a string, got int 3"),
    ("bad_utf8", b'[{"instruction": "x", "output": "y"}, {"instruction": "x", "output": "a\xff"}]',
     "record 1: 'output' is not valid UTF-8 (bytes b'\\xff' at character 1)"),
]


@pytest.mark.parametrize(("name", "content", "message"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_input_names_the_record(tmp_path: Path, name: str, content: bytes,
                                          message: str) -> None:
    src = tmp_path / f"{name}.json"
    src.write_bytes(content)
    with pytest.raises(DataError) as err:
        load_records(src)
    assert str(err.value).startswith(f"{src}: ")
    assert message in str(err.value)


def test_malformed_input_writes_nothing(tmp_path: Path, tok_path: Path) -> None:
    src = tmp_path / "bad.json"
    src.write_text(json.dumps([{"instruction": "x", "output": "y"}] * 3 + [{"instruction": 1}]))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="record 3"):
        prepare(src, out, seq_length=8, tokenizer_path=tok_path)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_cli_prepare_data(tmp_path: Path, tok_path: Path, seed_file: Path) -> None:
    from orchestrator.cli.main import cli

    runner = CliRunner()
    out = tmp_path / "mr"
    ok = runner.invoke(cli, ["prepare-data", "--input", str(seed_file), "--output", str(out),
                             "--seq-length", "32", "--tokenizer", str(tok_path), "--n", "20"])
    assert ok.exit_code == 0, ok.output
    assert "wrote 20 records" in ok.output and (out / FILE_STEM).is_file()

    bad = tmp_path / "bad.json"
    bad.write_text('[{"instruction": "x", "output": ["y"]}]')
    fail = runner.invoke(cli, ["prepare-data", "--input", str(bad), "--output",
                               str(tmp_path / "o2"), "--tokenizer", str(tok_path)])
    assert fail.exit_code == 1
    assert fail.output.strip().splitlines() == [
        f"Error: prepare-data: {bad}: record 0: 'output' must be a string, got list [\"y\"]"]
    assert not (tmp_path / "o2").exists() or not any((tmp_path / "o2").iterdir())


# --- field-wise prompt encoding must give the ids of the straightforward encoding -------------

EDGE_RECORDS = [
    {"instruction": "Plain.", "input": "", "output": "ok"},
    {"instruction": "Sum these.", "input": "1 2 3", "output": "6"},
    {"instruction": " leading space", "input": "", "output": "x"},
    {"instruction": "trailing space ", "input": "in", "output": "x"},
    {"instruction": "\nleading newline", "input": "trailing newline\n", "output": "x"},
    {"instruction": "tab\t", "input": "\tx", "output": "x"},
    {"instruction": "", "input": "", "output": "empty instruction"},
    {"instruction": "", "input": "only input", "output": "x"},
    {"instruction": "nbsp\u00a0", "input": "\u3000ideographic space", "output": "x"},
    {"instruction": "it's", "input": "'s", "output": "x"},
    {"instruction": "</s>special", "input": "tail</s>", "output": "</s>"},
    {"instruction": "CJK 你好", "input": "émoji 🙂", "output": "🙂"},
    {"instruction": "12345", "input": "   ", "output": " "},
    {"instruction": "crlf\r\n", "input": "\r\nx", "output": "x\r\n"},
    {"instruction": "zero\u200bwidth", "input": "\u200b", "output": "x"},
]


def _straightforward(tok: Any, records: list[dict[str, str]], seq_length: int,
                     eos: int) -> np.ndarray:
    """What make_mindrecord.py does: encode each prompt and answer whole, join, cut, pad."""
    rows = []
    for r in records:
        ids = (tok.encode(prompt_of(r), add_special_tokens=False).ids
               + tok.encode(r["output"], add_special_tokens=False).ids)[:seq_length + 1]
        rows.append(ids + [eos] * (seq_length + 1 - len(ids)))
    return np.array(rows, dtype=np.int32)


def test_field_wise_encoding_equals_whole_prompt(tok_path: Path) -> None:
    tok = load_tokenizer_file(tok_path)
    eos = eos_id_of(tok)
    records = seed_records() + EDGE_RECORDS
    tids = template_ids(tok, records[:8])
    assert tids is not None  # the shipped tokenizer qualifies, so the fast path is exercised
    kinds = {kind for kind, _ in _prompt_plan(records, tids)[1]}
    assert kinds == {0, 1, 2}  # whole-prompt fallback, with input, without input
    for seq_length in (512, 40):  # untruncated, and truncated inside the prompt
        ids, mask, truncated, tokens = encode_records(tok, records, seq_length, eos, tids)
        expected = _straightforward(tok, records, seq_length, eos)
        np.testing.assert_array_equal(ids, expected)
        slow_ids, slow_mask, slow_truncated, slow_tokens = encode_records(
            tok, records, seq_length, eos, None)
        np.testing.assert_array_equal(slow_ids, expected)
        np.testing.assert_array_equal(mask, slow_mask)
        assert (truncated, tokens) == (slow_truncated, slow_tokens)


def test_field_wise_encoding_refused_when_not_provably_exact(tok_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    from tokenizers import Tokenizer, pre_tokenizers

    tok = load_tokenizer_file(tok_path)
    spaced = Tokenizer.from_str(tok.to_str())
    spaced.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)  # " " before fields
    split = Tokenizer.from_str(tok.to_str())  # a Bloom-style Split + ByteLevel(no regex)
    split.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(" ?[^\\s.,!?]+", behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    for other in (spaced, split):
        assert template_ids(other, EDGE_RECORDS) is None
        ids = encode_records(other, EDGE_RECORDS, 64, 2)[0]
        np.testing.assert_array_equal(ids, _straightforward(other, EDGE_RECORDS, 64, 2))
    # the probe alone catches a tokenizer that passes the configuration check but splits wrongly
    monkeypatch.setattr("orchestrate_bloom.data.template_ids._splits_at_field_edges",
                        lambda _tokenizer: True)
    assert template_ids(spaced, EDGE_RECORDS[:2]) is None
    assert template_ids(tok, EDGE_RECORDS[:2]) is not None


# --- the pre-token cache must give the ids of encoding each text whole --------------------------

ODD_TEXTS = [
    "", " ", "é", "é é é", "aé b", " é", "é ", "don’t stop", "’s and ’t", "x</s> y</s>z",
    "</s>", " </s> a", "a  b\n\n c\t\td", "naïve café 12 34", "🙂 a 🙂b", "\u3000x y",
    "a\u00a0 b", "tail ’", "’ head", "1 2 é 3 4", "end with space é ", "x\r\n\r\n y", "\x00a b",
    "é\n  b", "é \n b", "é  x", "é\t y", "é\n\n\nz", "é  , x", "a\n  é",
]


def _cache_ids(cache: PretokenCache, texts: list[str]) -> list[list[int]]:
    keys = [cache.keys(t) for t in texts]
    ids, lens = cache.ids([k for ks in keys for k in ks])
    out, at, k = [], 0, 0
    for ks in keys:
        n = int(lens[k:k + len(ks)].sum())
        out.append(ids[at:at + n].tolist())
        at, k = at + n, k + len(ks)
    return out


def _same_pretokens(tok: Any, cache: PretokenCache, texts: list[str]) -> bool:
    """Each text's keys pre-tokenize, one by one, into exactly the text's own pre-tokens.

    Stricter than equal ids (a small vocabulary may hide a wrong split): it checks the split.
    """
    def pre(text: str) -> list[str]:
        return [p for p, _ in tok.pre_tokenizer.pre_tokenize_str(text)]

    return all([p for k in cache.keys(t) for p in pre(str(k))] == pre(t) for t in texts)


def test_pretoken_cache_equals_whole_encoding(tok_path: Path, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    tok = load_tokenizer_file(tok_path)
    assert is_plain_byte_level(tok)  # the shipped tokenizer qualifies: the cache is exercised
    cache = PretokenCache(tok, enabled=True)
    texts = ([prompt_of(r) + r["output"] for r in seed_records()] + ODD_TEXTS
             + [r[f] for r in EDGE_RECORDS for f in ("instruction", "input", "output")])
    expected = [tok.encode(t, add_special_tokens=False).ids for t in texts]
    assert _cache_ids(cache, texts) == expected
    assert _same_pretokens(tok, cache, [t for t in texts if "</s>" not in t and "<s>" not in t])
    assert _cache_ids(cache, texts[::-1]) == expected[::-1]  # now mostly from the cache
    # past MAX_ENTRIES the cache starts over; constants registered before survive that
    key = cache.register("const", [7, 8, 9])
    monkeypatch.setattr("orchestrate_bloom.data.pretokens.MAX_ENTRIES", 10)
    ids, lens = cache.ids([key, *cache.keys("a b"), key])
    assert ids.tolist() == [7, 8, 9, *tok.encode("a b", add_special_tokens=False).ids, 7, 8, 9]
    assert lens.sum() == len(ids)


def test_pretoken_cache_turns_off_on_distinct_words(tok_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    tok = load_tokenizer_file(tok_path)
    monkeypatch.setattr("orchestrate_bloom.data.pretokens.JUDGE_AFTER", 50)
    cache = PretokenCache(tok, enabled=True)
    common = ["the cat sat on the mat. " * 20] * 3
    assert _cache_ids(cache, common) == [tok.encode(common[0], add_special_tokens=False).ids] * 3
    assert cache.enabled  # repeated words: mostly hits
    def word(n: int) -> str:  # distinct letters-only words (digits would be pre-tokens apart)
        return "".join("abcdefghijklmnopqrstuvwxyz"[n // 26 ** k % 26] for k in range(3))

    distinct = [" ".join(word(40 * i + j) for j in range(40)) for i in range(5)]
    assert _cache_ids(cache, distinct) == [tok.encode(t, add_special_tokens=False).ids
                                           for t in distinct]
    assert not cache.enabled  # 200 new words in 200 keys
    assert cache.keys(distinct[0]) == [distinct[0]]  # from now on whole texts
    assert _cache_ids(cache, distinct) == [tok.encode(t, add_special_tokens=False).ids
                                           for t in distinct]


PIECES = [" ", "  ", "\t", "\n", "\r", "\n ", "a", "Z", "word", " the", "9", "12", "'s", "'t",
          "'re", "'", ".", ",!", "-", "é", "’", "\u00a0", "\u3000", "🙂", "</s>", "<s>",
          "\x00", "x²"]


@settings(max_examples=examples(400), deadline=None)
@given(st.lists(st.lists(st.sampled_from(PIECES), max_size=12).map("".join), max_size=6))
def test_pretoken_cache_equals_whole_encoding_on_generated_text(tok_path: Path,
                                                                texts: list[str]) -> None:
    tok = load_tokenizer_file(tok_path)
    cache = PretokenCache(tok, enabled=True)
    assert _cache_ids(cache, texts) == [tok.encode(t, add_special_tokens=False).ids
                                        for t in texts]
    assert _same_pretokens(tok, cache, [t for t in texts if "<" not in t])


def test_pretoken_cache_refused_when_not_provably_exact(tok_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from tokenizers import AddedToken, Tokenizer, pre_tokenizers

    tok = load_tokenizer_file(tok_path)
    split = Tokenizer.from_str(tok.to_str())  # a Bloom-style Split + ByteLevel(no regex)
    split.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(" ?[^\\s.,!?]+", behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    spaced_token = Tokenizer.from_str(tok.to_str())
    spaced_token.add_special_tokens([AddedToken("a b", special=True)])
    assert not is_plain_byte_level(split) and not is_plain_byte_level(spaced_token)
    records = seed_records()[:8] + EDGE_RECORDS
    assert not record_encoder(split, records)[1].enabled
    # the probe alone catches a tokenizer that passes the configuration check but is not exact
    # (a prefix space before every text: the cache would put one before every pre-token)
    spaced = Tokenizer.from_str(tok.to_str())
    spaced.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    monkeypatch.setattr("orchestrate_bloom.data.prepare.is_plain_byte_level",
                        lambda _tokenizer: True)
    _, cache = record_encoder(spaced, records)
    assert not cache.enabled
    np.testing.assert_array_equal(encode_records(spaced, records, 64, 2, None, cache)[0],
                                  _straightforward(spaced, records, 64, 2))
    assert record_encoder(tok, records)[1].enabled


def test_encode_records_with_cache_equals_straightforward(tok_path: Path) -> None:
    tok = load_tokenizer_file(tok_path)
    eos = eos_id_of(tok)
    records = seed_records() + EDGE_RECORDS + [
        {"instruction": t, "input": t[::-1], "output": t} for t in ODD_TEXTS]
    tids, cache = record_encoder(tok, records[:64])
    assert tids is not None and cache.enabled
    for seq_length in (512, 40, 1):
        got = encode_records(tok, records, seq_length, eos, tids, cache)
        plain = encode_records(tok, records, seq_length, eos)
        np.testing.assert_array_equal(got[0], _straightforward(tok, records, seq_length, eos))
        np.testing.assert_array_equal(got[1], plain[1])
        assert got[2:] == plain[2:]
