"""Write a job's manifests as YAML for `kubectl apply -f DIR`, each validated first.

    paths = emit(manifests, Path("out"))   # out/<job>-1-files.yaml, out/<job>-2-ascendjob.yaml

Every manifest is validated (schema.validate) before any file is written, so a refused job
leaves nothing behind; each file is written atomically. Files sort in apply order: the
ConfigMaps a job's pods mount come before the job.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from orchestrate_bloom.fileio import write_atomic

from orchestrator.errors import JobError
from orchestrator.k8s.schema import validate

LAST_APPLIED_MAX = 256 * 1024  # client-side `kubectl apply` keeps the object in an annotation


class _Literal(str):
    """A multi-line string written as a YAML block (`|`): launch scripts stay readable."""


def _literal(dumper: yaml.SafeDumper, value: _Literal) -> Any:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Literal, _literal)


def _blocks(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _blocks(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_blocks(v) for v in value]
    if isinstance(value, str) and "\n" in value and not any(
            line != line.rstrip() for line in value.splitlines()):
        return _Literal(value)  # a trailing space would force quoting: keep those plain
    return value


def to_yaml(manifest: dict[str, Any]) -> str:
    """One manifest as a YAML document (block strings for multi-line values)."""
    return yaml.dump(_blocks(manifest), Dumper=_Dumper, sort_keys=False, width=100)


def file_name(index: int, manifest: dict[str, Any]) -> str:
    """`<job>-<n>-<kind>.yaml`: n gives the apply order within the job."""
    meta = manifest["metadata"]
    job = meta.get("labels", {}).get("orchestrate/job", meta["name"])
    return f"{job}-{index}-{manifest['kind'].lower()}.yaml"


def emit(manifests: Sequence[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Validate every manifest, then write each to `out_dir` (created); the written paths.

    Raises:
        ManifestError: a manifest is refused by its schema (nothing written).
        JobError: out_dir exists and is not a folder.
    """
    for m in manifests:
        validate(m)
    if out_dir.exists() and not out_dir.is_dir():
        raise JobError(f"--emit {out_dir}: exists and is not a folder")
    texts = [(out_dir / file_name(i, m), to_yaml(m)) for i, m in enumerate(manifests, 1)]
    out_dir.mkdir(parents=True, exist_ok=True)
    for path, text in texts:
        write_atomic(path, text, 0o644, fsync=False)
    return [p for p, _ in texts]


def too_big_for_client_apply(manifests: Sequence[dict[str, Any]]) -> list[str]:
    """Names of objects client-side `kubectl apply` refuses (its last-applied annotation holds
    at most 256 KiB); `kubectl apply --server-side` or `kubectl create` take them."""
    return [f"{m['kind']} {m['metadata']['name']}" for m in manifests
            if len(json.dumps(m, separators=(",", ":"))) > LAST_APPLIED_MAX]
