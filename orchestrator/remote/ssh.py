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

Bulk `get`/`put` stream through OpenSSH `ssh host cat` when `ssh` is installed (~3x paramiko
SFTP here: 280-330 MB/s vs 57-99, see bench/fanout.py), with the same known_hosts files,
`StrictHostKeyChecking=yes` (the key was already checked by our own connection), BatchMode,
the same identity and ssh_config, curve25519 kex and AES-GCM; else paramiko SFTP. The remote
path is shell-quoted by us (scp's remote quoting differs between its SCP and SFTP modes). Either
way the copy lands under a temp name, is verified (size + sha256; the remote hash runs on a
second channel during the transfer) and renamed into place with the remote file's mode.
A node behind ProxyJump hops (any number) takes the OpenSSH path with nested ProxyCommands
running the same strict `ssh -W` through each hop; paramiko goes through one Connection per
hop, every hop's host key checked against the same known_hosts files.
`sftp_reader(path, offset)` streams a file over SFTP with read-ahead, from an offset, for
callers that hash while reading (collect-ckpt's gather without OpenSSH).
"""

from __future__ import annotations

import logging
import os
import select
import shlex
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import IO, Any

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
    TransferError,
)
from orchestrator.remote import files, sshconfig, sshroute
from orchestrator.remote.hostkeys import (
    AcceptNew,
    RejectUnknown,
    find_known_key,
    fingerprint,
    known_hosts_name,
)
from orchestrator.remote.shell import TIMEOUT_EXIT, TIMEOUT_GRACE, env_prefix, timeout_wrap
from orchestrator.remote.transport import CommandResult

log = logging.getLogger(__name__)

_EOF_GRACE = 5.0  # seconds to wait for the end of output after the exit status arrives


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
            if path.is_file():
                try:
                    keys.load(str(path))
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
            out, err, code = _collect(chan, deadline)
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

    def _open_channel(self) -> paramiko.Channel:
        transport = self._transport()
        try:
            return transport.open_session(timeout=self._timeout())
        except (SSHException, EOFError) as e:
            raise ConnectError(self.node.name,
                               f"cannot open a session: {e or type(e).__name__}") from e

    # ---- files --------------------------------------------------------------------------

    def put(self, local: Path, remote: PurePosixPath, *, mode: int | None = None) -> None:
        """Upload `local` to `remote` atomically, verified, with `mode` or the local file's."""
        try:
            st = local.stat()
            sha = files.sha256_file(local)
        except OSError as e:
            raise TransferError(self.node.name, f"put {local}: {e.strerror}") from e
        tmp = remote.parent / files.temp_name(remote)
        try:
            with open(local, "rb") as src:
                sent = self._openssh(f"cat > {files.remote_arg(tmp)}", stdin=src)
            if not sent:
                self._sftp_client().put(str(local), files.sftp_path(tmp), confirm=True)
        except (OSError, SSHException) as e:
            self.run(f"rm -f -- {files.remote_arg(tmp)}", check=False)
            raise TransferError(self.node.name, f"put {local} -> {remote}: {e}") from e
        res = self.run(files.verify_put_command(tmp, remote, mode if mode is not None
                                                else st.st_mode & 0o7777, st.st_size, sha),
                       check=False)
        if not res.ok:
            why = res.stderr.strip().splitlines()[-1:] or [f"exit {res.exit_code}"]
            raise TransferError(self.node.name, f"put {local} -> {remote}: {why[0]}")

    def get(self, remote: PurePosixPath, local: Path) -> None:
        """Download `remote` to the file `local` atomically, verified, with the remote mode.

        The remote size/mode/sha256 are read on a second channel while the bytes stream, so
        the remote hash costs no extra wall time when the node has a spare core.
        """
        self.open()
        stat_box: list[files.RemoteFile | BaseException] = []

        def remote_stat() -> None:
            try:
                stat_box.append(files.remote_stat(self, remote))
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                stat_box.append(e)

        stat_thread = threading.Thread(target=remote_stat, name=f"stat-{self.node.name}")
        stat_thread.start()

        def fill(tmp: Path) -> None:
            with open(tmp, "wb") as out:
                if self._openssh(f"cat -- {files.remote_arg(remote)}", stdout=out):
                    return
            self._sftp_client().get(files.sftp_path(remote), str(tmp))

        try:
            tmp = files.write_atomic_from(local, fill)
        except (OSError, SSHException) as e:
            stat_thread.join()
            if isinstance(stat_box[0], BaseException):
                raise stat_box[0] from None
            raise TransferError(self.node.name, f"get {remote} -> {local}: {e}") from e
        finally:
            stat_thread.join()
        want = stat_box[0]
        if isinstance(want, BaseException):
            tmp.unlink(missing_ok=True)
            raise want
        files.finish_get(self.node.name, tmp, local, want)

    def _sftp_client(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            self._transport()
            assert self._conn is not None
            self._sftp = self._conn.client.open_sftp()
        return self._sftp

    @contextmanager
    def sftp_reader(self, remote: PurePosixPath, offset: int = 0) -> Iterator[_SFTPStream]:
        """The remote file from byte `offset` on, over paramiko SFTP with read-ahead.

        For bulk reads when `openssh_command()` is None (no `ssh` installed, use_openssh off,
        or a ProxyJump/ProxyCommand node, which paramiko reaches through Fabric's gateway with
        every hop's host key checked). Each reader has its own SFTP channel, so streams of one
        node may run in parallel threads on an open connection.

        Raises:
            TransferError: the file cannot be opened or read (names the node and path).
        """
        self.open()
        assert self._conn is not None
        where = f"reading {remote} over SFTP"
        try:
            sftp = self._conn.client.open_sftp()
        except (OSError, SSHException) as e:
            raise TransferError(self.node.name, f"{where}: cannot open SFTP: {e}") from e
        try:
            try:
                f = sftp.open(files.sftp_path(remote), "rb")
                size = f.stat().st_size or 0
                f.seek(offset)
                if offset < size:
                    f.prefetch(size)
            except (OSError, SSHException) as e:
                raise TransferError(self.node.name, f"{where}: {e}") from e
            with f:
                yield _SFTPStream(f, self.node.name, where)
        finally:
            sftp.close()

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

    def _openssh(self, remote_cmd: str, *, stdin: IO[bytes] | None = None,
                 stdout: IO[bytes] | None = None) -> bool:
        """Stream through OpenSSH `ssh` (2-3x paramiko's throughput); False: use paramiko.

        Raises OSError when the remote command itself failed.
        """
        base = self.openssh_command()
        if base is None:
            return False
        proc = subprocess.run([*base, remote_cmd],
                              stdin=stdin if stdin is not None else subprocess.DEVNULL,
                              stdout=stdout if stdout is not None else subprocess.DEVNULL,
                              stderr=subprocess.PIPE, check=False)
        if proc.returncode == 0:
            return True
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        msg = err[-1] if err else f"ssh exited {proc.returncode}"
        if proc.returncode == 255:  # ssh itself failed; our paramiko connection works
            log.info("[%s] OpenSSH could not connect (%s); using paramiko", self.node.name, msg)
            if stdin is not None:
                stdin.seek(0)
            if stdout is not None:
                stdout.seek(0)
                stdout.truncate()
            return False
        raise OSError(msg)


class _SFTPStream:
    """`read(n)` of an SFTP file, errors turned into TransferError naming node and path."""

    def __init__(self, f: paramiko.SFTPFile, node: str, where: str) -> None:
        self._f, self._node, self._where = f, node, where

    def read(self, n: int = -1) -> bytes:
        try:
            data: bytes = self._f.read(n if n >= 0 else None)
            return data
        except (OSError, SSHException) as e:
            raise TransferError(self._node, f"{self._where}: {e}") from e


def _collect(chan: paramiko.Channel,
             deadline: float | None) -> tuple[bytes, bytes, int | None]:
    """Read stdout/stderr until the exit status and the end of output; exit None on `deadline`.

    sshd sends the exit status when the command exits, which can be before the last of its
    output (still in sshd's pipe) is sent: the output is complete only at EOF. A background
    process that keeps the output open gets `_EOF_GRACE` seconds after the exit status, then
    what arrived is returned (`ssh` itself would wait for it).
    """
    out, err = bytearray(), bytearray()
    fd = chan.fileno()  # readable when either stream has data or the channel closes
    exited_at: float | None = None
    while True:
        while chan.recv_ready():
            out += chan.recv(1 << 16)
        while chan.recv_stderr_ready():
            err += chan.recv_stderr(1 << 16)
        if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
            exited_at = time.monotonic() if exited_at is None else exited_at
            if (chan.eof_received or chan.closed
                    or time.monotonic() - exited_at >= _EOF_GRACE):
                return bytes(out), bytes(err), chan.recv_exit_status()
        if chan.closed and not chan.exit_status_ready():
            raise SSHException("channel closed without an exit status")
        wait = 0.2
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return bytes(out), bytes(err), None
            wait = min(wait, left)
        select.select([fd], [], [], wait)

