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
    verify_put_command(tmp, final, mode, size, sha) the one remote command that checks an upload
                                                   and renames it into place
"""

from __future__ import annotations

import os
import secrets
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from orchestrate_bloom.fileio import sha256_file

from orchestrator.errors import TransferError

if TYPE_CHECKING:
    from orchestrator.remote.transport import Transport

CHUNK = 1 << 20


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
    fields = text.split()
    if len(fields) != 3 or not fields[0].isdigit() or len(fields[2]) != 64:
        raise TransferError(node, f"cannot stat {path}: unexpected reply {text.strip()[:200]!r}")
    return RemoteFile(PurePosixPath(str(path)), int(fields[0]), int(fields[1], 8) & 0o7777,
                      fields[2].lower())


# `f` must be a regular file (after following links, for single-file gets the caller named).
REMOTE_STAT_SCRIPT = (
    '[ -f "$f" ] || { echo "not a regular file" >&2; exit 3; }; '
    's=$(stat -L -c "%s %a" -- "$f") && h=$(' + "{hash}" + ' < "$f") && echo "$s ${h%% *}"'
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


def verify_put_command(tmp: PurePosixPath, final: PurePosixPath, mode: int, size: int,
                       sha: str) -> str:
    """Remote command: chmod the uploaded temp file, check size + sha256, rename it into place.

    On mismatch the temp file is removed, the final name is untouched, and the command exits 3
    printing what it found.
    """
    t, f = remote_arg(tmp), remote_arg(final)
    return (
        f"t={t}; chmod {mode:o} -- \"$t\" && s=$(stat -c %s -- \"$t\") && h=$({HASH_CMD} < \"$t\")"
        f" && if [ \"$s ${{h%% *}}\" = {shlex.quote(f'{size} {sha}')} ]; then mv -f -- \"$t\" {f};"
        f" else rm -f -- \"$t\"; echo \"uploaded copy has size $s sha256 ${{h%% *}}\" >&2; exit 3;"
        f" fi"
    )


def write_atomic_from(local: Path, fill: Callable[[Path], None]) -> Path:
    """Call `fill(tmp)` to write a sibling temp file; returns it (caller verifies + replaces)."""
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.parent / temp_name(local)
    try:
        fill(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def finish_get(node: str, tmp: Path, local: Path, want: RemoteFile) -> None:
    """Verify a downloaded temp file against the remote stat, set its mode, rename it into place.

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
        os.chmod(tmp, want.mode)
        os.replace(tmp, local)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
