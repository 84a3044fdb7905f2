"""Token ids of texts through a cache of pre-token ids, exact for plain byte-level BPE tokenizers.

A byte-level tokenizer (GPT-2 style regex, no normalizer) splits a text into pre-tokens and
runs its model on each pre-token alone, so a text's ids are the concatenation of its
pre-tokens' ids. `PretokenCache` splits texts itself (one C regex call per text), looks each
pre-token up in a dict and asks the tokenizer only for pre-tokens it has not seen, then joins
the ids with numpy. Text is a list of keys; each key is a pre-token, a constant registered with
`register`, or the key of a text handed whole to the tokenizer (`whole`).

Exactness: the split here is the tokenizer's own only for text whose characters are printable
ASCII, tab, newline or carriage return (no Unicode-table differences between regex engines)
and that holds no added token (those are cut out before pre-tokenizing); any other text is
encoded whole by the tokenizer. `is_plain_byte_level` checks the tokenizer's configuration;
`prepare` also compares a probe of records both ways before trusting the cache.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Sequence
from itertools import chain
from typing import Any

import numpy as np

# the ByteLevel pre-tokenizer's GPT-2 regex restricted to ASCII (\p{L} -> [A-Za-z],
# \p{N} -> [0-9]); with re.ASCII, \s is [ \t\n\r\f\v] and only " \t\n\r" can occur (see _unsafe)
_PRETOKEN = re.compile(
    r"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+", re.ASCII)
_CUT = re.compile(r" [A-Za-z0-9]")
_ALNUM = frozenset(string.ascii_letters + string.digits)
MAX_ENTRIES = 1 << 21  # forget everything past this many cached pre-tokens (bounded memory)
# Looking up a pre-token the cache has not seen costs more than the tokenizer saves on it: past
# JUDGE_AFTER keys, a cache that missed on more than MAX_MISS_RATE of them turns itself off.
# With prepare-data's batches the first judgement comes after one batch (~450k keys): the
# generated 52,002-record file misses on ~2%, random words on ~49%; English text by Heaps' law
# on roughly 5-10% at that point (an estimate, not measured here: no real Alpaca file at hand).
JUDGE_AFTER = 150_000
MAX_MISS_RATE = 0.15


def is_plain_byte_level(tokenizer: Any) -> bool:
    """Whether `tokenizer` pre-tokenizes with the plain ByteLevel regex and nothing else.

    True only for: no normalizer, no truncation or padding, a single ByteLevel pre-tokenizer
    with its regex on and no prefix space, no BPE dropout, and added tokens that hold no
    whitespace and strip nothing (so none can span a cut of `PretokenCache.keys`).
    """
    try:
        cfg = json.loads(tokenizer.to_str())
    except Exception:  # noqa: BLE001 - unknown tokenizer object: take the straightforward path
        return False
    pre = cfg.get("pre_tokenizer") or {}
    model = cfg.get("model") or {}
    for added in cfg.get("added_tokens") or []:
        content = str(added.get("content", ""))
        if (added.get("lstrip") or added.get("rstrip") or not content
                or any(ch.isspace() for ch in content)):
            return False
    return not (cfg.get("normalizer") is not None or cfg.get("truncation") is not None
                or cfg.get("padding") is not None or pre.get("type") != "ByteLevel"
                or not pre.get("use_regex", True) or pre.get("add_prefix_space", False)
                or model.get("dropout") not in (None, 0, 0.0))


Key = str | tuple[str]  # a text (encoded alone by the tokenizer) or a constant's (name,)


def _cut_after(text: str, pos: int) -> int:
    """The first cut (see `PretokenCache.keys`) at or after `pos`, else the end of `text`."""
    m = _CUT.search(text, pos)
    return m.start() if m else len(text)


def _cut_before(text: str, lo: int, pos: int) -> int:
    """The last cut in text[lo:pos], else `lo`."""
    c = text.rfind(" ", lo, pos)
    while c != -1 and text[c + 1] not in _ALNUM:
        c = text.rfind(" ", lo, c)
    return lo if c == -1 else c


class _Codes(dict[Key, int]):
    """Key -> code; an unknown key gets the next code and is queued for encoding."""

    def __init__(self) -> None:
        super().__init__()
        self.new: list[Key] = []

    def __missing__(self, key: Key) -> int:
        code = self[key] = len(self)
        self.new.append(key)
        return code


class PretokenCache:
    """Turn texts into keys, then many keys at once into one flat id array.

    A key is a text whose ids are those of encoding it alone (a pre-token, or a piece of text
    the tokenizer gets whole) or a registered constant. Keys are cached: the tokenizer sees each
    distinct text once (per `MAX_ENTRIES`). On text whose words rarely repeat the cache turns
    itself off (see `MAX_MISS_RATE`); the ids are the same either way.

    Args:
        tokenizer: a `tokenizers.Tokenizer`.
        enabled: split texts into pre-tokens (only when `is_plain_byte_level(tokenizer)` and a
            probe agreed); False makes every text one key (encoded whole).
    """

    def __init__(self, tokenizer: Any, enabled: bool) -> None:
        self._tok = tokenizer
        self.enabled = enabled
        added = [t.content for t in tokenizer.get_added_tokens_decoder().values() if t.content]
        self._unsafe = re.compile("|".join([r"[^\t\n\r\x20-\x7e]", *map(re.escape, added)]))
        self._constants: dict[Key, list[int]] = {}
        self.seen = self.missed = 0  # keys looked up / not found, while enabled
        self._reset()

    def _reset(self) -> None:
        self._codes = _Codes()
        self._ids = np.empty(0, dtype=np.int32)  # every code's ids, back to back
        self._starts = np.empty(0, dtype=np.int64)  # code -> offset into _ids
        self._lens = np.empty(0, dtype=np.int64)  # code -> number of ids
        for key in self._constants:
            self._codes[key]  # noqa: B018 - assigns the key a code
        self._flush()

    def register(self, name: str, ids: list[int]) -> Key:
        """A key standing for the fixed ids `ids` (e.g. a template's constant text)."""
        key = (name,)
        if key not in self._constants:
            self._constants[key] = list(ids)
            self._codes[key]  # noqa: B018 - assigns the key a code
            self._flush()
        return key

    def keys(self, text: str) -> list[Key]:
        """The keys whose ids, joined, are the ids of `text` (no special tokens)."""
        if not self.enabled:
            return [text]
        if not self._unsafe.search(text):
            return _PRETOKEN.findall(text)  # type: ignore[no-any-return]
        # Other text: only the stretches around its odd characters (or added tokens) go to the
        # tokenizer whole. A stretch starts and ends at a cut: a place before " x" (x an ASCII
        # letter or digit). A pre-token starts there in any reading of the regex, and no
        # pre-token's extent depends on what follows a cut, so each stretch (and each plain
        # text between stretches) encodes alone as in place.
        keys: list[Key] = []
        done = 0  # text[:done] is covered by keys
        lo = hi = 0  # the open stretch text[lo:hi]
        for m in self._unsafe.finditer(text):
            if m.start() < hi:  # inside the open stretch: extend it
                hi = _cut_after(text, m.end())
                continue
            if hi:
                keys.append(text[lo:hi])
                done = hi
            lo = _cut_before(text, done, m.start())
            keys += _PRETOKEN.findall(text[done:lo])
            hi = _cut_after(text, m.end())
        keys.append(text[lo:hi])
        keys += _PRETOKEN.findall(text[hi:])
        return keys

    def ids(self, keys: Sequence[Key]) -> tuple[np.ndarray, np.ndarray]:
        """The joined ids of `keys` (int32) and each key's number of ids (int64)."""
        if len(self._codes) > MAX_ENTRIES or not self.enabled:
            self._reset()  # off: whole texts rarely repeat, keep only this call's ids
        codes = np.fromiter(map(self._codes.__getitem__, keys), dtype=np.int64, count=len(keys))
        if self.enabled:
            self.seen, self.missed = self.seen + len(keys), self.missed + len(self._codes.new)
            if self.seen >= JUDGE_AFTER and self.missed > MAX_MISS_RATE * self.seen:
                self.enabled = False  # mostly distinct words: the tokenizer alone is faster
        self._flush()
        lens = self._lens[codes]
        ends = np.cumsum(lens)
        gather = np.arange(int(ends[-1]) if len(ends) else 0, dtype=np.int64)
        gather += np.repeat(self._starts[codes] - (ends - lens), lens)
        return self._ids[gather], lens

    def _flush(self) -> None:
        """Encode the keys that got codes since the last flush and append their ids."""
        new, self._codes.new = self._codes.new, []
        if not new:
            return
        encode = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)
        texts = [k for k in new if isinstance(k, str)]
        encoded = iter([e.ids for e in encode(texts, add_special_tokens=False)] if texts else [])
        rows = [next(encoded) if isinstance(k, str) else self._constants[k] for k in new]
        lens = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        self._starts = np.concatenate([self._starts, len(self._ids) + np.cumsum(lens) - lens])
        self._lens = np.concatenate([self._lens, lens])
        self._ids = np.concatenate([self._ids, np.fromiter(
            chain.from_iterable(rows), dtype=np.int32, count=int(lens.sum()))])
