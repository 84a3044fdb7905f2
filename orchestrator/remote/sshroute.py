"""The route to a node, built twice from one `SSHSettings`: as Fabric connections (control path)
and as an OpenSSH argv (bulk path), so both reach the same address and port.

    s = sshconfig.resolve(node, inv.ssh_config)
    conn = fabric_connection(s, timeout=10)       # paramiko; every ProxyJump hop a Connection
    argv = openssh_argv(s, known_hosts, timeout=10)   # `ssh ... -- HOSTNAME`, hops as nested
                                                   # strict `ssh -W` ProxyCommands

Neither reads ssh_config again: the OpenSSH argv uses `-F /dev/null` and states every value,
so a user's config cannot switch host-key checking off on the bulk path. ProxyJump chains of
any length: paramiko opens each hop's `direct-tcpip` channel through the previous one (each
hop's host key checked by the caller, see `hops()`); OpenSSH runs one `ssh -W` per hop, each
with StrictHostKeyChecking=yes against the same known_hosts files.
"""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from fabric import Config, Connection

from orchestrator.remote.sshconfig import SSHSettings

FAST_KEX = ("curve25519-sha256,curve25519-sha256@libssh.org,ecdh-sha2-nistp256,"
            "diffie-hellman-group14-sha256")  # post-quantum default is CPU-heavy (NOTES.md)
FAST_CIPHERS = "^aes128-gcm@openssh.com"


def existing_keys(s: SSHSettings) -> list[str]:
    """The identity files of `s` that exist (ssh skips missing ones too)."""
    return [k for k in s.identity_files if os.path.isfile(k)]


def fabric_connection(s: SSHSettings, timeout: float) -> Connection:
    """An unopened Fabric Connection to `s`, with its ProxyJump hops (or ProxyCommand) as
    gateways. Reads no ssh_config: every value comes from `s`."""
    gateway: Connection | str | None = _shell(s.proxy_command)
    if s.jumps:
        gateway = _shell(s.jumps[0].proxy_command)
        for hop in s.jumps:
            gateway = _connection(hop, gateway, timeout)
    return _connection(s, gateway, timeout)


def _shell(command: str | None) -> str | None:
    """ProxyCommand as ssh runs it (`/bin/sh -c`); paramiko would split it without a shell."""
    return None if command is None else shlex.join(["/bin/sh", "-c", command])


def _connection(s: SSHSettings, gateway: Connection | str | None, timeout: float) -> Connection:
    return Connection(
        s.hostname, user=s.user, port=s.port, config=Config(lazy=True), gateway=gateway,
        connect_timeout=max(1, math.ceil(timeout)),
        connect_kwargs={
            "key_filename": existing_keys(s),
            "look_for_keys": False,  # ssh -G already listed the default keys
            "allow_agent": True,
            "banner_timeout": timeout,
            "auth_timeout": timeout,
            "channel_timeout": timeout,
        },
    )


def hops(conn: Connection) -> Iterator[Connection]:
    """`conn` and every Connection it goes through (ProxyCommand gateways are not hosts)."""
    hop: Connection | str | None = conn
    while isinstance(hop, Connection):
        yield hop
        hop = hop.gateway


def openssh_argv(s: SSHSettings, known_hosts: Sequence[Path], timeout: float) -> list[str]:
    """`ssh OPTIONS -- HOSTNAME` reaching `s` (append the remote command)."""
    cmd = _options(s, known_hosts, timeout)
    proxy = _proxy(s, known_hosts, timeout)
    if proxy is not None:
        # ssh runs ProxyCommand with /bin/sh after expanding %-tokens: quoted, % escaped
        cmd += ["-o", "ProxyCommand=" + proxy.replace("%", "%%")]
    return [*cmd, "--", s.hostname]


def _proxy(s: SSHSettings, known_hosts: Sequence[Path], timeout: float) -> str | None:
    if not s.jumps:
        return s.proxy_command
    last = s.jumps[-1]
    before = replace(last, jumps=s.jumps[:-1])
    target = f"[{s.hostname}]:{s.port}" if ":" in s.hostname else f"{s.hostname}:{s.port}"
    argv = openssh_argv(before, known_hosts, timeout)
    return shlex.join([*argv[:-2], "-W", target, *argv[-2:]])


def _options(s: SSHSettings, known_hosts: Sequence[Path], timeout: float) -> list[str]:
    kh = " ".join(_ssh_quote(str(p)) for p in known_hosts)
    cmd = [
        "ssh", "-T", "-x", "-a",
        "-F", "/dev/null",
        "-p", str(s.port),
        "-l", s.user,
        "-o", f"HostName={s.hostname}",
        "-o", f"UserKnownHostsFile={kh}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "BatchMode=yes",
        "-o", f"ConnectTimeout={max(1, math.ceil(timeout))}",
        "-o", f"KexAlgorithms={s.kex_algorithms or FAST_KEX}",
        "-o", f"Ciphers={s.ciphers or FAST_CIPHERS}",
        "-o", "LogLevel=ERROR",
        "-o", "ClearAllForwardings=yes",
    ]
    if s.server_alive_interval:
        cmd += ["-o", f"ServerAliveInterval={s.server_alive_interval}"]
    for key in existing_keys(s):
        cmd += ["-i", key]
    if s.identities_only:
        cmd += ["-o", "IdentitiesOnly=yes"]
    return cmd


def _ssh_quote(text: str) -> str:
    """Quote one ssh_config value (double quotes; ssh_config has no escapes)."""
    if '"' in text:
        raise ValueError(f"cannot pass {text!r} to OpenSSH")
    return f'"{text}"' if " " in text else text
