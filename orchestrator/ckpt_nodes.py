"""Node access for `orchestrate collect-ckpt`: list a job's checkpoint files, stream one file.

Listing runs a small stdlib-only Python program on the node (`python3 -c ...`) that prints
JSON: each rank folder's regular files (symlinks and other kinds are reported as such, never
followed), the manifests' text, and the strategy files. Streaming reads `tail -c +OFFSET+1`
through OpenSSH (`ssh -o BatchMode=yes -o StrictHostKeyChecking=yes`, the inventory's
known_hosts files, AES-GCM), which keeps scp's throughput (paramiko's SFTP `get` is ~2.5x
slower on these machines, see NOTES.md) and lets an interrupted download resume at an
offset. A `connection: local` node is read directly.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO, Any

from orchestrator.errors import ConnectError, RemoteError
from orchestrator.inventory import Connection, HostKeyPolicy, Inventory, Node

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


def ssh_argv(inv: Inventory, node: Node) -> list[str]:
    """`ssh` with strict host keys, keys/agent only, no terminal, fast cipher; host last."""
    known = [str(Path("~/.ssh/known_hosts").expanduser()), *map(str, inv.known_hosts)]
    policy = "accept-new" if inv.host_key_policy is HostKeyPolicy.ACCEPT_NEW else "yes"
    argv = ["ssh", "-T", "-o", "BatchMode=yes", "-o", f"StrictHostKeyChecking={policy}"]
    argv += ["-o", "UserKnownHostsFile=" + " ".join(known), "-o", "ConnectTimeout=10"]
    argv += ["-o", "Ciphers=aes128-gcm@openssh.com,aes256-gcm@openssh.com,aes128-ctr"]
    argv += ["-o", "KexAlgorithms=curve25519-sha256,curve25519-sha256@libssh.org"]
    argv += ["-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]
    if inv.ssh_config is not None:
        argv += ["-F", str(inv.ssh_config)]
    if node.port is not None:
        argv += ["-p", str(node.port)]
    if node.user is not None:
        argv += ["-l", node.user]
    if node.identity_file is not None:
        argv += ["-i", node.identity_file, "-o", "IdentitiesOnly=yes"]
    return [*argv, "--", node.host]


def _node_argv(inv: Inventory, node: Node, argv: Sequence[str]) -> list[str]:
    if node.connection is Connection.LOCAL:
        return list(argv)
    return [*ssh_argv(inv, node), shlex.join(argv)]


def _run_script(inv: Inventory, node: Node, args: Sequence[str], timeout: float) -> Any:
    argv = _node_argv(inv, node, [node.python, "-c", LIST_SCRIPT, *args])
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RemoteError(
            node.name, f"listing checkpoints timed out after {timeout:.0f} s"
        ) from exc
    except OSError as exc:
        raise ConnectError(node.name, f"cannot start {argv[0]}: {exc}") from exc
    if proc.returncode == 255 and node.connection is Connection.SSH:
        tail = proc.stderr.strip().splitlines()[-1:] or ["ssh failed"]
        raise ConnectError(node.name, f"unreachable ({node.host}): {tail[0]}")
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        raise RemoteError(node.name, f"listing checkpoints failed: {tail[0]}")
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise RemoteError(node.name, f"listing printed no JSON: {proc.stdout[:200]!r}") from exc


def list_job(inv: Inventory, node: Node, job_dir: PurePosixPath, ranks: Sequence[int]) -> Any:
    """One node's raw listing: {"job_dir", "ranks": {r: {"kind", "files"}}, "strategy"}."""
    return _run_script(inv, node, [str(job_dir), "list", *map(str, ranks)], LIST_TIMEOUT_S)


def hash_files(
    inv: Inventory, node: Node, job_dir: PurePosixPath, rel_paths: Sequence[str]
) -> dict[str, str]:
    """sha256 of files under the job folder, computed on the node: {rel: hex or 'error: ..'}."""
    if not rel_paths:
        return {}
    result: dict[str, str] = _run_script(
        inv, node, [str(job_dir), "hash", *rel_paths], LIST_TIMEOUT_S * 30
    )
    return result


@contextmanager
def open_stream(
    inv: Inventory, node: Node, path: PurePosixPath, offset: int
) -> Iterator[IO[bytes]]:
    """A readable byte stream of the node's file `path` from byte `offset` on.

    Raises `RemoteError` on leaving if the reader (ssh/tail) failed.
    """
    if node.connection is Connection.LOCAL:
        with open(path, "rb") as f:
            f.seek(offset)
            yield f
        return
    argv = [*ssh_argv(inv, node), shlex.join(["tail", "-c", f"+{offset + 1}", str(path)])]
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
