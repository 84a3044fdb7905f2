"""Host keys for the SSH transport: known_hosts lookup (hashed entries too) and the two policies.

    RejectUnknown(node, files)   # `host_key_policy: strict` (default): unknown key -> HostKeyError
    AcceptNew(node, target)      # `accept-new`: append an unknown key to `target`, then accept

A changed key is refused under both policies (see `SSHTransport._check_host_keys`); the error
names the known_hosts file and line of the old key, found with `find_known_key`.
"""

from __future__ import annotations

import binascii
import fcntl
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import paramiko
from paramiko.ssh_exception import SSHException

from orchestrator.errors import HostKeyError

log = logging.getLogger("orchestrator.remote.ssh")


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style SHA256 fingerprint of a key."""
    return str(key.fingerprint)  # "SHA256:..." in paramiko >= 3.2


def known_hosts_name(host: str, port: int) -> str:
    """The name a key is filed under in known_hosts: `host`, or `[host]:port` off port 22."""
    return host if port == 22 else f"[{host}]:{port}"


_PARSED: dict[tuple[str, int, int, int], paramiko.HostKeys] = {}
_PARSED_LOCK = threading.Lock()


def parsed_known_hosts(path: Path) -> paramiko.HostKeys:
    """`path` parsed by paramiko, once per process while the file is unchanged (same inode,
    size and mtime): every node of a command reads the same known_hosts, and parsing it per
    connection cost ~0.4 ms per line per node (issue #17).

    Raises:
        OSError, SSHException: as paramiko.HostKeys.load.
    """
    st = path.stat()
    key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    with _PARSED_LOCK:
        found = _PARSED.get(key)
    if found is None:
        found = paramiko.HostKeys()
        found.load(str(path))
        with _PARSED_LOCK:
            _PARSED[key] = found
    return found


def add_known_keys(keys: paramiko.HostKeys, files_: Sequence[Path], name: str) -> None:
    """Add to `keys` what the known_hosts `files_` hold for `name` (the `known_hosts_name` the
    client looks up), as `keys.load` of every file would for that name; missing files skipped.

    Raises:
        OSError, SSHException: a file cannot be read or parsed.
    """
    for path in files_:
        if not path.is_file():
            continue
        found = parsed_known_hosts(path).lookup(name)
        for ktype in found.keys() if found is not None else ():
            keys.add(name, ktype, found[ktype])


def find_known_key(files_: Sequence[Path], name: str) -> tuple[Path, int, paramiko.PKey] | None:
    """First (file, line number, key) that holds a key for `name` (hashed entries too)."""
    for path in files_:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for lineno, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                entry = paramiko.hostkeys.HostKeyEntry.from_line(line, lineno)
            except (SSHException, ValueError, TypeError, binascii.Error):
                continue
            if entry is None or entry.key is None:
                continue
            for pattern in entry.hostnames:
                if pattern == name or (pattern.startswith("|1|")
                                       and paramiko.HostKeys.hash_host(name, pattern) == pattern):
                    return path, lineno, entry.key
    return None


class RejectUnknown(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
    def __init__(self, node: str, files_: Sequence[Path]) -> None:
        self.node = node
        self.files = files_

    def missing_host_key(self, client: paramiko.SSHClient,  # noqa: ARG002 - paramiko's API
                         hostname: str, key: paramiko.PKey) -> None:
        where = ", ".join(str(p) for p in self.files)
        raise HostKeyError(
            self.node,
            f"unknown host key for {hostname} ({key.get_name()} {fingerprint(key)}): not in "
            f"{where}; verify it and add it to {self.files[0]} (or set host_key_policy: "
            "accept-new in the inventory)")


class AcceptNew(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
    def __init__(self, node: str, target: Path) -> None:
        self.node = node
        self.target = target

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        except OSError as e:
            raise HostKeyError(self.node, f"cannot add host key of {hostname} to {self.target}: "
                                          f"{e.strerror}") from e
        client.get_host_keys().add(hostname, key.get_name(), key)
        log.warning("[%s] added host key %s %s to %s", self.node, key.get_name(),
                    fingerprint(key), self.target)
