"""Stage a job's files onto a node: content-addressed, so unchanged files are never re-sent.

    code = Tree.of(code_manifest(), "code")                # the `model` package
    stage_node(transport, job_id, workdir, [code], rendered, secrets, tmp)  -> Staged

Large files travel as blobs named by sha256 into `<workdir>/blobs/` (one tar per node with
only the blobs it lacks, unpacked privately and renamed into place, so a blob name only ever
holds a whole file) and are assembled once into `<workdir>/trees/<tree key>/`; a job folder
gets each tree as hard links (`cp -al`, one process). The node has the last word: blobs still
missing after unpacking are sent again. Temp names are private to each stager, so two jobs
staging onto one node at once (or nodes sharing a filesystem) do not undo each other's work.
The rendered files (launch.sh, job.yaml, rank table) are written by the first command itself
(bash `printf`, no upload).
Secrets (env.sh) never become blobs or command text: uploaded to the job folder, mode 0600.
An interrupted stage leaves its private temp names behind (`blobs/.unpack-*`,
`blobs/.incoming-*.tar`, upload temp files `blobs/.*.orchestrate-tmp-*`,
`trees/.*.partial-*`); the next stage on the node removes those in which nothing (the entry
itself or anything under it) was modified for LEFTOVER_AGE_MIN minutes, so a concurrent
stager's live temp names are never touched.
A node that already holds the code costs one round trip and a handful of processes.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shlex
import tarfile
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from orchestrate_bloom.fileio import sha256_file

from orchestrator import bundle
from orchestrator.errors import RemoteCommandError, RemoteError
from orchestrator.job.hashcache import HashCache
from orchestrator.job.render import RenderedFile
from orchestrator.job.stage_first import (  # noqa: F401 - LEFTOVER_*: re-exported
    LEFTOVER_AGE_MIN,
    LEFTOVER_GLOBS,
    STARTING,
    first_command,
    skeleton_key,
    skeleton_lines,
)
from orchestrator.job.start import START_TIMEOUT, NodeBusyError, read_start, start_command
from orchestrator.remote.transport import Transport
from orchestrator.untrusted import lines

_SKIP_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache"}
_SKIP_SUFFIXES = {".pyc", ".pyo"}
COMMAND_MAX = 96 * 1024  # a command is one argv string on the node: Linux caps those at 128 KiB
INLINE_MAX = 32 * 1024  # rendered files up to this size are written by the command itself


@dataclass(frozen=True)
class StageFile:
    """One file of a tree: `rel` is its path under the tree's destination."""

    rel: str  # POSIX path, e.g. "model/train/trainer.py"
    sha256: str
    mode: int
    source: Path  # the local file


@dataclass(frozen=True)
class Tree:
    """A folder staged as a unit, e.g. `code/` (the model package) or `data/`."""

    dest: str  # folder under the job folder: "code", "data"
    files: tuple[StageFile, ...]
    key: str  # sha256 over (rel, sha256, mode) of every file: the node-side cache name

    @classmethod
    def of(cls, files: Sequence[StageFile], dest: str) -> Tree:
        h = hashlib.sha256()
        for f in sorted(files, key=lambda f: f.rel):
            h.update(f"{f.rel}\0{f.sha256}\0{f.mode:o}\n".encode())
        return cls(dest=dest, files=tuple(files), key=h.hexdigest())


def _digest(hashes: HashCache | None) -> Callable[[Path], str]:
    """sha256 of a local file: remembered by `hashes` (hashcache.py) when given, else read."""
    return hashes.sha256 if hashes is not None else sha256_file


def tree_manifest(root: Path, prefix: str = "", hashes: HashCache | None = None
                  ) -> list[StageFile]:
    """Every regular file under `root` as `<prefix>/<relative path>` (caches skipped); with
    `hashes`, an unchanged file's sha256 is not read again (hashcache.py)."""
    digest = _digest(hashes)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.suffix in _SKIP_SUFFIXES or not path.is_file():
                continue
            rel = path.relative_to(root).as_posix()
            out.append(StageFile(rel=f"{prefix}/{rel}" if prefix else rel,
                                 sha256=digest(path),
                                 mode=0o644 | (path.stat().st_mode & 0o111), source=path))
    return out


