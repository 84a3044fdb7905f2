"""The shipped tokenizer, its training script, and (if available) the real Bloom tokenizer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from orchestrate_bloom.data.train_tokenizer import DEFAULT_DATA, alpaca_texts, train_tokenizer
from orchestrate_bloom.tokenizer import DEFAULT_TOKENIZER, TokenizerError, load_tokenizer


def test_shipped_tokenizer_has_bloom_special_ids_and_fits_tiny() -> None:
    tok = load_tokenizer()
    assert tok.path == DEFAULT_TOKENIZER
    assert tok.vocab_size <= 1000  # the tiny preset's vocab_size
    backend = tok.backend
    assert [backend.token_to_id(t) for t in ("<unk>", "<s>", "</s>", "<pad>")] == [0, 1, 2, 3]
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, 3)


def test_encode_decode_round_trip_and_special_tokens_in_text() -> None:
    tok = load_tokenizer()
    text = "Give three tips for staying healthy. Ünïcödé ✓ 123"
    ids = tok.encode(text)
    assert tok.decode(ids) == text  # byte-level BPE: lossless, even for unseen characters
    with_eos = tok.encode("Hello</s>")
    assert with_eos[-1] == 2 and 2 not in tok.encode("Hello")
    assert tok.decode(with_eos) == "Hello"
    assert tok.decode(with_eos, skip_special_tokens=False) == "Hello</s>"
    assert tok.encode_batch(["Hello", text]) == [tok.encode("Hello"), ids]


def test_shipped_file_is_what_the_script_trains() -> None:
    if not DEFAULT_DATA.is_file():
        pytest.skip(f"{DEFAULT_DATA} not present")
    trained = json.loads(train_tokenizer(alpaca_texts(DEFAULT_DATA), 1000).to_str())
    shipped = json.loads(DEFAULT_TOKENIZER.read_text())
    assert trained["model"]["vocab"] == shipped["model"]["vocab"]
    assert trained["model"]["merges"] == shipped["model"]["merges"]


def test_missing_and_wrong_tokenizer_files(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="tokenizer file not found"):
        load_tokenizer(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(TokenizerError, match="not a tokenizer.json"):
        load_tokenizer(bad)
    texts = ["hello world"] * 10
    other = train_tokenizer(texts, 300)
    other.add_special_tokens(["<mask>"])
    data = json.loads(other.to_str())
    for token in data["added_tokens"]:  # swap the ids of <s> and </s>
        token["id"] = {1: 2, 2: 1}.get(token["id"], token["id"])
    data["model"]["vocab"]["<s>"], data["model"]["vocab"]["</s>"] = 2, 1
    swapped = tmp_path / "swapped.json"
    swapped.write_text(json.dumps(data))
    with pytest.raises(TokenizerError, match=r"special token <s> has id 2, expected 1"):
        load_tokenizer(swapped)


@pytest.mark.skipif(not os.environ.get("BLOOM_TOKENIZER"),
                    reason="BLOOM_TOKENIZER not set (path to the real Bloom tokenizer.json)")
def test_real_bloom_tokenizer_ids() -> None:
    tok = load_tokenizer(os.environ["BLOOM_TOKENIZER"])
    assert tok.encode("Hello world") == [59414, 8876]
    assert tok.encode("The quick brown fox</s>") == [2175, 23714, 73173, 144252, 2]
