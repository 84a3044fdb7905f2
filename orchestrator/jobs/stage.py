"""Stage a job's files onto a node: content-addressed, so unchanged files are never re-sent.

    manifest = code_manifest() + data_manifest(path) + rendered files
    stage_node(transport, job_id, workdir, manifest, secret_files)  -> absolute job dir

Files travel as blobs named by sha256 into `<workdir>/blobs/` (one tar per node, only the
blobs the node lacks), then are hard-linked into `<workdir>/jobs/<job_id>/`. Secrets (env.sh)
never become blobs: they are uploaded straight to the job folder with mode 0600.
Three round trips per node: prepare (which blobs are missing), put (one tar), install.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import tarfile
import tempfile
from collections.abc import Iterable, Mapping, Sequence
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


def prepare_command(workdir: str, job_id: str, shas: Iterable[str]) -> str:
    """Create folders, report the absolute paths, a live job holding the node, missing blobs."""
    wd = shell_path(workdir)
    jid = shlex.quote(job_id)
    unique = " ".join(sorted(set(shas)))
    return "\n".join([
        "set -eu",
        _START_TIME_FN,
        f"mkdir -p {wd}/jobs/{jid} {wd}/blobs",
        f"cd {wd}",
        'echo "workdir $(pwd -P)"',
        f'echo "jobdir $(cd jobs/{jid} && pwd -P)"',
        "if [ -f jobs/ACTIVE ]; then",
        "  o=; p=; s=; read -r o p s < jobs/ACTIVE || true",
        f'  if [ "$o" != {jid} ] && [ -n "$p" ] && [ -n "$s" ] && [ "$(st_of "$p")" = "$s" ]; then '
        'echo "busy $o"; fi',
        "fi",
        (f"for s in {unique}; do [ -f \"blobs/$s\" ] || echo \"missing $s\"; done"
         if unique else ":"),
    ])


def install_command(workdir_abs: str, job_dir_abs: str, files: Sequence[StageFile],
                    tar_name: str | None) -> str:
    """Unpack the uploaded blobs (if any), hard-link every file into the job folder."""
    blobs = shlex.quote(f"{workdir_abs}/blobs")
    lines = ["set -eu", f"cd {blobs}"]
    if tar_name:
        t = shlex.quote(tar_name)
        lines += [f"tar -xf {t}", f"rm -f {t}"]
    lines.append(f"cd {shlex.quote(job_dir_abs)}")
    dirs = sorted({str(PurePosixPath(f.rel).parent) for f in files} - {"."})
    if dirs:
        lines.append("mkdir -p " + " ".join(shlex.quote(d) for d in dirs))
    for f in files:
        src = shlex.quote(f"{workdir_abs}/blobs/{f.sha256}")
        dst = shlex.quote(f.rel)
        lines.append(f"ln -f {src} {dst} 2>/dev/null || cp -f {src} {dst}")
    return "\n".join(lines)


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

    Raises:
        NodeBusyError: another live job holds the node.
        RemoteError: a command or transfer failed.
    """
    name = t.node.name
    res = t.run(prepare_command(workdir, job_id, (f.sha256 for f in files)), check=True)
    info: dict[str, str] = {}
    missing: set[str] = set()
    for line in res.stdout.splitlines():
        key, _, value = line.partition(" ")
        if key == "missing":
            missing.add(value.strip())
        elif key in ("workdir", "jobdir", "busy"):
            info[key] = value.strip()
    if "busy" in info:
        raise NodeBusyError(name, info["busy"])
    if "workdir" not in info or "jobdir" not in info:
        raise RemoteError(name, f"could not create the job folder under {workdir}: {res.stderr}")
    tar_name = None
    todo = [f for f in files if f.sha256 in missing]
    if todo:
        tar_name = f".incoming-{job_id}.tar"
        local_tar = tmp_dir / f"{name}.tar"
        _write_tar(local_tar, todo)
        t.put(local_tar, PurePosixPath(info["workdir"]) / "blobs" / tar_name)
        local_tar.unlink(missing_ok=True)
    t.run(install_command(info["workdir"], info["jobdir"], files, tar_name), check=True)
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
