"""Node access for `orchestrate collect-ckpt`: list a job's checkpoint files, stream one file.

Listing runs a small stdlib-only Python program on the node through the node's Transport
(orchestrator/remote/, strict host keys): it prints JSON with each rank folder's entries
(symlinks and other kinds are reported as such, never followed), the manifests' text and the
strategy files. Streaming runs `cat` (or `tail -c +OFFSET+1` to resume at an offset) through
the OpenSSH client with the transport's own settings (`SSHTransport.openssh_command()`):
scp's throughput (a node behind one ProxyJump hop too, through a ProxyCommand). Without the
OpenSSH client, or behind several hops or an ssh_config ProxyCommand, it reads over paramiko
SFTP on the transport's connection (`SSHTransport.sftp_reader()`, ~3x slower here, see
bench/collect.py), also from an offset.
A `connection: local` node's files are read directly.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO, Any

from orchestrator.config.inventory import Connection
from orchestrator.errors import CheckpointError, ConnectError, RemoteError
from orchestrator.remote.transport import Transport, tool_answer

LIST_TIMEOUT_S = 120.0

# Runs on the node with only the standard library. argv: job_dir rank...
LIST_SCRIPT = r"""
import hashlib, json, os, stat, sys
job = os.path.abspath(os.path.expanduser(sys.argv[1]))
mode = sys.argv[2]
def kind(p):
    try:
        m = os.lstat(p).st_mode
    except FileNotFoundError:
        return "missing"
    return "file" if stat.S_ISREG(m) else "dir" if stat.S_ISDIR(m) else (
        "symlink" if stat.S_ISLNK(m) else "other")
def entries(d):
    out = {}
    if kind(d) != "dir":
        return kind(d), out
    for name in sorted(os.listdir(d)):
        p = os.path.join(d, name)
        k = kind(p)
        e = {"kind": k, "size": os.lstat(p).st_size}
        if k == "file" and name.endswith(".json") and e["size"] < 1 << 20:
            with open(p, encoding="utf-8", errors="replace") as f:
                e["text"] = f.read()
        out[name] = e
    return "dir", out
if mode == "list":
    res = {"job_dir": job, "ranks": {}, "strategy": {}}
    for r in sys.argv[3:]:
        k, files = entries(os.path.join(job, "output", "checkpoint", "rank_" + r))
        res["ranks"][r] = {"kind": k, "files": files}
    res["strategy_kind"], res["strategy"] = entries(os.path.join(job, "output", "strategy"))
else:
    res = {}
    for rel in sys.argv[3:]:
        h = hashlib.sha256()
        try:
            with open(os.path.join(job, rel), "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            res[rel] = h.hexdigest()
        except OSError as e:
            res[rel] = "error: " + e.strerror
print(json.dumps(res))
"""


def _run_script(t: Transport, what: str, args: Sequence[str],
                timeout: float) -> dict[str, Any]:
    """LIST_SCRIPT's JSON object (transport.tool_answer: RemoteError naming the node)."""
    node = t.node
    res = t.run([node.python, "-c", LIST_SCRIPT, *args], check=False, timeout=timeout)
    return tool_answer(res, what)


def list_job(t: Transport, job_dir: PurePosixPath, ranks: Sequence[int]) -> dict[str, Any]:
    """One node's raw listing: {"job_dir", "ranks": {r: {"kind", "files"}}, "strategy"}."""
    return _run_script(t, "listing checkpoints", [str(job_dir), "list", *map(str, ranks)],
                       LIST_TIMEOUT_S)


def hash_files(t: Transport, job_dir: PurePosixPath, rel_paths: Sequence[str]) -> dict[str, str]:
    """sha256 of files under the job folder, computed on the node: {rel: hex or 'error: ..'}."""
    if not rel_paths:
        return {}
    return _run_script(t, "hashing checkpoint files", [str(job_dir), "hash", *rel_paths],
                       LIST_TIMEOUT_S * 30)


@contextmanager
def open_stream(t: Transport, path: PurePosixPath, offset: int) -> Iterator[IO[bytes]]:
    """A readable byte stream of the node's file `path` from byte `offset` on.

    Raises `RemoteError` on leaving if the reader (ssh/tail) failed.
    """
    node = t.node
    if node.connection is Connection.LOCAL:
        with open(Path(path), "rb") as f:
            f.seek(offset)
            yield f
        return
    base = getattr(t, "openssh_command", lambda: None)()
    if base is None:
        # no `ssh` client, or a gateway OpenSSH is not given: paramiko SFTP through the
        # transport's own connection (gateway hops included), slower but the same bytes
        reader = getattr(t, "sftp_reader", None)
        if reader is None:
            raise CheckpointError(
                f"[{node.name}] cannot stream {path}: this node's transport has neither the "
                "OpenSSH client nor SFTP"
            )
        with reader(path, offset) as stream:
            yield stream
        return
    # `cat` reads 128 KiB blocks; `tail -c +N` only 8 KiB ones (4x the CPU on the node), so
    # tail only to resume at an offset
    read = ["cat", "--", str(path)] if offset == 0 else ["tail", "-c", f"+{offset + 1}", str(path)]
    argv = [*base, shlex.join(read)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    ok = False
    try:
        yield proc.stdout
        ok = True
    finally:
        if not ok and proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace").strip()
        proc.stderr.close()
        code = proc.wait()
    if code != 0:
        tail = err.splitlines()[-1:] or [f"exit {code}"]
        cls = ConnectError if code == 255 else RemoteError
        raise cls(node.name, f"reading {path} failed: {tail[0]}")
