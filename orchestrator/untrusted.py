"""Showing untrusted text (node output, file contents, user values): scrubbed and bounded.

    scrub("\x1b]52;c;aGk=\x07ok")     # "\ufffd]52;c;aGk=\ufffdok": no terminal escape survives
    preview("x" * 10_000)             # "'xxxx…' (10000 chars)": at most PREVIEW chars shown

Every message that quotes a value it did not choose goes through `preview` (bounded, repr'd,
so newlines and escapes are visible, never interpreted); node output printed to a terminal
goes through `scrub` (control characters other than newline and tab replaced by U+FFFD).
Neither is ever given to rich as markup: printers use `rich.text.Text` or plain click.echo.
"""

from __future__ import annotations

import re

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
