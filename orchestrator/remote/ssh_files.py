"""File transfers of an SSHTransport: put, bounded get, SFTP reader, the OpenSSH bulk path.

    ssh_files.put(t, Path("env.sh"), PurePosixPath("/srv/jobs/j/env.sh"), 0o600)
    ssh_files.get(t, PurePosixPath("/srv/jobs/j/ranks/0/stdout.log"), Path("logs/r0.log"),
                  files.LOG_MODE)

Bulk bytes stream through OpenSSH `ssh host cat` when `ssh` is installed (~3x paramiko SFTP
here, see bench/fanout.py), else paramiko SFTP. The remote path is shell-quoted by us.

Uploads: written under `umask 077` (0600 from the first byte, secrets included), then the node
reports size + sha256 of the copy, compared here (no content-derived value on a command line),
then chmod + rename into place.
Downloads: the node's stat (regular file, size, sha256) first; the stream is then read at most
to that size + 1 byte (a longer or endless stream fails with a one-line TransferError), lands
under an O_EXCL temp name, is verified and renamed with a mode chosen by the caller.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING

import paramiko
from paramiko.ssh_exception import SSHException

from orchestrator.errors import TransferError
from orchestrator.remote import files

if TYPE_CHECKING:
    from orchestrator.remote.ssh import SSHTransport

log = logging.getLogger(__name__)


def put(t: SSHTransport, local: Path, remote: PurePosixPath, mode: int | None) -> None:
    """Upload `local` to `remote` atomically, verified, with `mode` or the local file's."""
    name = t.node.name
    try:
        st = local.stat()
        sha = files.sha256_file(local)
    except OSError as e:
        raise TransferError(name, f"put {local}: {e.strerror}") from e
    tmp = remote.parent / files.temp_name(remote)
    rtmp = files.remote_arg(tmp)
    what = f"put {local} -> {remote}"
    try:
        with open(local, "rb") as src:
            sent = _openssh_send(t, f"{files.UPLOAD_UMASK}; cat > {rtmp}", src)
        if not sent:  # SFTP keeps the mode of the file it truncates: create it 0600 first
            t.run(f"rm -f -- {rtmp}; {files.UPLOAD_UMASK}; : > {rtmp}", check=True)
            t.sftp_client().put(str(local), files.sftp_path(tmp), confirm=True)
        res = t.run(files.put_verify_command(tmp, mode if mode is not None
                                             else st.st_mode & 0o7777), check=False)
        if not res.ok:
            why = res.stderr.strip().splitlines()[-1:] or [f"exit {res.exit_code}"]
            raise TransferError(name, f"{what}: {why[0][:200]}")
        files.check_put_reply(name, what, res.stdout, st.st_size, sha)
        t.run(files.put_commit_command(tmp, remote), check=True)
    except (OSError, SSHException) as e:
        t.run(f"rm -f -- {rtmp}", check=False)
        raise TransferError(name, f"{what}: {e}") from e
    except BaseException:
        t.run(f"rm -f -- {rtmp}", check=False)
        raise


def get(t: SSHTransport, remote: PurePosixPath, local: Path, mode: int) -> None:
    """Download the regular file `remote` to `local`, bounded by its size, verified, `mode`."""
    want = files.remote_stat(t, remote)
    what = f"get {remote} -> {local}"

    def fill(out: IO[bytes]) -> None:
        # `head -c`: a log still being written has grown since the stat; its first `size`
        # bytes are what was hashed. A node that sends more anyway is stopped at size + 1.
        if _openssh_read(t, f"head -c {want.size} -- {files.remote_arg(remote)}", out,
                         want.size, what):
            return
        with sftp_reader(t, remote) as src:
            files.copy_bounded(files.prefix_reader(src.read, want.size), out, want.size,
                               t.node.name, what)

    try:
        tmp = files.write_atomic_from(local, fill)
    except (OSError, SSHException) as e:
        raise TransferError(t.node.name, f"{what}: {e}") from e
    files.finish_get(t.node.name, tmp, local, want, files.local_mode(mode))


class SFTPStream:
    """`read(n)` of an SFTP file, errors turned into TransferError naming node and path."""

    def __init__(self, f: paramiko.SFTPFile, node: str, where: str) -> None:
        self._f, self._node, self._where = f, node, where

    def read(self, n: int = -1) -> bytes:
        try:
            data: bytes = self._f.read(n if n >= 0 else None)
            return data
        except (OSError, SSHException) as e:
            raise TransferError(self._node, f"{self._where}: {e}") from e


@contextmanager
def sftp_reader(t: SSHTransport, remote: PurePosixPath, offset: int = 0) -> Iterator[SFTPStream]:
    """The remote file from byte `offset` on, over paramiko SFTP with read-ahead (see
    SSHTransport.sftp_reader). Read-ahead is asked for at most the size SFTP reports."""
    conn = t.connection()
    where = f"reading {remote} over SFTP"
    try:
        sftp = conn.client.open_sftp()
    except (OSError, SSHException) as e:
        raise TransferError(t.node.name, f"{where}: cannot open SFTP: {e}") from e
    try:
        try:
            f = sftp.open(files.sftp_path(remote), "rb")
            size = f.stat().st_size or 0
            f.seek(offset)
            if offset < size:
                f.prefetch(size)
        except (OSError, SSHException) as e:
            raise TransferError(t.node.name, f"{where}: {e}") from e
        with f:
            yield SFTPStream(f, t.node.name, where)
    finally:
        sftp.close()


def _fallback(t: SSHTransport, proc_err: bytes, code: int) -> bool:
    """After `ssh` exited `code`: True to fall back to paramiko (ssh itself failed), else
    raise OSError with ssh's last stderr line."""
    err = proc_err.decode("utf-8", "replace").strip().splitlines()
    msg = err[-1][:200] if err else f"ssh exited {code}"
    if code == 255:  # ssh itself failed; our paramiko connection works
        log.info("[%s] OpenSSH could not connect (%s); using paramiko", t.node.name, msg)
        return True
    raise OSError(msg)


def _openssh_send(t: SSHTransport, remote_cmd: str, src: IO[bytes]) -> bool:
    """Feed `src` to `remote_cmd` through OpenSSH; False: use paramiko instead."""
    base = t.openssh_command()
    if base is None:
        return False
    proc = subprocess.run([*base, remote_cmd], stdin=src, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, check=False)
    if proc.returncode == 0:
        return True
    _fallback(t, proc.stderr[-4096:], proc.returncode)
    src.seek(0)
    return False


def _openssh_read(t: SSHTransport, remote_cmd: str, out: IO[bytes], limit: int,
                  what: str) -> bool:
    """Copy `remote_cmd`'s stdout into `out`, at most `limit` bytes; False: use paramiko."""
    base = t.openssh_command()
    if base is None:
        return False
    proc = subprocess.Popen([*base, remote_cmd], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        files.copy_bounded(proc.stdout.read, out, limit, t.node.name, what)
    except BaseException:
        proc.kill()
        raise
    finally:
        proc.stdout.close()
        err = proc.stderr.read(1 << 16)
        proc.stderr.close()
        proc.wait()
    if proc.returncode == 0:
        return True
    _fallback(t, err, proc.returncode)
    out.seek(0)
    out.truncate()
    return False
