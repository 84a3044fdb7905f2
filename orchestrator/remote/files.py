"""File-transfer helpers shared by every transport: atomic writes, sha256, safe paths.

Pure helpers (no network):

    sha256_file(path) -> str                      hex digest (orchestrate_bloom.fileio's)
    safe_join(dest, relpath) -> Path               refuses '..', absolute paths, NUL/newlines, and
                                                   any existing symlink on the way (TransferError)
    remote_arg(path) -> str                        shell-quoted remote path; a leading `~/` stays
                                                   expandable ("$HOME"/...)
    sftp_path(path) -> str                         `~/x` -> `x` (SFTP and scp start in $HOME)
    temp_name(path) -> name of a hidden sibling used for atomic writes
    parse_stat_line(node, path, text) -> RemoteFile

Over any Transport (SSH or local):

    remote_stat(t, path) -> RemoteFile             size, mode, sha256 of one remote file
    put_verify_command(tmp, mode) / put_commit_command(tmp, final)
                                                   report an upload's size + sha256 (compared
                                                   here: nothing derived from the content is
                                                   ever on a node's command line), then rename

Nodes are untrusted (docs/security.md): a downloaded file gets a mode chosen here
(`local_mode`: LOG_MODE, CKPT_MODE; never exec, setuid, setgid or sticky bits), is read at
most to the size the node announced plus one byte (`copy_bounded`), and is written to an
O_EXCL temp name with random letters in the destination folder.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING

from orchestrate_bloom.fileio import sha256_file

from orchestrator.errors import TransferError

if TYPE_CHECKING:
    from orchestrator.remote.transport import Transport

CHUNK = 1 << 20
LOG_MODE = 0o644  # logs and plog archives fetched from nodes
CKPT_MODE = 0o444  # checkpoints and strategy files fetched from nodes
# every upload is 0600 from its first byte until its final chmod, and its (random) temp name
# is created with O_EXCL (noclobber): a name planted on the node, symlink or not, is never opened
UPLOAD_UMASK = "umask 077; set -C"


def local_mode(mode: int) -> int:
    """The mode a file from a node may get here: read/write bits only (no x, s, t)."""
    return mode & 0o666


def prefix_reader(read: Callable[[int], bytes], size: int) -> Callable[[int], bytes]:
    """`read`, ending after `size` bytes (a file that grows after its stat is read as it was)."""
    left = [size]

    def read_prefix(n: int) -> bytes:
        if left[0] <= 0:
            return b""
        data = read(min(n, left[0]))
        left[0] -= len(data)
        return data

    return read_prefix


def copy_bounded(read: Callable[[int], bytes], out: IO[bytes], limit: int, node: str,
                 what: str) -> int:
    """Copy from `read` into `out`, at most `limit` bytes; reads at most `limit` + 1.

    Raises:
        TransferError: the source had more than `limit` bytes (nothing past `limit` written).
    """
    n = 0
    while True:
        chunk = read(min(CHUNK, limit - n + 1))
        if not chunk:
            return n
        if n + len(chunk) > limit:
            raise TransferError(node, f"{what}: the node sent more than the {limit} bytes it "
                                      f"announced; stopped after {n} bytes")
        out.write(chunk)
        n += len(chunk)


@dataclass(frozen=True)
class RemoteFile:
    """What the remote side says about one regular file."""

    path: PurePosixPath
    size: int
    mode: int  # permission bits only (0o7777)
    sha256: str


def temp_name(path: PurePosixPath | Path) -> str:
    """A hidden sibling name for writing `path` atomically (same dir, so rename is atomic)."""
    return f".{path.name}.orchestrate-tmp-{secrets.token_hex(4)}"


def remote_arg(path: PurePosixPath | str) -> str:
    """Quote a remote path for the node's shell; `~` and `~/x` still expand to $HOME."""
    text = str(path)
    if text == "~":
        return '"$HOME"'
    if text.startswith("~/"):
        return '"$HOME"/' + shlex.quote(text[2:])
    return shlex.quote(text)


def sftp_path(path: PurePosixPath | str) -> str:
    """Path for SFTP/scp, which start in the login directory: `~/x` -> `x`, `~` -> `.`."""
    text = str(path)
    if text == "~":
        return "."
    return text[2:] if text.startswith("~/") else text


def check_relpath(relpath: str) -> tuple[str, ...]:
    """Split a remote relative path into safe parts; TransferError if it could escape."""
    if not relpath or "\0" in relpath or "\n" in relpath or "\r" in relpath:
        raise TransferError("-", f"refusing remote file name {relpath!r}: empty or control chars")
    if relpath.startswith("/"):
        raise TransferError("-", f"refusing absolute remote path {relpath!r}")
    parts = tuple(p for p in relpath.split("/") if p not in ("", "."))
    if not parts or any(p == ".." for p in parts):
        raise TransferError("-", f"refusing remote path {relpath!r}: it would leave the "
                                 "destination")
    return parts


