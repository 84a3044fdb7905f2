"""Per-rank checkpoints: atomic save, a JSON manifest per step, keep-last-K, resume selection.

    output/checkpoint/rank_<r>/bloom_rank_<r>-<step>.ckpt   (written to a temp name, then renamed)
    output/checkpoint/rank_<r>/bloom_rank_<r>-<step>.json   (manifest, written after the ckpt)

A step is *complete* on a rank when its manifest exists, parses, matches the parallel layout and
the checkpoint file has the recorded size and sha256. `--resume` takes the newest step complete
on every rank, so a crash mid-save (no manifest, or a truncated file) is skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

NAME = re.compile(r"^bloom_rank_(\d+)-(\d+)\.json$")


def rank_dir(output_dir: Path, rank: int) -> Path:
    return output_dir / "checkpoint" / f"rank_{rank}"


def ckpt_path(output_dir: Path, rank: int, step: int) -> Path:
    return rank_dir(output_dir, rank) / f"bloom_rank_{rank}-{step}.ckpt"


def manifest_path(output_dir: Path, rank: int, step: int) -> Path:
    return rank_dir(output_dir, rank) / f"bloom_rank_{rank}-{step}.json"


def strategy_path(output_dir: Path, rank: int) -> Path:
    return output_dir / "strategy" / f"ckpt_strategy_rank_{rank}.ckpt"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: Path, doc: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def save(write: Callable[[Path], None], output_dir: Path, rank: int, step: int,
         meta: Mapping[str, Any]) -> Path:
    """Save one step: `write(tmp_path)` writes the checkpoint, then rename, then the manifest.

    Args:
        write: writes a checkpoint to the given path (e.g. wraps mindspore.save_checkpoint).
        meta: extra manifest fields (parallel layout, model config, data position, ...).
    """
    final = ckpt_path(output_dir, rank, step)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".tmp-{os.getpid()}-{final.name}")  # still ends in .ckpt
    try:
        write(tmp)
        os.replace(tmp, final)
    finally:
        # MindSpore writes `<name>.tmp` first (suffix replaced): a failed save (disk full)
        # leaves that partial file behind unless removed here too.
        for leftover in (tmp, tmp.with_suffix(".tmp")):
            if leftover.exists():
                leftover.unlink()
    manifest = {**meta, "step": step, "rank": rank, "file": final.name,
                "size": final.stat().st_size, "sha256": sha256_of(final)}
    write_json_atomic(manifest_path(output_dir, rank, step), manifest)
    return final


def read_manifest(output_dir: Path, rank: int, step: int) -> dict[str, Any] | None:
    try:
        doc = json.loads(manifest_path(output_dir, rank, step).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def is_complete(output_dir: Path, rank: int, step: int, layout: Mapping[str, Any]) -> bool:
    """Manifest present and valid, same parallel layout, file size and sha256 as recorded."""
    manifest = read_manifest(output_dir, rank, step)
    if manifest is None or manifest.get("step") != step or manifest.get("rank") != rank:
        return False
    if manifest.get("layout") != dict(layout):
        return False
    path = ckpt_path(output_dir, rank, step)
    try:
        if path.stat().st_size != manifest.get("size"):
            return False
    except OSError:
        return False
    return sha256_of(path) == manifest.get("sha256")


def listed_steps(output_dir: Path, rank: int) -> list[int]:
    """Steps that have a manifest in this rank's folder (complete or not), ascending."""
    folder = rank_dir(output_dir, rank)
    if not folder.is_dir():
        return []
    steps = []
    for p in folder.iterdir():
        m = NAME.match(p.name)
        if m and int(m.group(1)) == rank:
            steps.append(int(m.group(2)))
    return sorted(steps)


def complete_steps(output_dir: Path, rank: int, layout: Mapping[str, Any]) -> list[int]:
    """Steps complete on `rank` (see is_complete), ascending."""
    return [s for s in listed_steps(output_dir, rank) if is_complete(output_dir, rank, s, layout)]


def newest_common(per_rank: Iterable[Iterable[int]]) -> int | None:
    """The newest step present in every rank's list (None if there is none)."""
    common: set[int] | None = None
    for steps in per_rank:
        common = set(steps) if common is None else common & set(steps)
    return max(common) if common else None


def prune(output_dir: Path, rank: int, keep: int) -> list[int]:
    """Delete all but the newest `keep` steps of this rank (checkpoint and manifest); removed."""
    steps = listed_steps(output_dir, rank)
    doomed = steps[:-keep] if keep > 0 else []
    for step in doomed:
        manifest_path(output_dir, rank, step).unlink(missing_ok=True)  # manifest first
        ckpt_path(output_dir, rank, step).unlink(missing_ok=True)
    return doomed
