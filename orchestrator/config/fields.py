"""One validator per kind of inventory value: each returns the value or raises an
InventoryError naming the file, the key path and the bad value (shown by `show`).

    fields.port("inv.yaml", "nodes[2].port", 70000)   # InventoryError: ... expected 1..65535
    fields.devices("inv.yaml", "defaults.devices", [0, 1, 1])   # ... duplicate device id 1

Used by config/inventory.py (every key of a node) and the hostfile parser.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

from orchestrator.config.cluster import MAX_DEVICE_ID, is_valid_host, is_valid_ipv4
from orchestrator.errors import InventoryError

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
_USER = re.compile(r"^[A-Za-z0-9._][A-Za-z0-9._-]{0,63}\Z")


def show(value: Any) -> str:
    """A value as it appears in messages: repr for scalars, the type for containers."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def host(src: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not is_valid_host(value):
        raise InventoryError(src, key, f"expected an IPv4 address or host name, got {show(value)}")
    return value


def name(src: str, key: str, value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if (
        not isinstance(value, str)
        or not value
        or len(value) > 64
        or "/" in value
        or value in (".", "..")
        or any(ord(c) < 32 or ord(c) == 127 for c in value)
    ):
        raise InventoryError(
            src,
            key,
            f"expected a name of 1..64 printable characters without '/', got {show(value)}",
        )
    return value


def user(src: str, key: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _USER.match(value):
        raise InventoryError(src, key, f"expected a user name, got {show(value)}")
    return value


def port(src: str, key: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InventoryError(src, key, f"expected an integer 1..65535, got {show(value)}")
    return value


def devices(src: str, key: str, value: Any) -> tuple[int, ...]:
    limit = MAX_DEVICE_ID + 1
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= limit:
            raise InventoryError(src, key, f"expected a device count 1..{limit}, got {value!r}")
        return tuple(range(value))
    if not isinstance(value, list) or not value:
        raise InventoryError(
            src,
            key,
            f"expected a count 1..{limit} or a non-empty list of device ids, got {show(value)}",
        )
    seen: set[int] = set()
    for i, d in enumerate(value):
        if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d <= MAX_DEVICE_ID:
            raise InventoryError(
                src, f"{key}[{i}]", f"expected a device id 0..{MAX_DEVICE_ID}, got {show(d)}"
            )
        if d in seen:
            raise InventoryError(src, f"{key}[{i}]", f"duplicate device id {d}")
        seen.add(d)
    return tuple(sorted(seen))


def workdir(src: str, key: str, value: Any, local: bool) -> PurePosixPath:
    """An absolute or ~/ path; a relative one only for a `connection: local` node."""
    if not isinstance(value, str) or not value or "\0" in value or "\n" in value:
        raise InventoryError(src, key, f"expected a directory path, got {show(value)}")
    ok = value.startswith("/") or value == "~" or value.startswith("~/")
    if not ok and not local:
        raise InventoryError(src, key, f"expected an absolute path or one under ~/, got {value!r}")
    return PurePosixPath(value)


def nonempty(src: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or "\n" in value:
        raise InventoryError(src, key, f"expected a non-empty string, got {show(value)}")
    return value


def opt_str(src: str, key: str, value: Any, allow_int: bool = False) -> str | None:
    if value is None:
        return None
    if allow_int and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return nonempty(src, key, value)


def env(src: str, key: str, value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise InventoryError(src, key, f"expected a mapping NAME: value, got {show(value)}")
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not _ENV_NAME.match(k):
            raise InventoryError(src, f"{key}.{k}", "expected an environment variable name")
        if isinstance(v, bool):
            v = "1" if v else "0"
        if not isinstance(v, (str, int, float)):
            raise InventoryError(src, f"{key}.{k}", f"expected a scalar value, got {show(v)}")
        out[k] = str(v)
    return out


def device_ips(src: str, key: str, value: Any) -> Mapping[int, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        raise InventoryError(src, key, f"expected a mapping device_id: IPv4, got {show(value)}")
    out: dict[int, str] = {}
    for k, v in value.items():
        dev = int(k) if isinstance(k, str) and re.fullmatch(r"[0-9]{1,4}", k) else k
        if isinstance(dev, bool) or not isinstance(dev, int) or not 0 <= dev <= MAX_DEVICE_ID:
            raise InventoryError(
                src, f"{key}.{k}", f"expected a device id 0..{MAX_DEVICE_ID}, got {show(k)}"
            )
        if not isinstance(v, str) or not is_valid_ipv4(v):
            raise InventoryError(src, f"{key}.{k}", f"expected an IPv4 address, got {show(v)}")
        out[dev] = v
    return MappingProxyType(out)


def choice(src: str, key: str, value: Any, kind: type[enum.Enum]) -> Any:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(str(m.value) for m in kind)
        raise InventoryError(src, key, f"expected one of {allowed}, got {show(value)}") from None


def paths(src: str, key: str, value: Any) -> list[Path]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    base = Path(src).parent
    out = []
    for i, v in enumerate(items):
        if not isinstance(v, str) or not v:
            raise InventoryError(src, f"{key}[{i}]", f"expected a file path, got {show(v)}")
        p = Path(v).expanduser()
        out.append(p if p.is_absolute() else base / p)
    return out


def path_or_none(src: str, key: str, value: Any) -> Path | None:
    found = paths(src, key, value)
    return found[0] if found else None


def node_path(src: str, key: str, value: Any) -> PurePosixPath | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/"):
        raise InventoryError(src, key, f"expected an absolute path, got {show(value)}")
    return PurePosixPath(value)
