"""Showing untrusted text (node output, file contents, user values): scrubbed and bounded.

    scrub("\x1b]52;c;aGk=\x07ok")     # "\ufffd]52;c;aGk=\ufffdok": no terminal escape survives
    preview("x" * 10_000)             # "'xxxx…' (10000 chars)": at most PREVIEW chars shown

Every message that quotes a value it did not choose goes through `preview` (bounded, repr'd,
so newlines and escapes are visible, never interpreted); node output printed to a terminal
goes through `scrub` (control characters other than newline and tab replaced by U+FFFD).
Neither is ever given to rich as markup: printers use `rich.text.Text` or plain click.echo.
"""

from __future__ import annotations

import json
import re
from typing import Any

PREVIEW = 80  # characters of a bad value shown in an error message
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def scrub(text: str) -> str:
    """`text` with control characters (C0 but newline and tab, DEL, C1) replaced by U+FFFD."""
    return _CONTROL.sub("\ufffd", text)


def preview(value: object, limit: int = PREVIEW) -> str:
    """A bounded repr of `value` for an error message: `'abc'`, or `'abc…' (N chars)`."""
    text = value if isinstance(value, str) else _short_repr(value, limit)
    if len(text) <= limit:
        return repr(text) if isinstance(value, str) else text
    return f"{text[:limit]!r}… ({len(text)} chars)"


def _short_repr(value: object, limit: int) -> str:
    """repr(value), computed only for small containers (a YAML alias bomb is never walked)."""
    if isinstance(value, (list, tuple, dict, set)) and len(value) > limit:
        return f"<{type(value).__name__} of {len(value)} items>"
    if isinstance(value, (list, tuple, dict)) and _deep(value, 4):
        return f"<nested {type(value).__name__}>"
    return repr(value)


def _deep(value: object, depth: int) -> bool:
    """True if `value` nests deeper than `depth` or holds more than 64 items in total."""
    budget = [64]

    def walk(v: object, d: int) -> bool:
        if isinstance(v, dict):
            v = list(v.values())
        if not isinstance(v, (list, tuple)):
            return False
        budget[0] -= len(v)
        if d == 0 or budget[0] < 0:
            return True
        return any(walk(x, d - 1) for x in v)

    return walk(value, depth)


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