def code_tree(model_dir: Path | None = None) -> Tree:
    """The model package as `code/orchestrate_bloom/...` (nodes get PYTHONPATH=code)."""
    return Tree.of(tree_manifest(model_dir or bundle.model_dir(), bundle.MODEL_PACKAGE), "code")


def data_tree(path: Path, hashes: HashCache | None = None) -> Tree:
    """A local dataset (folder or file) as `data/<name>[/...]`; `hashes`: see tree_manifest."""
    if path.is_dir():
        return Tree.of(tree_manifest(path, path.name, hashes), "data")
    return Tree.of([StageFile(rel=path.name, sha256=_digest(hashes)(path), mode=0o644,
                              source=path)], "data")


def _chunked(header: Sequence[str], body: Sequence[str]) -> list[str]:
    """Split `body` over as few commands as fit COMMAND_MAX, each starting with `header`."""
    base = sum(len(h) + 1 for h in header)
    commands, current, size = [], list(header), base
    for line in body:
        if size + len(line) + 1 > COMMAND_MAX and len(current) > len(header):
            commands.append("\n".join(current))
            current, size = list(header), base
        current.append(line)
        size += len(line) + 1
    commands.append("\n".join(current))
    return commands


def missing_blob_commands(workdir_abs: str, files: Sequence[StageFile]) -> list[str]:
    """Print `missing SHA` for every blob the node lacks (bash builtins only)."""
    header = ["set -eu", f"B={shlex.quote(workdir_abs + '/blobs')}"]
    shas = sorted({f.sha256 for f in files})
    body = [" ".join(shas[i:i + 200]) for i in range(0, len(shas), 200)]
    return _chunked(header, [f'for s in {b}; do [ -f "$B/$s" ] || echo "missing $s"; done'
                             for b in body])


def place_blobs_command(workdir_abs: str, tree: Tree, tar_name: str | None, token: str) -> str:
    """Move uploaded blobs into the store, then print `missing SHA` for any the tree still lacks.

    The tar is unpacked into a private folder and each blob renamed into `blobs/`: a blob name
    only ever holds a complete file, and a blob another stager (a second job, or a node sharing
    this filesystem) is reading never disappears for a moment, as it does while tar replaces
    an existing file. Exits 3 when blobs are missing (the caller sends them), 0 otherwise.
    """
    b = shlex.quote(workdir_abs + "/blobs")
    lines = ["set -eu", f"B={b}"]
    if tar_name:
        tar = shlex.quote(f"{workdir_abs}/blobs/{tar_name}")
        x = shlex.quote(f"{workdir_abs}/blobs/.unpack-{token}")
        lines += [f"rm -rf {x}; mkdir -p {x}", f"tar -xf {tar} -C {x}",
                  f'mv -f -t "$B" -- {x}/*', f"rmdir {x}", f"rm -f {tar}"]
    shas = sorted({f.sha256 for f in tree.files})
    body = [f'for s in {" ".join(shas[i:i + 200])}; do [ -f "$B/$s" ] || {{ echo "missing $s"; '
            "m=1; }; done" for i in range(0, len(shas), 200)]
    return "\n".join([*lines, "m=0", *body, '[ "$m" = 0 ] || exit 3'])


