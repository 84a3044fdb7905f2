"""A node's effective SSH settings, computed by OpenSSH itself (`ssh -G`), once per command.

    s = resolve(node, inv.ssh_config)   # runs `ssh -G [-F cfg] [-p P] [-l U] -- ALIAS` (cached)
    s.hostname, s.port, s.user          # where and as whom the node is reached
    s.identity_files, s.jumps           # keys (tokens expanded) and the ProxyJump chain, resolved
    s.sources["port"]                   # "inventory" | "ssh_config" | "default"

A value's source is "inventory" when the inventory gave it, "ssh_config" when it differs from
what OpenSSH gives with no config at all (`ssh -G -F /dev/null`), else "default" (a config line
that repeats OpenSSH's default shows as default).

Both the paramiko control path and the OpenSSH bulk path (orchestrator/remote/ssh.py) build
their connections from these values, so they reach the same address and port. Include, Match,
Host wildcards and negations are evaluated by OpenSSH exactly as `ssh` does; the Host and
Match blocks that applied (from `ssh -G -vvv`) are kept as `applied`, so a user can see why.
Inventory values win: its `user`/`port` are passed as `-l`/`-p` (so Match and %-tokens see
them, as with `ssh -l U -p P`), its `identity_file` replaces ssh_config's IdentityFile.

Config file: the inventory's `ssh_config` (`-F FILE`); else OpenSSH's own choice (~/.ssh/config
and /etc/ssh/ssh_config) when $HOME is the account's home directory; when $HOME points elsewhere
(tests, CI, sudo -E), `$HOME/.ssh/config` if it exists (else none), since OpenSSH itself would
read the account's home and ignore $HOME.

No OpenSSH client installed: paramiko's ssh_config parser (no Include, partial Match) is used
instead and a one-line notice says so (orchestrator/remote/sshconfig_fallback.py).

Results are cached for the process (one CLI command); `clear_cache()` for long-lived callers.
The no-config evaluation runs once per (port, user) for every node with a plain host name
(only `host`/`hostname` depend on it there): N nodes cost N + 1 `ssh -G`, not 2N.
"""

from __future__ import annotations

import functools
import logging
import os
import pwd
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType

from orchestrator.config.inventory import HostKeyPolicy, Node
from orchestrator.errors import SSHConfigError
from orchestrator.remote.sshtokens import expand_tokens

log = logging.getLogger("orchestrator.remote.ssh")

MAX_HOPS = 16  # ProxyJump chains longer than this are taken for a loop
SOURCE_INVENTORY, SOURCE_CONFIG, SOURCE_DEFAULT = "inventory", "ssh_config", "default"
# keys whose provenance `orchestrate inventory` shows, as `ssh -G` names them
SHOWN_KEYS = ("hostname", "port", "user", "identityfile", "identitiesonly", "proxyjump",
              "proxycommand", "userknownhostsfile", "stricthostkeychecking", "connecttimeout",
              "serveraliveinterval", "ciphers", "kexalgorithms")
_APPLYING = re.compile(r"^debug1: (.+) line (\d+): Applying options for (.+)$")
_MATCHED = re.compile(r"^debug3: (.+) line (\d+): matched '(.+)'\s*$")
_NOISE = ("debug", "OpenSSH_", "Pseudo-terminal")
# A host name ssh takes as is (no user@, ssh://, [v6]:port, %): with no config at all, only
# the `host` and `hostname` (lowercased) lines of `ssh -G` depend on it.
_PLAIN_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_PROBE_ALIAS = "orchestrate-no-config-probe"


