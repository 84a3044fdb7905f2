"""Helpers for the data and trainer tests: a throwaway tokenizer and small Alpaca files."""

from __future__ import annotations

import json
from pathlib import Path

SEED_TASKS = Path(__file__).resolve().parents[2] / "model" / "assets" / "alpaca_seed_tasks.json"
REPO = Path(__file__).resolve().parent.parent.parent
SHIPPED_TOKENIZER = REPO / "model" / "assets" / "tokenizer.json"
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]  # ids 0..3, Bloom's convention


def seed_records() -> list[dict[str, str]]:
    """The seed tasks if present, else a small generated set of the same shape."""
    if SEED_TASKS.is_file():
        return json.loads(SEED_TASKS.read_text())
    return [{"instruction": f"Add {i} and {i + 1}.", "input": "" if i % 2 else f"{i}",
             "output": f"The sum is {2 * i + 1}."} for i in range(175)]


def tokenizer_file(directory: Path) -> Path:
    """The shipped tokenizer when it exists, else a byte-level BPE (vocab 1000) trained here."""
    if SHIPPED_TOKENIZER.is_file():
        return SHIPPED_TOKENIZER
    from orchestrate_bloom.prompts import prompt_of
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    texts = [prompt_of(r) + r["output"] for r in seed_records()]
    tok.train_from_iterator(texts, trainer)
    path = directory / "tokenizer.json"
    tok.save(str(path))
    return path