def safe_join(dest: Path, relpath: str) -> Path:
    """`dest/relpath`, guaranteed to stay inside `dest`.

    Refuses '..' components, absolute paths, control characters, and existing symlinks at any
    level below `dest` (a symlink planted locally must not redirect a write either).
    """
    parts = check_relpath(relpath)
    out = dest
    for part in parts:
        out = out / part
        if out.is_symlink():
            raise TransferError("-", f"refusing to write through symlink {out}")
    root = os.path.realpath(dest)
    real = os.path.realpath(out)
    if os.path.commonpath([root, real]) != root:
        raise TransferError("-", f"refusing remote path {relpath!r}: resolves outside {dest}")
    return out


def parse_stat_line(node: str, path: PurePosixPath | str, text: str) -> RemoteFile:
    """Parse `<size> <octal mode> <sha256>` as printed by REMOTE_STAT_SCRIPT."""
    m = _STAT_LINE.fullmatch(text.strip()[:200])
    if m is None:
        raise TransferError(node, f"cannot stat {path}: unexpected reply {text.strip()[:80]!r}")
    return RemoteFile(PurePosixPath(str(path)), int(m[1]), int(m[2], 8) & 0o7777, m[3].lower())


_STAT_LINE = re.compile(r"([0-9]{1,20}) ([0-7]{1,6}) ([0-9a-fA-F]{64})")


# `f` must be a regular file (after following links, for single-file gets the caller named).
REMOTE_STAT_SCRIPT = (
    '[ -f "$f" ] || { echo "not a regular file" >&2; exit 3; }; '
    's=$(stat -L -c "%s %a" -- "$f") && '
    # the hash covers exactly the stat'ed size: a log still being written has grown since
    'h=$(head -c "${s%% *}" < "$f" | ' + "{hash}" + ') && echo "$s ${h%% *}"'
)
# openssl uses SHA-NI where the CPU has it (~4x coreutils sha256sum on this machine)
HASH_CMD = ("if command -v openssl >/dev/null 2>&1; then openssl dgst -sha256 -r; "
            "else sha256sum; fi")


def remote_stat(t: Transport, path: PurePosixPath) -> RemoteFile:
    """Size, mode and sha256 of a regular file on the node (one command)."""
    script = REMOTE_STAT_SCRIPT.replace("{hash}", HASH_CMD)
    res = t.run(f"f={remote_arg(path)}; {script}", check=False)
    if not res.ok:
        why = res.stderr.strip().splitlines()[-1:] or [f"exit {res.exit_code}"]
        raise TransferError(t.node.name, f"cannot read {path}: {why[0]}")
    return parse_stat_line(t.node.name, path, res.stdout)


def put_verify_command(tmp: PurePosixPath, mode: int) -> str:
    """Remote command: chmod the uploaded temp file and print `<size> <sha256>` of it.

    The caller compares the reply with the local file (nothing derived from the content, which
    may be a secret, goes on the node's command line, where /proc/*/cmdline shows it) and then
    runs put_commit_command, or removes the temp file.
    """
    t = remote_arg(tmp)
    return (f"t={t}; chmod {mode & 0o7777:o} -- \"$t\" && s=$(stat -c %s -- \"$t\") && "
            f"h=$({HASH_CMD} < \"$t\") && echo \"$s ${{h%% *}}\"")


def put_commit_command(tmp: PurePosixPath, final: PurePosixPath) -> str:
    """Remote command: rename a verified upload into place."""
    return f"mv -f -- {remote_arg(tmp)} {remote_arg(final)}"


def check_put_reply(node: str, what: str, reply: str, size: int, sha: str) -> None:
    """Compare put_verify_command's reply with the local size and sha256 (TransferError)."""
    m = re.fullmatch(r"([0-9]{1,20}) ([0-9a-fA-F]{64})", reply.strip()[:200])
    if m is None or (int(m[1]), m[2].lower()) != (size, sha):
        # no hash in the message: the file may be a secret (a hash is a guessing oracle)
        got = f"size {m[1]}, a different sha256" if m else f"reply {reply.strip()[:80]!r}"
        raise TransferError(node, f"{what}: uploaded copy has {got}; expected size {size}")


def write_atomic_from(local: Path, fill: Callable[[IO[bytes]], None]) -> Path:
    """Call `fill(f)` on a new temp file beside `local`; returns its path (caller verifies it
    and calls finish_get). The temp file is created with O_EXCL, mode 0600 and a random name,
    so a planted name or symlink is never followed; it is removed if `fill` fails."""
    local.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{local.name}.", suffix=".orchestrate-tmp",
                                dir=local.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            fill(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def finish_get(node: str, tmp: Path, local: Path, want: RemoteFile, mode: int) -> None:
    """Verify a downloaded temp file against the remote stat, chmod it to `mode`, rename it
    into place. Downloads pass `local_mode(...)` of a mode chosen here, never the node's.

    The temp file is removed on any failure, so `local` is either the old file or the new one.
    """
    try:
        size = tmp.stat().st_size
        if size != want.size:
            raise TransferError(node, f"get {want.path}: size {size} != remote {want.size}")
        digest = sha256_file(tmp)
        if digest != want.sha256:
            raise TransferError(node, f"get {want.path}: sha256 mismatch (local {digest[:12]}…, "
                                      f"remote {want.sha256[:12]}…)")
        os.chmod(tmp, mode)
        os.replace(tmp, local)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