@dataclass(frozen=True)
class SSHSettings:
    """Where and how one SSH destination (a node or one ProxyJump hop) is reached."""

    alias: str  # the name the inventory (or ProxyJump) gives; ssh's %n
    hostname: str  # address connected to (HostName); ssh's %h
    port: int
    user: str
    identity_files: tuple[str, ...]  # %-tokens and ~ expanded; may not exist
    identities_only: bool
    jumps: tuple[SSHSettings, ...] = ()  # ProxyJump chain, first hop first, each resolved
    proxy_command: str | None = None  # ProxyCommand, %-tokens expanded (None with jumps)
    known_hosts: tuple[Path, ...] = ()  # UserKnownHostsFile (expanded; /dev/null dropped)
    strict_host_keys: str = "true"  # StrictHostKeyChecking as ssh -G prints it
    connect_timeout: int | None = None  # ConnectTimeout, None: not set
    server_alive_interval: int = 0
    ciphers: str | None = None  # only when ssh_config sets it
    kex_algorithms: str | None = None  # only when ssh_config sets it
    config: str = ""  # the ssh_config file(s) read, for messages
    applied: tuple[str, ...] = ()  # "FILE line N: PATTERN" blocks that applied
    sources: Mapping[str, str] = field(default_factory=dict, hash=False)  # key -> source
    evaluator: str = "ssh -G"  # or "paramiko" (no OpenSSH client installed)

    def describe(self) -> str:
        """`user@hostname:port` plus the hops, for messages."""
        via = " via " + " -> ".join(h.alias for h in self.jumps) if self.jumps else (
            " via ProxyCommand" if self.proxy_command else "")
        return f"{self.user}@{self.hostname}:{self.port}{via}"


def clear_cache() -> None:
    """Forget every resolved node (the next `resolve` runs `ssh -G` again)."""
    _evaluate.cache_clear()
    _no_config.cache_clear()


def resolve(node: Node, ssh_config: Path | None) -> SSHSettings:
    """The effective settings of `node` (its `host` is the alias given to ssh).

    Raises:
        SSHConfigError: OpenSSH rejected the config (message names node, alias, file, line),
            a %-token is unknown, or the ProxyJump chain loops.
    """
    return _resolve(node.name, node.host, node.user, node.port, node.identity_file,
                    ssh_config, 0)


def effective_policy(node: str, inventory: HostKeyPolicy, settings: SSHSettings) -> HostKeyPolicy:
    """Inventory policy, made stricter (never laxer) by ssh_config's StrictHostKeyChecking."""
    value = settings.strict_host_keys
    if settings.sources.get("stricthostkeychecking") != SOURCE_CONFIG:
        return inventory  # OpenSSH's default (ask) says nothing here
    if value in ("true", "ask"):
        return HostKeyPolicy.STRICT
    if value == "false" or (value == "accept-new" and inventory is HostKeyPolicy.STRICT):
        _notice_once(f"[{node}] ssh_config ({settings.config}) sets StrictHostKeyChecking "
                     f"{'no' if value == 'false' else value}: ignored, host keys are still "
                     "checked (host_key_policy: accept-new in the inventory adds unknown keys)")
    return inventory


def _resolve(name: str, alias: str, user: str | None, port: int | None, identity: str | None,
             ssh_config: Path | None, depth: int) -> SSHSettings:
    """`depth` > 0: a ProxyJump hop, whose user/port come from the ProxyJump element."""
    if depth > MAX_HOPS:
        raise SSHConfigError(name, alias, f"ProxyJump chain longer than {MAX_HOPS} hops "
                                          "(a loop in ssh_config?)")
    if shutil.which("ssh") is None:
        from orchestrator.remote.sshconfig_fallback import resolve_with_paramiko

        _notice_once("no OpenSSH client (`ssh`) installed: reading ssh_config with paramiko's "
                     "parser (no Include, partial Match)")
        return resolve_with_paramiko(name, alias, user, port, identity, ssh_config)
    cfg_args, cfg_name = _config_args(ssh_config)
    given = ([] if port is None else ["-p", str(port)]) + ([] if user is None else ["-l", user])
    values, applied = _evaluate((*cfg_args, *given), alias, name)
    defaults = _defaults(tuple(given), alias, name)
    sources = _sources(values, defaults, user, port, identity,
                       SOURCE_CONFIG if depth else SOURCE_INVENTORY)
    settings = _settings(name, alias, values, identity, cfg_name, applied, sources)
    jump = values.get("proxyjump", ["none"])[0]
    if jump != "none":
        hops = _jump_chain(name, jump, ssh_config, depth)
        settings = _with_jumps(settings, hops)
    return settings


