"""Train the small byte-level BPE tokenizer shipped as model/assets/tokenizer.json.

    python -m orchestrate_bloom.data.train_tokenizer        # rebuild the shipped file
    python -m orchestrate_bloom.data.train_tokenizer --data alpaca.json --vocab-size 1000 \
        --out tok.json

The text is every record of an Alpaca-format JSON list as it is trained: its Alpaca prompt
(prompts.prompt_of, template included) followed by its output (default: the 175 Alpaca seed
tasks, CC BY-NC 4.0, which we may ship). Training on the template makes it cheap: 30 tokens for
the no-input variant instead of 65 when only the fields were seen, which left no room for a
response in the tiny preset's rows. Special tokens take Bloom's ids:
<unk> 0, <s> 1, </s> 2, <pad> 3, so the real Bloom tokenizer.json is a drop-in replacement.
Training is deterministic: the same data gives the same file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ..fileio import atomic_target
from ..prompts import prompt_of

ASSETS = Path(__file__).resolve().parents[1] / "assets"  # orchestrate_bloom/assets
DEFAULT_DATA = ASSETS / "alpaca_seed_tasks.json"
DEFAULT_OUT = ASSETS / "tokenizer.json"
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]  # ids 0, 1, 2, 3 as in Bloom


def alpaca_texts(path: Path) -> list[str]:
    """Each record of an Alpaca JSON list as trained (prompt + output), in file order."""
    records = json.loads(path.read_text())
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of Alpaca records")
    texts = []
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise ValueError(f"{path}: record {i} is not an object")
        fields = (record.get("instruction"), record.get("input", ""), record.get("output", ""))
        if not all(isinstance(f, str) for f in fields):
            raise ValueError(f"{path}: record {i}: instruction (required), input and output must "
                             "be strings")
        texts.append(prompt_of(record) + record.get("output", ""))
    return texts


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE (GPT-2/Bloom style: no normalizer, no added prefix space)."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        if tokenizer.token_to_id(token) != expected_id:
            raise RuntimeError(f"{token} got id {tokenizer.token_to_id(token)}, not {expected_id}")
    return tokenizer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrate_bloom.data.train_tokenizer",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Alpaca-format JSON.")
    parser.add_argument("--vocab-size", type=int, default=1000, help="Vocabulary size.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="tokenizer.json to write.")
    args = parser.parse_args(argv)
    try:
        tokenizer = train_tokenizer(alpaca_texts(args.data), args.vocab_size)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    with atomic_target(args.out, mode=0o644, create=True) as tmp:
        tokenizer.save(str(tmp), pretty=True)
    print(f"wrote {args.out} (vocab {tokenizer.get_vocab_size()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
