"""Field-wise encoding of the Alpaca prompt template: the shortcut `data.encode_records` takes.

    tids = template_ids(tokenizer, probe_records)   # None when the shortcut is not exact
    texts, plan = _prompt_plan(records, tids)       # what to encode
    prompts = _assemble(plan, encoded_texts, tids)  # each record's prompt ids

Split out of prepare.py; the templates themselves live in prompts.py.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..prompts import PROMPT_NO_INPUT, PROMPT_WITH_INPUT, prompt_of
from .pretokens import is_plain_byte_level


@dataclass(frozen=True)
class TemplateIds:
    """Token ids of the constant text around the fields of the two prompt templates.

    With a tokenizer whose pre-tokenizer always splits at the boundary between a template's
    constant text and a field (see `template_ids`), encoding the fields alone and joining them
    with these ids gives exactly the ids of encoding the whole prompt, at ~70% of the work.
    """

    head_input: list[int]  # PROMPT_WITH_INPUT before {instruction}
    mid_input: list[int]  # between {instruction} and {input}
    tail_input: list[int]  # after {input}
    head_plain: list[int]  # PROMPT_NO_INPUT before {instruction}
    tail_plain: list[int]  # after {instruction}


def _literals(template: str) -> list[str]:
    """The constant pieces of a `str.format` template around its fields, in order."""
    return [literal for literal, _, _, _ in string.Formatter().parse(template)] + (
        [""] if template.endswith("}") else [])


def _splits_at_field_edges(tokenizer: Any) -> bool:
    """Whether this tokenizer provably pre-tokenizes a template the same in pieces as whole.

    True only for the configuration we can reason about (`pretokens.is_plain_byte_level`: no
    normalizer, no truncation or padding, a single ByteLevel pre-tokenizer with the GPT-2 regex
    and no prefix space, no BPE dropout, added tokens without whitespace that strip nothing)
    and template pieces that end/start as described next. That regex never
    joins whitespace with a following or preceding non-whitespace character except a plain
    space before a word, and has no look-behind, so a boundary between a template piece ending
    in one non-space whitespace character (or starting with whitespace) and a field that starts
    and ends with a non-whitespace character is a pre-token boundary in the whole prompt too.
    """
    if not is_plain_byte_level(tokenizer):
        return False
    heads = [_literals(PROMPT_WITH_INPUT)[:-1], _literals(PROMPT_NO_INPUT)[:-1]]
    tails = [_literals(PROMPT_WITH_INPUT)[1:], _literals(PROMPT_NO_INPUT)[1:]]
    for piece in (p for ps in heads for p in ps):  # pieces followed by a field
        if len(piece) < 2 or piece[-1] == " " or not piece[-1].isspace() or piece[-2].isspace():
            return False
    return all(piece[:1].isspace() for ps in tails for piece in ps)


def _plain_edges(field: str) -> bool:
    """A field that starts and ends with a printable, non-whitespace character."""
    return bool(field) and all(ch.isprintable() and not ch.isspace()
                               for ch in (field[0], field[-1]))


def template_ids(tokenizer: Any,
                 probe: Sequence[dict[str, str]] = ()) -> TemplateIds | None:
    """The template's constant ids if field-wise encoding is exact for `tokenizer`, else None.

    `probe` records are also encoded both ways and must agree (a cheap guard on top of the
    configuration check in `_splits_at_field_edges`).
    """
    if not _splits_at_field_edges(tokenizer):
        return None
    pieces = _literals(PROMPT_WITH_INPUT) + _literals(PROMPT_NO_INPUT)
    ids = [e.ids for e in tokenizer.encode_batch(pieces, add_special_tokens=False)]
    tids = TemplateIds(head_input=ids[0], mid_input=ids[1], tail_input=ids[2],
                       head_plain=ids[3], tail_plain=ids[4])
    if probe:
        whole = tokenizer.encode_batch([prompt_of(r) for r in probe], add_special_tokens=False)
        texts, plan = _prompt_plan(probe, tids)
        pieced = _assemble(plan, [e.ids for e in tokenizer.encode_batch(
            texts, add_special_tokens=False)], tids)
        if [e.ids for e in whole] != pieced:
            return None
    return tids


def _prompt_plan(records: Sequence[dict[str, str]], tids: TemplateIds | None
                 ) -> tuple[list[str], list[tuple[int, int]]]:
    """The texts to encode for the prompts, and per record (kind, index of its first text).

    Kind 1: instruction and input encoded alone; 2: instruction alone (no input); 0: the whole
    prompt (no `tids`, or a field whose edges could join with the template text).
    """
    texts: list[str] = []
    plan: list[tuple[int, int]] = []
    for r in records:
        instruction, inp = r["instruction"], r.get("input", "")
        plan.append((0, len(texts)))
        if tids is None or not _plain_edges(instruction) or (inp and not _plain_edges(inp)):
            texts.append(prompt_of(r))
        elif inp:
            plan[-1] = (1, len(texts))
            texts += (instruction, inp)
        else:
            plan[-1] = (2, len(texts))
            texts.append(instruction)
    return texts, plan


def _assemble(plan: Sequence[tuple[int, int]], enc: Sequence[list[int]],
              tids: TemplateIds | None) -> list[list[int]]:
    """Each record's prompt ids from the encoded texts of `_prompt_plan`."""
    if tids is None:
        return list(enc)
    out: list[list[int]] = []
    for kind, i in plan:
        if kind == 1:
            out.append(tids.head_input + enc[i] + tids.mid_input + enc[i + 1] + tids.tail_input)
        elif kind == 2:
            out.append(tids.head_plain + enc[i] + tids.tail_plain)
        else:
            out.append(enc[i])
    return out