def _config_args(ssh_config: Path | None) -> tuple[tuple[str, ...], str]:
    if ssh_config is not None:
        return ("-F", str(ssh_config)), str(ssh_config)
    home = os.path.expanduser("~")
    try:
        account_home = pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        account_home = ""
    if os.path.realpath(home) == os.path.realpath(account_home or "/nonexistent"):
        return (), "~/.ssh/config, /etc/ssh/ssh_config"
    user_cfg = Path(home) / ".ssh" / "config"
    return ("-F", str(user_cfg) if user_cfg.is_file() else "/dev/null"), str(user_cfg)


def _defaults(given: tuple[str, ...], alias: str, name: str) -> dict[str, list[str]]:
    """What OpenSSH gives `alias` with no config at all (`ssh -G -F /dev/null`): for a plain
    host name, one probe evaluation per `given` (-p/-l) with `host`/`hostname` set to it."""
    if _PLAIN_HOST.fullmatch(alias):
        try:
            return {**_no_config(given), "host": [alias], "hostname": [alias.lower()]}
        except SSHConfigError:
            pass  # evaluated for the node itself below, so the error names it
    return _evaluate(("-F", "/dev/null", *given), alias, name)[0]


@functools.lru_cache(maxsize=64)
def _no_config(given: tuple[str, ...]) -> dict[str, list[str]]:
    return _evaluate(("-F", "/dev/null", *given), _PROBE_ALIAS, _PROBE_ALIAS)[0]


@functools.lru_cache(maxsize=4096)
def _evaluate(args: tuple[str, ...], alias: str,
              name: str) -> tuple[dict[str, list[str]], tuple[str, ...]]:
    """`ssh -G -vvv ARGS -- ALIAS` -> (key -> values, applied blocks). Cached per process."""
    argv = ["ssh", "-G", "-vvv", "-T", *args, "--", alias]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=30, check=False, env={**os.environ, "LC_ALL": "C"})
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SSHConfigError(name, alias, f"`ssh -G` failed: {e}") from e
    if proc.returncode != 0:
        why = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith(_NOISE)]
        raise SSHConfigError(name, alias, why[0] if why else f"`ssh -G` exited {proc.returncode}")
    values: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(" ")
        if key:
            values.setdefault(key.lower(), []).append(value)
    applied = []
    for line in proc.stderr.splitlines():
        m = _APPLYING.match(line)
        if m:
            applied.append(f"{m.group(1)} line {m.group(2)}: Host {m.group(3)}")
        m = _MATCHED.match(line)
        if m:
            applied.append(f"{m.group(1)} line {m.group(2)}: Match {m.group(3)}")
    return values, tuple(applied)


def _sources(values: Mapping[str, list[str]], defaults: Mapping[str, list[str]],
             user: str | None, port: int | None, identity: str | None,
             given_source: str) -> dict[str, str]:
    given = {"user": user is not None, "port": port is not None,
             "identityfile": identity is not None}
    out = {}
    for key in SHOWN_KEYS:
        if given.get(key):
            out[key] = given_source
        elif values.get(key) != defaults.get(key):
            out[key] = SOURCE_CONFIG
        else:
            out[key] = SOURCE_DEFAULT
    return out


