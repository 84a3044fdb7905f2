"""Local transport: a `connection: local` node is this machine; no SSH at all.

    with LocalTransport(node) as t:
        t.run("hostname")                       # bash -c, in the current directory
        t.put(Path("a"), PurePosixPath("/tmp/b"))   # atomic copy, verified, mode kept

Commands run with `bash -c` (the same line an SSH node's login shell would get), env is passed
in the process environment (never pasted into the line), `timeout=S` kills the whole process
group after S seconds and raises CommandTimeout. `put`/`get` copy through a temp name in the
destination folder, verify size + sha256 and rename into place; `~` expands to $HOME.
"""

from __future__ import annotations

import os
import shlex
import signal
import stat
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import IO

from orchestrator.config.inventory import Node
from orchestrator.errors import CommandTimeout, RemoteCommandError, TransferError
from orchestrator.remote import files
from orchestrator.remote.transport import CommandResult


class LocalTransport:
    """Runs commands and copies files on this machine, with the Transport interface."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def __enter__(self) -> LocalTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Nothing to connect; present for interface parity with SSHTransport."""

    def close(self) -> None:
        """Nothing to close."""

    def run(self, cmd: Sequence[str] | str, *, check: bool = True, timeout: float | None = None,
            env: Mapping[str, str] | None = None) -> CommandResult:
        """Run `cmd` with bash (a list is shlex-joined); see SSHTransport.run."""
        line = cmd if isinstance(cmd, str) else shlex.join(cmd)
        child_env = dict(os.environ)
        child_env.update(env or {})
        start = time.monotonic()
        proc = subprocess.Popen(["bash", "-c", line], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise CommandTimeout(self.node.name, f"`{line}` did not finish in {timeout:g}s") \
                from None
        except BaseException:
            _kill_group(proc)
            raise
        result = CommandResult(self.node.name, line, proc.returncode,
                               out.decode("utf-8", "replace"), err.decode("utf-8", "replace"),
                               time.monotonic() - start)
        if check and not result.ok:
            raise RemoteCommandError(result)
        return result

    def put(self, local: Path, remote: PurePosixPath, *, mode: int | None = None) -> None:
        """Copy `local` to `remote` atomically, verified, with `mode` or the source's mode."""
        self._copy(local, _expand(remote), mode, what=f"put {local} -> {remote}")

    def get(self, remote: PurePosixPath, local: Path, *, mode: int = files.LOG_MODE) -> None:
        """Copy the regular file `remote` to `local` atomically, verified, with `mode`."""
        self._copy(_expand(remote), local, files.local_mode(mode),
                   what=f"get {remote} -> {local}")

    def _copy(self, src: Path, dst: Path, mode: int | None, what: str) -> None:
        try:
            with open(src, "rb") as fh:
                st = os.fstat(fh.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise TransferError(self.node.name, f"{what}: not a regular file")

                def fill(out: IO[bytes]) -> None:  # the file as it was at the fstat
                    files.copy_bounded(files.prefix_reader(fh.read, st.st_size), out,
                                       st.st_size, self.node.name, what)

                tmp = files.write_atomic_from(dst, fill)
            want = files.RemoteFile(PurePosixPath(str(src)), st.st_size,
                                    mode if mode is not None else st.st_mode & 0o7777,
                                    files.sha256_file(tmp))  # this machine: the copy is it
        except OSError as e:
            raise TransferError(self.node.name, f"{what}: {e.strerror or e}") from e
        files.finish_get(self.node.name, tmp, dst, want, want.mode)


def _expand(path: PurePosixPath) -> Path:
    return Path(os.path.expanduser(str(path)))


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the command's whole process group and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
