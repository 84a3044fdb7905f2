"""SSH transport: one node over Fabric's `Connection` (paramiko), strict host keys, timeouts.

    with SSHTransport(node, SSHOptions.from_inventory(inv)) as t:
        t.run(["hostname"]).stdout              # connects lazily, on first use
        t.put(Path("launch.sh"), PurePosixPath("/srv/run/launch.sh"))
        t.get(PurePosixPath("/srv/run/out.ckpt"), Path("ckpt/out.ckpt"))

Host keys: keys are read from `~/.ssh/known_hosts` plus every `known_hosts` file of the
inventory. Fabric installs paramiko's AutoAddPolicy; we replace it before connecting:

- `strict` (default): an unknown key raises HostKeyError naming the host, the offered key's
  fingerprint and the known_hosts files; a changed key raises HostKeyError naming the file and
  line that holds the old key.
- `accept-new`: an unknown key is appended to the first inventory known_hosts file (else
  ~/.ssh/known_hosts) and accepted; a changed key is still refused.

ssh_config: every node's effective settings come from OpenSSH's own evaluator, `ssh -G`
(orchestrator/remote/sshconfig.py: Include, Match, wildcards, %-tokens, ProxyJump chains),
with the inventory's `ssh_config` file if given, inventory values winning; both this paramiko
connection and the OpenSSH bulk path are built from those values (orchestrator/remote/
sshroute.py). StrictHostKeyChecking from ssh_config only ever makes checking stricter.

Auth: the node's `identity_file`, else ssh_config IdentityFile (default keys included), and
the agent. Never passwords.

Timeouts and retries: `connect_timeout` bounds TCP connect, banner and auth; network errors
(refused, timeout, no route, DNS, banner) are retried `connect_attempts` times with exponential
backoff; auth and host-key errors are not retried; commands are never retried. `run(...,
timeout=S)` runs the command under coreutils `timeout` on the node (so it is killed there too)
and raises CommandTimeout after S seconds.

Files (orchestrator/remote/ssh_files.py): `put` writes under umask 077 and verifies the copy
without content-derived values on the node's command line; `get` reads at most the size the
node's stat announced (+1 byte to detect more), verifies size + sha256 and gives the file a
mode chosen here (logs 0644), never the node's. Bulk bytes take OpenSSH `ssh host cat` (same
known_hosts, StrictHostKeyChecking=yes, identity, ssh_config and ProxyJump hops) when `ssh` is
installed, else paramiko SFTP. Command output is capped per stream (ORCHESTRATE_MAX_OUTPUT,
orchestrator/remote/output.py).
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

import paramiko
from fabric import Connection
from paramiko.ssh_exception import (
    AuthenticationException,
    BadHostKeyException,
    NoValidConnectionsError,
    SSHException,
)

from orchestrator.config.inventory import HostKeyPolicy, Inventory, Node
from orchestrator.errors import (
    CommandTimeout,
    ConnectError,
    HostKeyError,
    RemoteCommandError,
)
from orchestrator.remote import files, output, ssh_files, sshconfig, sshroute
from orchestrator.remote.hostkeys import (
    AcceptNew,
    RejectUnknown,
    add_known_keys,
    find_known_key,
    fingerprint,
    known_hosts_name,
)
from orchestrator.remote.shell import TIMEOUT_EXIT, TIMEOUT_GRACE, env_prefix, timeout_wrap
from orchestrator.remote.transport import CommandResult

log = logging.getLogger(__name__)



def user_known_hosts() -> Path:
    """`~/.ssh/known_hosts`, resolved from $HOME now."""
    return Path(os.path.expanduser("~/.ssh/known_hosts"))


DEFAULT_CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True)
class SSHOptions:
    """How to reach nodes over SSH; built from the inventory, shared by every node."""

    known_hosts: tuple[Path, ...] = ()  # besides ~/.ssh/known_hosts
    host_key_policy: HostKeyPolicy = HostKeyPolicy.STRICT
    ssh_config: Path | None = None  # None: ~/.ssh/config + /etc/ssh/ssh_config
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT  # the default yields to ssh_config's
    connect_attempts: int = 3  # tries for network errors (refused, timeout, no route)
    backoff: float = 0.5  # seconds before the 2nd try; doubles each time
    use_openssh: bool = True  # scp for put/get when OpenSSH is installed
    keepalive: int = 30  # seconds between keepalives on an open connection (0: off)
    max_output: int = 0  # bytes of stdout/stderr per command; 0: ORCHESTRATE_MAX_OUTPUT/16 MiB

    @classmethod
    def from_inventory(cls, inv: Inventory, **overrides: Any) -> SSHOptions:
        opts = cls(known_hosts=inv.known_hosts, host_key_policy=inv.host_key_policy,
                   ssh_config=inv.ssh_config)
        return replace(opts, **overrides) if overrides else opts

    def known_hosts_files(self) -> tuple[Path, ...]:
        """Every known_hosts file consulted, user file last."""
        user = user_known_hosts()
        return tuple(p for p in self.known_hosts if p != user) + (user,)

    def accept_new_target(self) -> Path:
        """Where accept-new records keys: the first inventory file, else ~/.ssh/known_hosts."""
        return self.known_hosts[0] if self.known_hosts else user_known_hosts()


class _Retryable(Exception):
    """Internal: a connect failure worth another try (wraps the ConnectError to raise)."""

    def __init__(self, error: ConnectError) -> None:
        super().__init__(str(error))
        self.error = error


class SSHTransport:
    """One node over SSH. Thread-compatible: use one instance from one thread at a time."""

    def __init__(self, node: Node, options: SSHOptions | None = None) -> None:
        self.node = node
        self.options = options or SSHOptions()
        self._conn: Connection | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._settings: sshconfig.SSHSettings | None = None

    # ---- connection ---------------------------------------------------------------------

    def __enter__(self) -> SSHTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.is_connected

    def settings(self) -> sshconfig.SSHSettings:
        """The node's effective SSH settings (`ssh -G`, cached for the command).

        Raises:
            SSHConfigError: the ssh_config cannot be evaluated for this node.
        """
        if self._settings is None:
            self._settings = sshconfig.resolve(self.node, self.options.ssh_config)
        return self._settings

    def known_hosts_files(self) -> tuple[Path, ...]:
        """The inventory's known_hosts, ssh_config's UserKnownHostsFile, ~/.ssh/known_hosts."""
        s = self.settings()
        from_config = s.known_hosts if s.sources.get("userknownhostsfile") == "ssh_config" else ()
        *inventory, user = self.options.known_hosts_files()
        return tuple(dict.fromkeys([*inventory, *from_config, user]))

    def _timeout(self) -> float:
        """--connect-timeout (or the inventory's), else ssh_config ConnectTimeout, else 10 s."""
        s = self.settings()
        if self.options.connect_timeout == DEFAULT_CONNECT_TIMEOUT and s.connect_timeout:
            return float(s.connect_timeout)
        return self.options.connect_timeout

    def _new_connection(self) -> Connection:
        conn = sshroute.fabric_connection(self.settings(), self._timeout())
        # our host-key checks on the node and on every ProxyJump hop
        for hop in sshroute.hops(conn):
            self._check_host_keys(hop)
        return conn

    def _check_host_keys(self, conn: Connection) -> None:
        n, o = self.node, self.options
        files_ = self.known_hosts_files()
        keys = conn.client.get_host_keys()
        for path in files_:
            try:
                add_known_keys(keys, [path], known_hosts_name(conn.host, conn.port))
            except (OSError, SSHException) as e:
                raise HostKeyError(n.name, f"cannot read known_hosts {path}: {e}") from e
        policy = sshconfig.effective_policy(n.name, o.host_key_policy, self.settings())
        if policy is HostKeyPolicy.ACCEPT_NEW:
            conn.client.set_missing_host_key_policy(AcceptNew(n.name, o.accept_new_target()))
        else:
            conn.client.set_missing_host_key_policy(RejectUnknown(n.name, files_))

    def open(self) -> None:
        """Connect now (otherwise the first `run`/`put`/`get` does). Idempotent.

        Raises:
            HostKeyError: unknown or changed host key.
            ConnectError: refused, timed out, unreachable, DNS, auth (after retries for the
                network kinds).
        """
        if self.connected:
            return
        self.close()  # a dropped connection (node rebooted, keepalive failed): start afresh
        attempts = max(1, self.options.connect_attempts)
        delay = self.options.backoff
        for attempt in range(1, attempts + 1):
            conn = self._new_connection()
            try:
                self._connect_once(conn)
            except _Retryable as r:
                conn.close()
                if attempt == attempts:
                    raise r.error from None
                log.info("[%s] %s; retrying in %.1fs", self.node.name, r.error, delay)
                time.sleep(delay)
                delay *= 2
                continue
            except BaseException:
                conn.close()
                raise
            self._conn = conn
            keepalive = self.settings().server_alive_interval or self.options.keepalive
            if keepalive and conn.transport is not None:
                conn.transport.set_keepalive(keepalive)
            return

    def _connect_once(self, conn: Connection) -> None:
        s = self.settings()
        name, where, why = self.node.name, f"{conn.host}:{conn.port}", ""
        if s.jumps or s.alias != s.hostname:  # say why the node is reached there
            why = f" ({s.alias} is {s.describe()} by {s.config})"
            where += why
        try:
            conn.open()
        except HostKeyError:
            raise
        except BadHostKeyException as e:
            kname = known_hosts_name(conn.host, conn.port)
            found = find_known_key(self.known_hosts_files(), kname)
            at = f"{found[0]}:{found[1]}" if found else "known_hosts"
            raise HostKeyError(
                name, f"host key for {kname} CHANGED: offered {e.key.get_name()} "
                      f"{fingerprint(e.key)}, {at} has {fingerprint(e.expected_key)}; if the "
                      f"change is expected, remove line {at} and verify the new key") from None
        except AuthenticationException as e:
            keys = conn.connect_kwargs.get("key_filename") or ["agent/default keys"]
            raise ConnectError(name, f"authentication failed for {conn.user}@{where} "
                                     f"(tried {', '.join(map(str, keys))}): {e}") from None
        except NoValidConnectionsError as e:
            raise _Retryable(ConnectError(name, f"connection refused by {where}")) from e
        except socket.gaierror as e:
            why = why or f" (ssh_config: {s.config})"
            raise _Retryable(ConnectError(
                name, f"cannot resolve {conn.host}{why}: {e.strerror}")) from e
        except TimeoutError as e:
            raise _Retryable(ConnectError(
                name, f"connect to {where} timed out after {self._timeout():g}s"
            )) from e
        except SSHException as e:
            raise _Retryable(ConnectError(name, f"SSH handshake with {where} failed: {e}")) from e
        except EOFError as e:  # paramiko re-raises its reader thread's EOF as is
            raise _Retryable(ConnectError(
                name, f"connection closed by {where} during the SSH handshake")) from e
        except OSError as e:
            raise _Retryable(ConnectError(name, f"cannot connect to {where}: "
                                                f"{e.strerror or e}")) from e

    def _transport(self) -> paramiko.Transport:
        self.open()
        assert self._conn is not None and self._conn.transport is not None
        return self._conn.transport

    def close(self) -> None:
        """Close the SFTP session and the connection; safe to call twice."""
        if self._sftp is not None:
            try:
                self._sftp.close()
            except (OSError, SSHException):
                pass
            self._sftp = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # ---- commands -----------------------------------------------------------------------

    def run(self, cmd: Sequence[str] | str, *, check: bool = True, timeout: float | None = None,
            env: Mapping[str, str] | None = None) -> CommandResult:
        """Run `cmd` with the node's login shell, as `ssh host CMD` does.

        Args:
            cmd: a string (given to the shell as is) or an argv list (shlex-joined).
            check: raise RemoteCommandError on a non-zero exit.
            timeout: seconds; the command is killed on the node and CommandTimeout raised.
            env: exported before the command, each value shell-quoted.
        """
        line = cmd if isinstance(cmd, str) else shlex.join(cmd)
        full = env_prefix(env) + line
        if timeout is not None:
            full = timeout_wrap(full, timeout)
        start = time.monotonic()
        chan = self._open_channel()
        try:
            chan.exec_command(full)
            chan.shutdown_write()
            deadline = None if timeout is None else start + timeout + TIMEOUT_GRACE + 1.0
            out, err, code = output.collect(chan, deadline, self._max_output(), self.node.name,
                                            line)
        except (SSHException, EOFError) as e:
            raise ConnectError(self.node.name, f"connection lost running `{line}`: "
                                               f"{e or type(e).__name__}") from e
        finally:
            chan.close()
        seconds = time.monotonic() - start
        if code is None or (timeout is not None and code == TIMEOUT_EXIT
                            and seconds >= timeout):
            raise CommandTimeout(self.node.name, f"`{line}` did not finish in {timeout:g}s")
        result = CommandResult(self.node.name, line, code, out.decode("utf-8", "replace"),
                               err.decode("utf-8", "replace"), seconds)
        if check and not result.ok:
            raise RemoteCommandError(result)
        return result

    def _max_output(self) -> int:
        return self.options.max_output or output.max_output()

    def _open_channel(self) -> paramiko.Channel:
        transport = self._transport()
        try:
            return transport.open_session(timeout=self._timeout())
        except (SSHException, EOFError) as e:
            raise ConnectError(self.node.name,
                               f"cannot open a session: {e or type(e).__name__}") from e

    # ---- files (orchestrator/remote/ssh_files.py) ---------------------------------------

    def put(self, local: Path, remote: PurePosixPath, *, mode: int | None = None) -> None:
        """Upload `local` to `remote` atomically, 0600 until verified, then `mode` (or the
        local file's)."""
        ssh_files.put(self, local, remote, mode)

    def get(self, remote: PurePosixPath, local: Path, *, mode: int = files.LOG_MODE) -> None:
        """Download the regular file `remote` to `local`: at most its size, verified, `mode`
        (read/write bits only; never the node's mode)."""
        ssh_files.get(self, remote, local, mode)

    def connection(self) -> Connection:
        """The open Fabric connection (connects first)."""
        self._transport()
        assert self._conn is not None
        return self._conn

    def sftp_client(self) -> paramiko.SFTPClient:
        """This connection's SFTP session (opened on first use, closed by close())."""
        if self._sftp is None:
            self._sftp = self.connection().client.open_sftp()
        return self._sftp

    @contextmanager
    def sftp_reader(self, remote: PurePosixPath,
                    offset: int = 0) -> Iterator[ssh_files.SFTPStream]:
        """The remote file from byte `offset` on, over paramiko SFTP with read-ahead.

        For bulk reads when `openssh_command()` is None (no `ssh` installed, use_openssh off,
        or a ProxyJump/ProxyCommand node, which paramiko reaches through Fabric's gateway with
        every hop's host key checked). Each reader has its own SFTP channel, so streams of one
        node may run in parallel threads on an open connection.

        Raises:
            TransferError: the file cannot be opened or read (names the node and path).
        """
        with ssh_files.sftp_reader(self, remote, offset) as stream:
            yield stream

    def openssh_command(self) -> list[str] | None:
        """`ssh ... -- HOSTNAME` reaching the node as our connection does, or None.

        Built from the same resolved settings (sshroute.openssh_argv): same address, port,
        user, identity files, ProxyJump hops (nested strict `ssh -W`) or ProxyCommand, same
        known_hosts files with StrictHostKeyChecking=yes (our own connection has already
        checked, or accept-new recorded, every key). None: no `ssh` installed or use_openssh
        is off (paramiko SFTP is used instead).
        """
        if not self.options.use_openssh or shutil.which("ssh") is None:
            return None
        self.open()
        return sshroute.openssh_argv(self.settings(), self.known_hosts_files(), self._timeout())