def _settings(name: str, alias: str, v: Mapping[str, list[str]], identity: str | None,
              cfg_name: str, applied: tuple[str, ...], sources: dict[str, str]) -> SSHSettings:
    def one(key: str, default: str = "") -> str:
        return v.get(key, [default])[0]

    hostname, port, user = one("hostname", alias), int(one("port", "22")), one("user")
    key_alias = one("hostkeyalias", "none")
    ctx = {"h": hostname, "n": alias, "p": str(port), "r": user,
           "k": alias if key_alias == "none" else key_alias}

    def expand(text: str, key: str) -> str:
        try:
            return expand_tokens(text, ctx)
        except ValueError as e:
            raise SSHConfigError(name, alias, f"{key} {text!r} in {cfg_name}: {e}") from None

    keys = ([os.path.expanduser(identity)] if identity is not None else
            [os.path.expanduser(expand(k, "IdentityFile")) for k in v.get("identityfile", [])])
    proxy = one("proxycommand", "none")
    timeout = one("connecttimeout", "none")
    return SSHSettings(
        alias=alias, hostname=hostname, port=port, user=user, identity_files=tuple(keys),
        identities_only=one("identitiesonly", "no") == "yes" or identity is not None,
        proxy_command=None if proxy == "none" else expand(proxy, "ProxyCommand"),
        known_hosts=tuple(Path(os.path.expanduser(expand(p, "UserKnownHostsFile")))
                          for p in one("userknownhostsfile").split() if p != "/dev/null"),
        strict_host_keys=one("stricthostkeychecking", "true"),
        connect_timeout=None if timeout == "none" else int(timeout),
        server_alive_interval=int(one("serveraliveinterval", "0")),
        ciphers=one("ciphers") if sources["ciphers"] == SOURCE_CONFIG else None,
        kex_algorithms=one("kexalgorithms") if sources["kexalgorithms"] == SOURCE_CONFIG else None,
        config=cfg_name, applied=applied, sources=MappingProxyType(sources))


def parse_jump(name: str, spec: str) -> tuple[str, str | None, int | None]:
    """One ProxyJump element `[user@]host[:port]` or `ssh://[user@]host[:port]`."""
    text = spec.removeprefix("ssh://")
    user, _, hostport = text.rpartition("@")
    host, port = hostport, None
    if hostport.startswith("["):  # [v6addr]:port
        host, _, rest = hostport[1:].partition("]")
        port = rest[1:] or None if rest.startswith(":") else None
    elif hostport.count(":") == 1:
        host, port = hostport.split(":")
    if not host or (port is not None and not port.isdigit()):
        raise SSHConfigError(name, spec, f"ProxyJump element {spec!r} is not [user@]host[:port]")
    return host, user or None, int(port) if port else None


def _jump_chain(name: str, spec: str, ssh_config: Path | None,
                depth: int) -> tuple[SSHSettings, ...]:
    """The hops OpenSSH would go through for `ProxyJump spec`, first hop first.

    As `ssh -J a,b` does: the first hop is reached with its own ssh_config (its own ProxyJump
    included, recursively); later hops with their ssh_config but the chain replacing their own
    ProxyJump.
    """
    hops: list[SSHSettings] = []
    for i, element in enumerate(spec.split(",")):
        host, user, port = parse_jump(name, element)
        hop = _resolve(name, host, user, port, None, ssh_config, depth + 1)
        if i == 0:  # reached with its own ProxyJump/ProxyCommand
            hops += [*hop.jumps, replace(hop, jumps=())]
        else:  # `-J` replaces both for later hops
            hops.append(replace(hop, jumps=(), proxy_command=None))
    if len(hops) > MAX_HOPS:
        raise SSHConfigError(name, spec, f"ProxyJump chain longer than {MAX_HOPS} hops")
    return tuple(hops)


def _with_jumps(s: SSHSettings, jumps: tuple[SSHSettings, ...]) -> SSHSettings:
    # OpenSSH: ProxyJump and ProxyCommand exclude each other (the first one obtained wins)
    return replace(s, jumps=jumps, proxy_command=None)


@functools.lru_cache(maxsize=64)
def _notice_once(message: str) -> None:
    log.warning("%s", message)
