"""Reading and showing what nodes send: scrubbed text, [0-9] numbers, bounded lines and JSON.

    scrub("\x1b]52;c;aGk=\x07ok")   # "\ufffd]52;c;aGk=\ufffdok": no terminal escape survives
    to_int("12") == 12; to_int("²") is None; to_int("-3", signed=True) == -3
    lines(text)                     # the lines of at most MAX_LINE chars (parsers stay linear)
    loads_json(text)                # json.loads refusing nesting deeper than 32 (no RecursionError)
    shown(text)                     # one line of a node's text for an error: bounded, scrubbed

Node output printed to a terminal goes through `scrub` (control characters other than newline
and tab replaced by U+FFFD) and is never given to rich as markup (printers use
`rich.text.Text` or click.echo). docs/security.md lists the hostile cases and their tests.
"""

from __future__ import annotations

import json
import re
from typing import Any

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def scrub(text: str) -> str:
    """`text` with control characters (C0 but newline and tab, DEL, C1) replaced by U+FFFD."""
    return _CONTROL.sub("\ufffd", text)


_INT = re.compile(r"-?[0-9]{1,19}")
MAX_LINE = 4096  # characters of one node output line a parser looks at


def to_int(text: str, *, signed: bool = False) -> int | None:
    """`text` as an int when it is ASCII digits (`[0-9]`, at most 19; a leading '-' only if
    `signed`), else None: "²" or "١٢" are not numbers here (str.isdigit says they are)."""
    m = _INT.fullmatch(text)
    if m is None or (text.startswith("-") and not signed):
        return None
    return int(text)


def lines(text: str, limit: int = MAX_LINE) -> list[str]:
    """The lines of node output a parser should look at: those of at most `limit` chars (a
    longer line is never a valid record, and skipping it keeps every parser linear)."""
    return [line for line in text.splitlines() if len(line) <= limit]


MAX_JSON_DEPTH = 32
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def loads_json(text: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """json.loads for a node's JSON, refusing nesting deeper than `max_depth` first (in one
    linear pass), so a crafted `[[[[...` raises JSONDecodeError, never RecursionError."""
    depth = 0
    for m in _JSON_BRACKET.finditer(_JSON_STRING.sub('""', text)):
        depth += 1 if m[0] in "[{" else -1
        if depth > max_depth:
            raise json.JSONDecodeError(f"nested deeper than {max_depth} levels", text, 0)
    return json.loads(text)


MAX_SHOWN = 300  # characters of a node's text put in one error line


def shown(text: str, limit: int = MAX_SHOWN) -> str:
    """A node's text as one error line shows it: its first line, at most `limit` characters
    ('...' marks a cut), scrubbed."""
    first = (text.strip().splitlines() or [""])[0]
    return scrub(first if len(first) <= limit else first[:limit] + "...")
