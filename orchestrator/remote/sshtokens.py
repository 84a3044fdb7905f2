"""ssh_config %-tokens, expanded as ssh_config(5) "TOKENS" describes.

    expand_tokens("~/.ssh/%n-%p.key", {"h": "10.0.0.1", "n": "th0", "p": "22", "r": "root"})

`ssh -G` prints IdentityFile, ProxyCommand and similar values with their tokens unexpanded
(OpenSSH expands them only when it connects); our transports expand them with the same rules.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import re
import socket
from collections.abc import Mapping

_TOKEN = re.compile(r"%(.)|%$")


def expand_tokens(text: str, ctx: Mapping[str, str]) -> str:
    """Replace %h %n %p %r (from `ctx`), %u %d %i %l %L %C %k and %%.

    Raises:
        ValueError: an unknown token (ssh refuses it too).
    """
    values = dict(_local_tokens())
    values.update(ctx)
    if "C" not in values and {"h", "p", "r"} <= values.keys():
        joined = values["l"] + values["h"] + values["p"] + values["r"]
        values["C"] = hashlib.sha1(joined.encode()).hexdigest()
    values["%"] = "%"

    def one(m: re.Match[str]) -> str:
        key = m.group(1)
        if key is None or key not in values:
            raise ValueError(f"unknown token %{key or ''}")
        return values[key]

    return _TOKEN.sub(one, text)


def _local_tokens() -> dict[str, str]:
    full = socket.gethostname()
    return {"u": getpass.getuser(), "d": os.path.expanduser("~"), "i": str(os.getuid()),
            "l": full, "L": full.split(".")[0]}
