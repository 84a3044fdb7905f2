"""Shell lines for a node's login shell: quoted environment prefix and a coreutils timeout.

    env_prefix({"A": "x y"}) + "cmd"   # "export A='x y'; cmd"
    timeout_wrap("sleep 9", 5)         # killed on the node after 5 s (TERM, then KILL)
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping

TIMEOUT_GRACE = 5.0  # seconds between `timeout`'s TERM and KILL on the node, and client slack
TIMEOUT_EXIT = 124  # coreutils `timeout` exit code when the command timed out


def env_prefix(env: Mapping[str, str] | None) -> str:
    """`export K='v' ...; ` for the shell, every value quoted; names must be identifiers."""
    if not env:
        return ""
    parts = []
    for k, v in env.items():
        if not k.isidentifier() or not k.isascii():
            raise ValueError(f"bad environment variable name {k!r}")
        parts.append(f"{k}={shlex.quote(str(v))}")
    return "export " + " ".join(parts) + "; "


def timeout_wrap(line: str, timeout: float) -> str:
    """Run `line` under coreutils `timeout` with the login shell; TERM, then KILL after grace."""
    if timeout <= 0:
        raise ValueError(f"timeout must be > 0, got {timeout}")
    return (f"timeout -k {TIMEOUT_GRACE:g} {timeout:g} \"${{SHELL:-/bin/sh}}\" -c "
            f"{shlex.quote(line)}")
