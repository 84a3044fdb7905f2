"""DeepSpeed, Open MPI and MPICH hostfiles as inventories (`-i hostfile` anywhere `-i` is taken).

    worker-1 slots=4              # DeepSpeed: every line `host slots=N`
    worker-2 slots=4 max_slots=8  # Open MPI: `host [slots=N] [max_slots=M]` (max-slots too)
    worker-3:4                    # MPICH: `host[:N]`
    worker-4                      # Open MPI / MPICH: a bare host has 1 slot

The format is detected by content (`looks_like_hostfile`); `load_inventory` hands such a file
here. Each host becomes a node named after it with `slots` devices 0..N-1 (CPU: N ranks); the
host may be an ssh_config alias (User, Port, IdentityFile, ProxyJump come from ssh_config, as
`ssh host` would use them). Everything else takes the inventory defaults (workdir ~/orchestrate,
python3, ~/.ssh/known_hosts, strict host keys).

Errors are as strict as DeepSpeed's, one line naming `FILE:LINE`: a duplicate host, a line that
is not an entry, a bad slot count, no entry at all. Where DeepSpeed differs: a file of bare
hosts only is an MPICH hostfile (DeepSpeed refuses it); a bare host next to DeepSpeed's
`slots=` lines is refused as DeepSpeed does (unless `max_slots` marks the file as Open MPI).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import yaml

from orchestrator.config.inventory import MAX_DEVICE_ID, Inventory, Node, is_valid_host
from orchestrator.errors import InventoryError

_KEYS = {"slots", "max_slots", "max-slots"}
_MPICH = re.compile(r"^([^\s:]+):(\S*)\Z")
_ENTRY_HINT = ("expected `host slots=N` (DeepSpeed), `host slots=N max_slots=M` (Open MPI) or "
               "`host:N` (MPICH)")


def looks_like_hostfile(text: str) -> bool:
    """True when `text` is not a YAML mapping (an inventory) but lines of host entries."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        doc = ""
    if isinstance(doc, (dict, list)):
        return False
    first = next(iter(_entries(text)), None)
    if first is None:
        return False  # empty: the inventory's own "got nothing" error
    line = first[1]
    return not (line.startswith(("-", "{", "[")) or line.endswith(":") or ": " in line)


def parse_hostfile(text: str, path: Path | str = "<hostfile>", digest: str = "") -> Inventory:
    """Hostfile text -> Inventory; `path` is used in messages (`FILE:LINE: ...`)."""
    src = str(path)
    entries = [(n, _parse_line(src, n, line)) for n, line in _entries(text)]
    if not entries:
        raise InventoryError(src, "", f"no host entry: {_ENTRY_HINT}, one host per line")
    open_mpi = any(e[1][2] for e in entries)
    deepspeed = any(e[1][1] == "slots" for e in entries)
    seen: dict[str, int] = {}
    nodes = []
    for lineno, (host, style, _max, slots) in entries:
        if style == "bare" and deepspeed and not open_mpi:
            raise InventoryError(f"{src}:{lineno}", "", f"{host!r} has no slots=N (a "
                                 "DeepSpeed hostfile gives every host as `host slots=N`)")
        if host in seen:
            raise InventoryError(f"{src}:{lineno}", "",
                                 f"duplicate host {host!r} (first on line {seen[host]})")
        seen[host] = lineno
        nodes.append(Node(name=host, host=host, devices=tuple(range(slots))))
    return Inventory(path=Path(src), nodes=tuple(nodes),
                     digest=digest or hashlib.sha256(text.encode()).hexdigest())


def _entries(text: str) -> list[tuple[int, str]]:
    """(line number, line without comment) of every non-blank line."""
    out = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if line:
            out.append((n, line))
    return out


def _parse_line(src: str, lineno: int, line: str) -> tuple[str, str, bool, int]:
    """One entry -> (host, style "slots"|"mpich"|"bare", has max_slots, slot count)."""
    where = f"{src}:{lineno}"
    words = line.split()
    host, style, count, has_max = words[0], "bare", "1", False
    m = _MPICH.match(host)
    if m and len(words) == 1:
        host, style, count = m.group(1), "mpich", m.group(2)
    for word in words[1:]:
        key, eq, value = word.partition("=")
        if not eq or key not in _KEYS:
            raise InventoryError(where, "", f"{line!r} is not a hostfile entry: {_ENTRY_HINT}")
        if key == "slots":
            style, count = "slots", value
        else:
            has_max = True
            if not value.isdigit() or int(value) < 1:
                raise InventoryError(where, "", f"{key}={value!r}: expected a positive integer")
    if not is_valid_host(host):
        raise InventoryError(where, "", f"{host!r} is not a host name or IPv4 address "
                                        f"({_ENTRY_HINT})")
    return host, style, has_max, _count(where, "slots", count)


def _count(where: str, key: str, value: str) -> int:
    limit = MAX_DEVICE_ID + 1  # the inventory's device limit
    if not value.isdigit() or not 1 <= int(value) <= limit:
        raise InventoryError(where, "", f"{key}={value!r}: expected a slot count 1..{limit}")
    return int(value)
