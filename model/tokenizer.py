"""Tokenizer: a `tokenizers` tokenizer.json with Bloom's special ids (unk 0, bos 1, eos 2, pad 3).

    from .tokenizer import load_tokenizer
    tok = load_tokenizer()                    # the shipped small BPE (model/assets/tokenizer.json)
    tok = load_tokenizer("bloom/tokenizer.json")   # the real Bloom tokenizer works as-is
    ids = tok.encode("Hello world")           # list[int]; no BOS/EOS added
    text = tok.decode(ids)                    # special tokens dropped
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

from .data.key import DEFAULT_TOKENIZER

SPECIAL_IDS = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}


class TokenizerError(ValueError):
    """The tokenizer file is missing, unreadable or has other special-token ids."""


class Tokenizer:
    """Thin wrapper: plain-int encode/decode and Bloom's special ids."""

    unk_id = 0
    bos_id = 1
    eos_id = 2
    pad_id = 3

    def __init__(self, backend: HFTokenizer, path: Path) -> None:
        self.backend = backend  # the `tokenizers.Tokenizer`, for batch/offset features
        self.path = path

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (special tokens written in the text, e.g. "</s>", are kept)."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """encode() for many texts at once (parallel inside `tokenizers`)."""
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`."""
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)


def load_tokenizer(path: str | Path | None = None) -> Tokenizer:
    """Load a tokenizer.json (default: the shipped one) and check Bloom's special ids.

    Raises:
        TokenizerError: missing/unreadable file, or a special token with another id.
    """
    file = Path(path) if path else DEFAULT_TOKENIZER
    if not file.is_file():
        raise TokenizerError(f"{file}: tokenizer file not found")
    try:
        backend = HFTokenizer.from_file(str(file))
    except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception on bad files
        raise TokenizerError(f"{file}: not a tokenizer.json: {e}") from e
    for token, wanted in SPECIAL_IDS.items():
        got = backend.token_to_id(token)
        if got != wanted:
            raise TokenizerError(f"{file}: special token {token} has id {got}, expected {wanted}")
    return Tokenizer(backend, file)
