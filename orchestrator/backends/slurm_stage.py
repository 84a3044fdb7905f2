"""Staging through the Slurm allocation, for nodes this machine does not reach over SSH.

    # inventory: backend: slurm, stage: allocation, spool: /shared/orchestrate-spool
    orchestrate up -i cluster.yaml -c tiny --wait

`stage` writes one bundle per job into the spool (a folder this machine and the nodes share):
`<spool>/<job id>/bundle.tar` (mode 0600 in a 0700 folder: it holds env.sh) with the code,
the data and every node's rendered files (`nodes/<name>/launch.sh`, `job.yaml`, `env.sh`),
and a MANIFEST of `sha256  path` lines. The batch script (templates/slurm_stage.sh.j2) runs
one `srun --ntasks-per-node=1` step before the ranks' step: each node copies the bundle into
a private folder under its job folder, checks the copy's sha256 (baked into the script), unpacks
it, checks every file against the MANIFEST and that nothing else is in it, and only then moves
code/, data/ and its own rendered files into place. A mismatch is one `orchestrate:` line in
the job's output (`<spool>/<job id>/slurm-<id>.out`) and the job fails before any rank starts.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from orchestrate_bloom.fileio import sha256_file

from orchestrator.errors import JobError
from orchestrator.job.render import RenderedFile
from orchestrator.job.stage import Tree
from orchestrator.job.state import JobRecord

BUNDLE = "bundle.tar"
MANIFEST = "MANIFEST"


@dataclass(frozen=True)
class Bundle:
    """A job's bundle in the spool and what the nodes check it against."""

    path: Path  # <spool>/<job id>/bundle.tar
    sha256: str
    out_dir: Path  # <spool>/<job id>: the batch job's working folder and output


def spool_dir(spool: Path, job_id: str) -> Path:
    """The job's folder in the spool (its bundle and the batch output)."""
    return spool / job_id


def build_bundle(record: JobRecord, spool: Path, trees: list[Tree],
                 rendered: dict[str, dict[str, RenderedFile]]) -> Bundle:
    """Write the job's bundle into the spool; `rendered`: node -> file name -> file.

    Raises:
        JobError: the spool cannot be written, or a path the MANIFEST cannot name.
    """
    folder = spool_dir(spool, record.job_id)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
    except OSError as e:
        raise JobError(f"slurm: cannot use the spool {spool}: {e.strerror or e}") from None
    entries: list[tuple[str, int, Path | bytes]] = [
        (f"{t.dest}/{f.rel}", f.mode, f.source) for t in trees for f in t.files]
    entries += [(f"nodes/{node}/{name}", f.mode, f.text.encode())
                for node, files in rendered.items() for name, f in files.items()]
    lines = []
    for name, _mode, content in entries:
        if any(c in name for c in "\n\\") or "/../" in f"/{name}/":
            raise JobError(f"slurm: cannot bundle {name!r} (a newline, backslash or '..' in "
                           "a path)")
        digest = (sha256_file(content) if isinstance(content, Path)
                  else hashlib.sha256(content).hexdigest())
        lines.append(f"{digest}  {name}\n")
    path = folder / BUNDLE
    tmp = folder / f".{BUNDLE}.partial"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh, tarfile.open(fileobj=fh, mode="w") as tar:
        _add(tar, MANIFEST, 0o644, "".join(lines).encode())
        for name, mode, content in entries:
            _add(tar, name, mode, content)
    os.replace(tmp, path)
    return Bundle(path=path, sha256=sha256_file(path), out_dir=folder)


def _add(tar: tarfile.TarFile, name: str, mode: int, content: Path | bytes) -> None:
    """One regular file, owned by nobody in particular (the node's user unpacks it)."""
    info = tarfile.TarInfo(name)
    info.mode = mode
    if isinstance(content, Path):
        info.size = content.stat().st_size
        with open(content, "rb") as fh:
            tar.addfile(info, fh)
        return
    info.size = len(content)
    tar.addfile(info, io.BytesIO(content))


def bundle_trees(record: JobRecord) -> list[Tree]:
    """The code, and the job's local dataset (as for SSH staging: data/<name>)."""
    from orchestrator.job import stage as stage_mod

    trees = [stage_mod.code_tree()]
    if record.local_data:
        trees.append(stage_mod.data_tree(Path(record.local_data)))
    return trees