def link_tree_commands(workdir_abs: str, job_dir_abs: str, tree: Tree, token: str) -> list[str]:
    """Assemble the tree in the cache from blobs (a private partial folder), link it to the job."""
    b = shlex.quote(workdir_abs + "/blobs")
    tmp = shlex.quote(f"{workdir_abs}/trees/.{tree.key}.partial-{token}")
    final = shlex.quote(f"{workdir_abs}/trees/{tree.key}")
    header = ["set -eu", f"B={b}", f"P={tmp}"]
    body: list[str] = ['rm -rf "$P"; mkdir -p "$P"']
    dirs = sorted({str(PurePosixPath(f.rel).parent) for f in tree.files} - {"."})
    body += [f'mkdir -p "$P"/{shlex.quote(d)}' for d in dirs]
    body += [f'ln -f "$B/{f.sha256}" "$P"/{shlex.quote(f.rel)} 2>/dev/null || '
             f'cp -f "$B/{f.sha256}" "$P"/{shlex.quote(f.rel)}' for f in tree.files]
    commands = _chunked(header, body)
    j = shlex.quote(job_dir_abs)
    dest = shlex.quote(f"{job_dir_abs}/{tree.dest}")
    commands.append("\n".join([
        "set -eu",
        f"mv -T {tmp} {final} 2>/dev/null || rm -rf {tmp}",  # another stager may have won
        f"[ ! -e {dest} ] || rm -rf {dest}", f"mkdir -p {j}", f"cp -al {final} {dest}",
    ]))
    return commands


def _send_tree(t: Transport, workdir_abs: str, job_dir_abs: str, job_id: str, tree: Tree,
               missing: set[str], tmp_dir: Path) -> int:
    """Upload the tree's `missing` blobs, re-send any the node still lacks, link the tree.

    The node has the last word: blobs it reports missing after unpacking are sent once more.
    Returns the number of blobs uploaded.

    Raises:
        RemoteError: blobs still missing after the second upload.
    """
    name = t.node.name
    token = secrets.token_hex(4)  # private names: concurrent stagers may share this store
    sent = 0
    for attempt in range(2):
        todo = [f for f in tree.files if f.sha256 in missing]
        tar_name = None
        if todo:
            tar_name = f".incoming-{job_id}-{tree.key[:12]}-{token}-{attempt}.tar"
            local_tar = tmp_dir / f"{name}-{tree.key[:12]}-{token}.tar"
            _write_tar(local_tar, todo)
            try:
                t.put(local_tar, PurePosixPath(workdir_abs) / "blobs" / tar_name)
            finally:
                local_tar.unlink(missing_ok=True)
            sent += len({f.sha256 for f in todo})
        res = t.run(place_blobs_command(workdir_abs, tree, tar_name, token), check=False,
                    timeout=300)
        missing = {ln.split()[1] for ln in res.stdout.splitlines() if ln.startswith("missing ")}
        if res.ok:
            break
        if res.exit_code != 3 or not missing:
            raise RemoteCommandError(res)
    else:
        raise RemoteError(name, f"blobs still missing under {workdir_abs}/blobs after sending "
                                f"them twice: {', '.join(sorted(missing)[:3])}"
                                + (" ..." if len(missing) > 3 else ""))
    for command in link_tree_commands(workdir_abs, job_dir_abs, tree, token):
        t.run(command, check=True, timeout=300)
    return sent


def _write_tar(path: Path, files: Sequence[StageFile]) -> None:
    with tarfile.open(path, "w") as tar:
        seen = set()
        for f in files:
            if f.sha256 in seen:
                continue
            seen.add(f.sha256)
            info = tar.gettarinfo(str(f.source), arcname=f.sha256)
            info.mode = f.mode
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(f.source, "rb") as fh:
                tar.addfile(info, fh)


@dataclass(frozen=True)
class Staged:
    """What staging one node produced."""

    workdir: str  # absolute workdir on the node
    job_dir: str  # absolute job folder on the node
    sent: int  # blobs uploaded
    reused: int  # trees the node already held
    leftovers: tuple[str, ...] = ()  # stale temp names of interrupted stages removed
    pids: Mapping[str, int] | None = None  # slot -> pid when asked to start (None: not started)


