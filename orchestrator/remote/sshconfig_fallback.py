"""ssh_config through paramiko's parser, for machines without an OpenSSH client.

    resolve_with_paramiko("th0", "th0", None, None, None, Path("cfg"))  # -> SSHSettings

Used by orchestrator/remote/sshconfig.py only when `ssh` is not installed (it says so once).
paramiko ignores `Include` and evaluates only part of `Match`: with an OpenSSH client
installed, `ssh -G` is always used instead.
"""

from __future__ import annotations

import getpass
import os
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import paramiko

from orchestrator.errors import SSHConfigError
from orchestrator.remote import sshconfig
from orchestrator.remote.sshtokens import expand_tokens

SYSTEM_SSH_CONFIG = Path("/etc/ssh/ssh_config")
DEFAULT_KEYS = ("~/.ssh/id_rsa", "~/.ssh/id_ecdsa", "~/.ssh/id_ed25519")


def resolve_with_paramiko(name: str, alias: str, user: str | None, port: int | None,
                          identity: str | None, ssh_config: Path | None,
                          depth: int = 0) -> sshconfig.SSHSettings:
    """The same SSHSettings `ssh -G` would give, as far as paramiko's parser goes."""
    if depth > sshconfig.MAX_HOPS:
        raise SSHConfigError(name, alias, f"ProxyJump chain longer than {sshconfig.MAX_HOPS} "
                                          "hops (a loop in ssh_config?)")
    files = [ssh_config] if ssh_config is not None else [
        Path(os.path.expanduser("~/.ssh/config")), SYSTEM_SSH_CONFIG]
    parsed = paramiko.SSHConfig()
    for path in files:
        if path.is_file():
            try:
                with open(path) as f:
                    parsed.parse(f)
            except (OSError, ValueError, paramiko.ssh_exception.ConfigParseError) as e:
                raise SSHConfigError(name, alias, f"cannot parse {path}: {e}") from e
    found = parsed.lookup(alias)
    hostname = found.get("hostname", alias)
    the_port = port if port is not None else int(found.get("port", 22))
    the_user = user if user is not None else found.get("user", getpass.getuser())
    keys = [identity] if identity is not None else found.get("identityfile", list(DEFAULT_KEYS))
    ctx = {"h": hostname, "n": alias, "p": str(the_port), "r": the_user, "k": alias}
    sources = {k: sshconfig.SOURCE_CONFIG if k in found and k != "hostname" or
               (k == "hostname" and hostname != alias) else sshconfig.SOURCE_DEFAULT
               for k in sshconfig.SHOWN_KEYS}
    sources.update({k: sshconfig.SOURCE_INVENTORY for k, v in
                    (("user", user), ("port", port), ("identityfile", identity)) if v is not None})
    strict = {"yes": "true", "no": "false"}.get(found.get("stricthostkeychecking", "yes"),
                                                found.get("stricthostkeychecking", "true"))
    settings = sshconfig.SSHSettings(
        alias=alias, hostname=hostname, port=the_port, user=the_user,
        identity_files=tuple(os.path.expanduser(expand_tokens(k, ctx)) for k in keys),
        identities_only=found.get("identitiesonly", "no") == "yes" or identity is not None,
        proxy_command=found.get("proxycommand"),
        known_hosts=tuple(Path(os.path.expanduser(p)) for p in
                          found.get("userknownhostsfile", "~/.ssh/known_hosts").split()
                          if p != "/dev/null"),
        strict_host_keys=strict,
        connect_timeout=int(found["connecttimeout"]) if "connecttimeout" in found else None,
        server_alive_interval=int(found.get("serveraliveinterval", 0)),
        config=", ".join(map(str, files)), sources=MappingProxyType(sources),
        evaluator="paramiko")
    jump = found.get("proxyjump")
    if jump and jump != "none":
        hops: list[sshconfig.SSHSettings] = []
        for element in jump.split(","):
            host, hop_user, hop_port = sshconfig.parse_jump(name, element)
            hop = resolve_with_paramiko(name, host, hop_user, hop_port, None, ssh_config,
                                       depth + 1)
            hops += [*hop.jumps, replace(hop, jumps=())] if not hops else [
                replace(hop, jumps=(), proxy_command=None)]
        settings = replace(settings, jumps=tuple(hops), proxy_command=None)
    return settings
