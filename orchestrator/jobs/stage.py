"""Stage a job's files onto a node: content-addressed, so unchanged files are never re-sent.

    manifest = code_manifest() + data_manifest(path) + rendered files
    stage_node(transport, job_id, workdir, manifest, secret_files)  -> absolute job dir

Files travel as blobs named by sha256 into `<workdir>/blobs/` (small rendered files inline in
the first command, the others as one tar of only the blobs the node lacks), then are
hard-linked into `<workdir>/jobs/<job_id>/`. Secrets (env.sh) never become blobs: they are
uploaded straight to the job folder with mode 0600. A node that already holds the code costs
one round trip.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shlex
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from orchestrator.errors import JobError, RemoteError
from orchestrator.remote.transport import Transport
from orchestrator.render import RenderedFile, shell_path

MODEL_DIR = Path(__file__).resolve().parent.parent.parent / "model"
_SKIP_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache"}
_SKIP_SUFFIXES = {".pyc", ".pyo"}


@dataclass(frozen=True)
class StageFile:
    """One file to place at `<job dir>/<rel>` on a node."""

    rel: str  # POSIX path under the job folder, e.g. "code/model/train.py"
    sha256: str
    mode: int
    source: Path | None = None  # local file, or
    data: bytes | None = None  # in-memory content


class NodeBusyError(JobError):
    """The node already runs another live job (the remote lock)."""

    def __init__(self, node: str, other: str) -> None:
        self.node = node
        self.other = other
        super().__init__(f"[{node}] node busy: job {other} is running there "
                         f"(stop it with: orchestrate down {other})")


def _sha_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_manifest(root: Path, prefix: str) -> list[StageFile]:
    """Every regular file under `root` as `<prefix>/<relative path>` (caches skipped)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.suffix in _SKIP_SUFFIXES or not path.is_file():
                continue
            rel = path.relative_to(root).as_posix()
            out.append(StageFile(rel=f"{prefix}/{rel}", sha256=_sha_file(path),
                                 mode=0o644 | (path.stat().st_mode & 0o111), source=path))
    return out


def code_manifest(model_dir: Path = MODEL_DIR) -> list[StageFile]:
    """The `model` package of this checkout, as `code/model/...` (nodes get PYTHONPATH=code)."""
    return tree_manifest(model_dir, "code/model")


def data_manifest(path: Path) -> list[StageFile]:
    """A local dataset (file or folder) as `data/<name>/...`."""
    if path.is_dir():
        return tree_manifest(path, f"data/{path.name}")
    return [StageFile(rel=f"data/{path.name}", sha256=_sha_file(path), mode=0o644, source=path)]


def rendered_manifest(files: Mapping[str, RenderedFile]
                      ) -> tuple[list[StageFile], dict[str, bytes]]:
    """Rendered files as blobs, except 0600 ones (secrets), returned apart."""
    blobs, secrets = [], {}
    for name, f in files.items():
        data = f.text.encode()
        if f.mode & 0o077 == 0:
            secrets[name] = data
        else:
            blobs.append(StageFile(rel=name, sha256=hashlib.sha256(data).hexdigest(),
                                   mode=f.mode, data=data))
    return blobs, secrets


_START_TIME_FN = (
    'st_of() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; s=${s##*) }; '
    'set -- $s; echo "${20}"; }'
)
# Link blob $1 to job-relative path $2, or report it missing.
_LINK_FN = ('l() { if [ -f "$B/$1" ]; then ln -f "$B/$1" "$J/$2" 2>/dev/null '
            '|| cp -f "$B/$1" "$J/$2"; else echo "missing $1"; fi; }')
INLINE_MAX = 64 * 1024  # files up to this size travel inside the command, base64
COMMAND_MAX = 96 * 1024  # a command is one argv string on the node: Linux caps those at 128 KiB


def _link_lines(files: Sequence[StageFile]) -> list[str]:
    dirs = sorted({str(PurePosixPath(f.rel).parent) for f in files} - {"."})
    lines = [f'mkdir -p "$J"/{shlex.quote(d)}' for d in dirs]
    lines += [f"l {f.sha256} {shlex.quote(f.rel)}" for f in files]
    return lines


def _inline_lines(files: Sequence[StageFile]) -> list[str]:
    """Write small in-memory blobs (the rendered files) straight from the command."""
    lines, seen = [], set()
    for f in files:
        if f.data is None or len(f.data) > INLINE_MAX or f.sha256 in seen:
            continue
        seen.add(f.sha256)
        b64 = base64.b64encode(f.data).decode()
        tmp = f'"$B/.{f.sha256}.tmp"'
        lines.append(f'[ -f "$B/{f.sha256}" ] || {{ printf %s {b64} | base64 -d >{tmp} && '
                     f'chmod {f.mode:o} {tmp} && mv -f {tmp} "$B/{f.sha256}"; }}')
    return lines


def _chunked(header: list[str], body: list[str]) -> list[str]:
    """Split `body` over as few commands as fit COMMAND_MAX, each starting with `header`."""
    commands, current, size = [], list(header), sum(len(h) + 1 for h in header)
    for line in body:
        if size + len(line) + 1 > COMMAND_MAX and len(current) > len(header):
            commands.append("\n".join(current))
            current, size = list(header), sum(len(h) + 1 for h in header)
        current.append(line)
        size += len(line) + 1
    commands.append("\n".join(current))
    return commands