def _read_first(name: str, workdir: str, stdout: str) -> tuple[dict[str, str], set[str],
                                                              list[str]]:
    """first_command's report: ({workdir, jobdir}, trees missing, leftovers removed).

    Raises:
        NodeBusyError: another live job holds the node.
        RemoteError: the job folder was not created.
    """
    info: dict[str, str] = {}
    need: set[str] = set()
    removed: list[str] = []
    for line in lines(stdout):
        key, _, value = line.partition(" ")
        if key == "tree":
            need.add(value.strip())
        elif key == "leftover":
            removed.append(value.strip())
        elif key in ("workdir", "jobdir", "busy"):
            info[key] = value.strip()
    if "busy" in info:
        raise NodeBusyError(name, info["busy"])
    if "workdir" not in info or "jobdir" not in info:
        raise RemoteError(name, f"could not create the job folder under {workdir}")
    return info, need, removed


def stage_node(t: Transport, job_id: str, workdir: str, trees: Sequence[Tree],
               rendered: Mapping[str, RenderedFile], secret_files: Mapping[str, bytes],
               tmp_dir: Path, start: bool = False) -> Staged:
    """Stage trees, rendered files and secrets into `<workdir>/jobs/<job_id>/` on one node;
    with `start`, then start its ranks in the same session (`launch.sh start`): in the first
    command itself when the node already holds every tree and nothing is left to upload.

    Raises:
        NodeBusyError: another live job holds the node.
        RemoteError: a command or transfer failed.
        JobError: the start failed (start.read_start).
    """
    name = t.node.name
    inline = {k: f for k, f in rendered.items() if len(f.text.encode()) <= INLINE_MAX}
    uploads = {k: (f.text.encode(), f.mode) for k, f in rendered.items() if k not in inline}
    uploads.update({k: (data, 0o600) for k, data in secret_files.items()})
    token = secrets.token_hex(4)  # private temp names: concurrent stagers may share a store
    res = t.run(first_command(workdir, job_id, trees, inline, start and not uploads, token),
                check=False, timeout=300)
    out, sep, started = res.stdout.partition(f"\n{STARTING}\n")
    if not sep and not res.ok:
        raise RemoteCommandError(res)
    info, need, removed = _read_first(name, workdir, out)
    pids = read_start(name, res.exit_code, started, res.stderr) if sep else None
    sent = 0
    for tree in [tr for tr in trees if tr.key in need]:
        missing: set[str] = set()
        for command in missing_blob_commands(info["workdir"], tree.files):
            out = t.run(command, check=True, timeout=300).stdout
            missing |= {ln.split()[1] for ln in out.splitlines() if ln.startswith("missing ")}
        sent += _send_tree(t, info["workdir"], info["jobdir"], job_id, tree, missing, tmp_dir)
    for fname, (data, mode) in uploads.items():  # secrets (0600) and large rendered files
        with tempfile.NamedTemporaryFile(dir=tmp_dir, delete=False) as fh:
            fh.write(data)
        os.chmod(fh.name, mode)
        try:
            t.put(Path(fh.name), PurePosixPath(info["jobdir"]) / fname, mode=mode)
        finally:
            Path(fh.name).unlink(missing_ok=True)
    skel = skeleton_key(trees, inline) if need else None  # cold: cache it for the next job
    build = "\n".join(["set -eu", f"T={shlex.quote(info['workdir'] + '/trees')}",
                       *skeleton_lines(skel, trees, shlex.quote(info["jobdir"]), token)]
                      ) if skel else ""
    if start and pids is None:  # staged in several steps: start now that all of it is there
        res = t.run((build + "\n" if build else "")
                    + start_command(shlex.quote(info["jobdir"]), resume=False), check=False,
                    timeout=START_TIMEOUT)
        pids = read_start(name, res.exit_code, res.stdout, res.stderr)
    elif build:
        t.run(build, check=False, timeout=300)
    return Staged(workdir=info["workdir"], job_dir=info["jobdir"], sent=sent,
                  reused=len(trees) - len(need), leftovers=tuple(removed), pids=pids)
