"""THE content address of a prepared dataset: what makes two preparations give the same bytes.

    key = prepared_key(Path("alpaca.json"), seq_length=2048, tokenizer=None)   # 64 hex chars

The key is a sha256 over the input file's sha256, the tokenizer file's sha256 (the shipped
one when None), seq_length, the extra preparation options, and the sha256 of the preparation
code itself (PREPARE_CODE: the modules whose source decides the bytes written, prompt
templates included). Any change to one of them gives another key, so a cache keyed by it never
serves stale data. Standard library only: the control plane computes it without importing
numpy or MindSpore (`orchestrate up` reuses a prepared folder on a hit, see
orchestrator/job/dataset.py).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from functools import cache
from pathlib import Path

from ..fileio import sha256_file

PACKAGE = Path(__file__).resolve().parents[1]  # the orchestrate_bloom folder
DEFAULT_TOKENIZER = PACKAGE / "assets" / "tokenizer.json"
PREPARE_CODE = ("data/prepare.py", "data/pretokens.py", "data/key.py", "prompts.py",
                "data/template_ids.py")
"""Modules of the package (paths from its folder) whose source decides the prepared bytes
(templates: prompts.py)."""
KEY_FORMAT = 1  # bump when the meaning of the fields below changes


@cache
def code_version() -> str:
    """sha256 over the source of PREPARE_CODE (cached per process)."""
    h = hashlib.sha256()
    for name in PREPARE_CODE:
        h.update(name.encode() + b"\0")
        h.update((PACKAGE / name).read_bytes())
    return h.hexdigest()


def prepared_key(src: Path, seq_length: int, tokenizer: Path | None = None,
                 options: Mapping[str, object] | None = None) -> str:
    """The content address of preparing `src` with these settings (hex sha256).

    Args:
        src: the Alpaca JSON file.
        seq_length: tokens per sample (the model's).
        tokenizer: tokenizers JSON file; None means the shipped one.
        options: further preparation options that change the output (e.g. {"mask_prompt": 1}).
    """
    fields = {
        "format": KEY_FORMAT,
        "input": sha256_file(src),
        "tokenizer": sha256_file(tokenizer or DEFAULT_TOKENIZER),
        "seq_length": int(seq_length),
        "options": dict(sorted((options or {}).items())),
        "code": code_version(),
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