def stage_commands(workdir: str, job_id: str, files: Sequence[StageFile]) -> list[str]:
    """Commands that prepare the folders, refuse a busy node, write small blobs inline and
    link every file whose blob is present; they print `workdir`, `jobdir`, `busy`, `missing`."""
    wd = shell_path(workdir)
    jid = shlex.quote(job_id)
    first = [
        "set -eu",
        _START_TIME_FN,
        f"mkdir -p {wd}/jobs/{jid} {wd}/blobs",
        f"cd {wd}",
        'B="$(pwd -P)/blobs"; J="$(cd jobs/' + jid + ' && pwd -P)"',
        'echo "workdir $(pwd -P)"; echo "jobdir $J"',
        "if [ -f jobs/ACTIVE ]; then",
        "  o=; p=; s=; read -r o p s < jobs/ACTIVE || true",
        f'  if [ "$o" != {jid} ] && [ -n "$p" ] && [ -n "$s" ] && [ "$(st_of "$p")" = "$s" ]; then '
        'echo "busy $o"; exit 0; fi',
        "fi",
        _LINK_FN,
    ]
    header = ["set -eu", f"cd {wd}", 'B="$(pwd -P)/blobs"; J="$(cd jobs/' + jid + ' && pwd -P)"',
              _LINK_FN]
    body = _inline_lines(files) + _link_lines(files)
    commands = _chunked(first, body)
    return commands[:1] + [c.replace("\n".join(first), "\n".join(header), 1)
                           for c in commands[1:]]


def install_commands(workdir_abs: str, job_dir_abs: str, files: Sequence[StageFile],
                     tar_name: str) -> list[str]:
    """Unpack the uploaded blobs, then link the files that were missing."""
    header = ["set -eu", f"B={shlex.quote(workdir_abs + '/blobs')}",
              f"J={shlex.quote(job_dir_abs)}", _LINK_FN]
    t = shlex.quote(f"{workdir_abs}/blobs/{tar_name}")
    unpack = [f'tar -xf {t} -C "$B"', f"rm -f {t}"]
    return _chunked(header, unpack + _link_lines(files))


def _write_tar(path: Path, files: Sequence[StageFile]) -> None:
    with tarfile.open(path, "w") as tar:
        seen = set()
        for f in files:
            if f.sha256 in seen:
                continue
            seen.add(f.sha256)
            if f.source is not None:
                info = tar.gettarinfo(str(f.source), arcname=f.sha256)
                info.mode = f.mode
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with open(f.source, "rb") as fh:
                    tar.addfile(info, fh)
            else:
                import io

                data = f.data or b""
                info = tarfile.TarInfo(f.sha256)
                info.size = len(data)
                info.mode = f.mode
                tar.addfile(info, io.BytesIO(data))


@dataclass(frozen=True)
class Staged:
    """What staging one node produced."""

    workdir: str  # absolute workdir on the node
    job_dir: str  # absolute job folder on the node
    sent: int  # blobs uploaded
    skipped: int  # files already present by sha256


def stage_node(t: Transport, job_id: str, workdir: str, files: Sequence[StageFile],
               secret_files: Mapping[str, bytes], tmp_dir: Path) -> Staged:
    """Stage `files` (+ secrets, mode 0600) into `<workdir>/jobs/<job_id>/` on one node.

    One round trip when the node already has every large blob (small rendered files travel
    inline); otherwise one tar of the missing blobs and one more command.

    Raises:
        NodeBusyError: another live job holds the node.
        RemoteError: a command or transfer failed.
    """
    name = t.node.name
    info: dict[str, str] = {}
    missing: set[str] = set()
    for command in stage_commands(workdir, job_id, files):
        res = t.run(command, check=True, timeout=300)
        for line in res.stdout.splitlines():
            key, _, value = line.partition(" ")
            if key == "missing":
                missing.add(value.strip())
            elif key in ("workdir", "jobdir", "busy"):
                info[key] = value.strip()
        if "busy" in info:
            raise NodeBusyError(name, info["busy"])
    if "workdir" not in info or "jobdir" not in info:
        raise RemoteError(name, f"could not create the job folder under {workdir}")
    todo = [f for f in files if f.sha256 in missing]
    if todo:
        tar_name = f".incoming-{job_id}.tar"
        local_tar = tmp_dir / f"{name}.tar"
        _write_tar(local_tar, todo)
        t.put(local_tar, PurePosixPath(info["workdir"]) / "blobs" / tar_name)
        local_tar.unlink(missing_ok=True)
        for command in install_commands(info["workdir"], info["jobdir"], todo, tar_name):
            res = t.run(command, check=True, timeout=300)
            if "missing " in res.stdout:
                raise RemoteError(name, f"blobs still missing after upload: {res.stdout[:200]}")
    for fname, data in secret_files.items():
        with tempfile.NamedTemporaryFile(dir=tmp_dir, delete=False) as fh:
            fh.write(data)
        os.chmod(fh.name, 0o600)
        try:
            t.put(Path(fh.name), PurePosixPath(info["jobdir"]) / fname, mode=0o600)
        finally:
            Path(fh.name).unlink(missing_ok=True)
    return Staged(workdir=info["workdir"], job_dir=info["jobdir"],
                  sent=len({f.sha256 for f in todo}), skipped=len(files) - len(todo))
